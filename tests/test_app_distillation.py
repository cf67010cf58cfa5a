"""The Distillation page under Streamlit's AppTest, with the real engine and a teacher trained on 60 images."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from conftest import HARDCASES
from streamlit.testing.v1 import AppTest

from tlapp.distillation import DEFAULT_STUDENT, STUDENTS, DistillConfig, run_distillation
from tlapp.events import Stopped, to_dict
from tlapp.jobs import get_manager
from tlapp.runs import load_run
from tlapp.training import TrainConfig, train

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGE = "pages/distillation.py"
C01_ZIP = HARDCASES / "C01_control_3class" / "control_3class.zip"
H09_POISON = HARDCASES / "H09_one_poison_file_reporting" / "files" / "square_10_download.jpg"
TEACHER_NAME = "2024-01-01_000000_teacher"
TIMEOUT = 60
DISTILL_TIMEOUT = 300


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory) -> Path:
    """A teacher trained for one epoch on the 3-class control set, unzipped into a folder that outlives the tests."""
    assert C01_ZIP.is_file(), f"missing test data {C01_ZIP}: place the shared/ folder beside the repository"
    root = tmp_path_factory.mktemp("teacher")
    with zipfile.ZipFile(C01_ZIP) as archive:
        archive.extractall(root / "shapes")
    run_dir = root / TEACHER_NAME
    train(root / "shapes", TrainConfig(epochs=1), run_dir)
    return run_dir


@pytest.fixture
def open_page(tmp_path, monkeypatch):
    """Return a function that opens the Distillation page of a fresh app in workspace 'distilltest'."""
    monkeypatch.setenv("TLAPP_WORKSPACE", str(tmp_path / "workspaces"))
    monkeypatch.delenv("TLAPP_DATASETS", raising=False)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["ws"] = "distilltest"
    at.run()

    def open_() -> AppTest:
        at.switch_page(PAGE).run()
        assert not at.exception, [item.value for item in at.exception]
        return at

    return open_


@pytest.fixture
def with_teacher(open_page, teacher_run, tmp_path) -> AppTest:
    """The page opened in a workspace whose runs folder contains a copy of the teacher."""
    shutil.copytree(teacher_run, tmp_path / "workspaces" / "distilltest" / "runs" / TEACHER_NAME)
    return open_page()


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def titled(at: AppTest, title: str) -> list[dict]:
    return [spec for spec in plotly_specs(at) if spec["layout"].get("title", {}).get("text") == title]


def open_tab(at: AppTest, tab: str) -> AppTest:
    at.session_state["distill_tab"] = tab
    at.run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def test_missing_teacher_explained(open_page):
    at = open_page()
    assert texts(at.info) == ["No trained classification model yet: train a teacher first."]
    assert texts(at.page_link) == ["Go to 2. Train"]
    assert not at.error


def test_unavailable_student_cannot_start(with_teacher):
    at = with_teacher
    at.selectbox(key="distill_student").set_value("resnet18").run()
    reason = STUDENTS["resnet18"].unavailable_reason()
    start = at.button(key="distill_start")
    if reason is None:
        assert not at.warning
        assert not start.disabled
    else:
        assert reason in at.warning[0].value
        assert start.disabled


def test_stop_before_any_epoch_explained(with_teacher, tmp_path):
    run_dir = tmp_path / "workspaces" / "distilltest" / "runs" / "2024-01-02_000000_distill_lite0_block6a_160"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text(json.dumps(to_dict(Stopped(str(run_dir), None))) + "\n", encoding="utf-8")

    at = with_teacher
    at.session_state["distill_run"] = run_dir.name
    at.run()

    assert not at.exception, [item.value for item in at.exception]
    assert any(text.startswith("Stopped before the students finished an epoch") for text in texts(at.info))
    assert not at.success


def test_unmeasured_speed_explained(with_teacher, tmp_path):
    runs = tmp_path / "workspaces" / "distilltest" / "runs"
    config = DistillConfig(student="lite0_block4_128", views=1, epochs=1, latency_runs=0)
    run_distillation(runs / TEACHER_NAME, config, runs / "2024-01-02_000000_distill_lite0_block4_128")

    at = open_tab(with_teacher, "Compare")

    assert "The CPU time was not measured (0 timed passes)." in texts(at.caption)
    assert any(text.startswith("Accuracy against speed needs the CPU times") for text in texts(at.info))
    assert not titled(at, "Accuracy against speed")
    assert titled(at, "Model size")


def test_two_class_teacher_gets_a_note(open_page, tmp_path):
    shapes = tmp_path / "shapes"
    with zipfile.ZipFile(C01_ZIP) as archive:
        archive.extractall(shapes, members=[name for name in archive.namelist() if not name.startswith("triangle/")])
    train(shapes, TrainConfig(epochs=1), tmp_path / "workspaces" / "distilltest" / "runs" / TEACHER_NAME)

    at = open_page()
    notes = [text for text in texts(at.info) if text.startswith("With 2 classes")]
    assert len(notes) == 1
    assert "37 pet breeds" in notes[0]
    assert not at.button(key="distill_start").disabled


def test_distil_compare_and_explore(with_teacher, teacher_run):
    at = with_teacher
    assert at.selectbox(key="distill_teacher_pick").value == TEACHER_NAME
    assert "T²" in " ".join(texts(at.caption))
    assert not any(text.startswith("With 2 classes") for text in texts(at.info)), "a 3-class teacher gets no note"
    at.slider(key="distill_epochs").set_value(1)
    at.slider(key="distill_views").set_value(1)
    at.slider(key="distill_latency_runs").set_value(1)
    at.button(key="distill_start").click().run()
    assert not at.exception, [item.value for item in at.exception]
    jobs = get_manager().jobs(owner="distilltest")
    assert len(jobs) == 1
    assert jobs[0].kind == "distill"
    assert get_manager().wait(jobs[0], DISTILL_TIMEOUT), "distillation did not finish in time"
    assert jobs[0].status == "done", jobs[0].events[-1]

    at.run()
    assert not at.exception, [item.value for item in at.exception]
    assert "Both students are trained and measured." in texts(at.success)
    curves = [spec for spec in plotly_specs(at) if spec["layout"]["annotations"][0]["text"].startswith("Validation loss")]
    assert len(curves) == 1
    names = {trace["name"] for trace in curves[0]["data"]}
    assert names == {"distilled (validation)", "distilled (training)", "labels only (validation)", "labels only (training)"}

    at.button(key="distill_to_compare").click().run()
    assert not at.exception, [item.value for item in at.exception]
    assert at.session_state["distill_tab"] == "Compare"
    accuracy, cost = at.dataframe[0].value, at.dataframe[1].value
    assert list(accuracy["model"]) == ["teacher", "distilled student", "student on labels only"]
    assert [column for column in accuracy.columns if column.startswith("accuracy on")] == [
        "accuracy on circle", "accuracy on square", "accuracy on triangle",
    ]
    assert accuracy["agreement with the teacher"].isna().tolist() == [True, False, False]
    metrics = load_run(jobs[0].run_dir).metrics
    expected_losses = [metrics[role]["val_loss"] for role in ("teacher", "student", "student_without_teacher")]
    assert accuracy["validation loss"].tolist() == pytest.approx(expected_losses)
    num_val = metrics["num_val_images"]
    assert f"where one image is {100 / num_val:.2g} %" in " ".join(texts(at.caption))
    summary = f"its validation loss {metrics['student']['val_loss']:.3f}, against {metrics['student_without_teacher']['val_loss']:.3f}."
    assert any(summary in text for text in texts(at.markdown))
    assert list(cost["model"]) == ["teacher", "distilled student", "student on labels only"]
    teacher = load_run(teacher_run)
    assert cost["parameters"][0] == teacher.info["total_params"]
    assert cost["parameters"][1] < cost["parameters"][0]
    assert cost["size (MB)"][1] < cost["size (MB)"][0]
    assert cost["ms per image, batch of 1"].notna().all()
    assert cost["ms per image, batch of 32"].notna().all()
    scatter = titled(at, "Accuracy against speed")
    assert [trace["name"] for trace in scatter[0]["data"]] == ["teacher", "distilled student", "student on labels only"]
    assert all(len(trace["x"]) == 2 for trace in scatter[0]["data"]), "one point per batch size"
    sizes = titled(at, "Model size")
    assert len(sizes[0]["data"][0]["y"]) == 3

    at = open_tab(at, "Temperature explorer")
    bars = titled(at, "Teacher's probabilities at each temperature T")
    assert [trace["name"] for trace in bars[0]["data"]] == ["T = 1", "T = 2", "T = 5", "T = 10", "T = 20"]
    peaks = [max(trace["y"]) for trace in bars[0]["data"]]
    assert peaks == sorted(peaks, reverse=True), "a higher temperature must soften the teacher's probabilities"
    for trace in bars[0]["data"]:
        assert trace["x"] == ["circle", "square", "triangle"]
        assert sum(trace["y"]) == pytest.approx(1.0, abs=1e-4)

    at.radio(key="distill_image_source").set_value("An image of my own").run()
    at.file_uploader(key="distill_temperature_upload").set_value(("download.jpg", H09_POISON.read_bytes(), "image/jpeg")).run()
    assert not at.exception, [item.value for item in at.exception]
    assert "download.jpg" in at.error[0].value

    # Predict and Evaluate name the student as a student, not by the backbone it was cut from.
    for page in ("pages/predict.py", "pages/evaluate.py"):
        at.switch_page(page).run()
        assert not at.exception, [item.value for item in at.exception]
        labels = at.selectbox[0].options
        assert any(f"(distilled student {STUDENTS[DEFAULT_STUDENT].name}" in label for label in labels), labels
        assert any(f"({teacher.info['backbone']}, {teacher.info['frozen_stages']} stages frozen" in label for label in labels), labels
