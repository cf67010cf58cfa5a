"""Distillation end to end: a teacher trained here, students, run folders, CLI, stop, registry."""

from __future__ import annotations

import io
import json
import shutil
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import HARDCASES
from tlapp import backbones as bb
from tlapp import cli
from tlapp.datasets import load_collection
from tlapp.distillation import (
    DISTILLED,
    LABELS_ONLY,
    STUDENTS,
    DistillConfig,
    build_from_info,
    compare,
    describe,
    distill,
    get_student,
    load_teacher,
    measure_latency,
    run_distillation,
    state_dict_mb,
    teacher_collection,
    temperature_table,
)
from tlapp.distillation.views import iter_view_set
from tlapp.errors import TlappError
from tlapp.events import Done, EpochEnd, Message, Progress, Stopped, from_dict
from tlapp.runs import load_predictor, load_run
from tlapp.training import TrainConfig, train
from tlapp.weights import WeightsSource

C01 = HARDCASES / "C01_control_3class" / "control_3class.zip"
H29 = HARDCASES / "H29_last_batch_of_one" / "dataset_17_images.zip"
MODEL_KEYS = {"val_accuracy", "val_loss", "params", "size_mb", "latency_ms_batch1", "latency_ms_batch32", "per_class_accuracy"}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A Lite0 teacher trained for two epochs on the 3-class control set (circles, squares, triangles)."""
    run_dir = tmp_path_factory.mktemp("teacher") / "teacher"
    metrics = train(C01, TrainConfig(epochs=2, batch_size=16, learning_rate=0.01), run_dir)
    assert metrics["val_accuracy"] >= 0.9
    return run_dir


def small_config(**changes) -> DistillConfig:
    values = {"student": "lite0_block4_128", "views": 2, "epochs": 2, "batch_size": 16, "latency_runs": 0}
    return DistillConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def distilled(teacher, tmp_path_factory):
    """The events of one small distillation of the teacher, and its run folder."""
    run_dir = tmp_path_factory.mktemp("distilled") / "student"
    events = list(distill(teacher, small_config(learning_rate=0.01), run_dir))
    return events, run_dir


def test_distill_events(distilled):
    events, run_dir = distilled

    stages = {e.stage for e in events if isinstance(e, Progress)}
    assert {"decode", "teacher", "features", "train", "evaluate"} <= stages
    epochs = [(e.series, e.epoch) for e in events if isinstance(e, EpochEnd)]
    assert epochs == [(DISTILLED, 1), (LABELS_ONLY, 1), (DISTILLED, 2), (LABELS_ONLY, 2)]
    assert isinstance(events[-1], Done)
    logged = [from_dict(json.loads(line)) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert logged == events


def test_view_progress_only_grows(teacher):
    run, model = load_teacher(teacher)
    spec = get_student("lite0_block4_128")
    images = [Image.new("RGB", (40, 30), (20 * i, 0, 0)) for i in range(5)]
    steps = iter_view_set(
        model, bb.Preprocessing.from_dict(run.info["preprocessing"]), spec.build(3), spec.frozen,
        spec.preprocessing(), images, 3,
    )

    done_counts = []
    while True:
        try:
            stage, done, total = next(steps)
        except StopIteration as finished:
            views = finished.value
            break
        done_counts.append(done)
    assert done_counts == sorted(done_counts)
    assert done_counts[-1] == total == 2 * 5 * 3
    assert views.num_views == 3


def test_distill_metrics(distilled):
    events, run_dir = distilled
    metrics = json.loads((run_dir / "metrics.json").read_text())

    assert metrics == events[-1].metrics
    for role in ("teacher", "student", "student_without_teacher"):
        assert MODEL_KEYS <= set(metrics[role]), role
        assert set(metrics[role]["per_class_accuracy"]) == {"circle", "square", "triangle"}
        # This run skips the latency measurement to save time; the command-line test measures it.
        assert metrics[role]["latency_ms_batch1"] is None
    assert metrics["student"]["val_loss"] == metrics["val_loss"]
    assert metrics["student_without_teacher"]["val_loss"] == load_run(run_dir / "without_teacher").evaluation["loss"]
    assert metrics["student"]["params"] == get_student("lite0_block4_128").describe(3)["params"]
    assert metrics["student"]["params"] * 4 < metrics["teacher"]["params"]
    assert 0.0 <= metrics["agreement"] <= 1.0
    assert 0.0 <= metrics["agreement_without_teacher"] <= 1.0
    assert metrics["student"]["size_mb"] == pytest.approx((run_dir / "model.pt").stat().st_size / 1e6, rel=0.02)
    # The teacher's numbers are recomputed on the same validation images as its own evaluation.
    assert metrics["teacher"]["val_accuracy"] == pytest.approx(load_run(metrics["teacher"]["run"]).metrics["val_accuracy"])


def test_student_run_folder_loads_and_predicts(teacher, distilled):
    _, run_dir = distilled

    run = load_run(run_dir)
    assert run.info["task"] == "classification"
    assert run.info["model_type"] == "student"
    assert run.info["teacher"] == str(teacher.resolve())
    assert run.info["preprocessing"]["input_size"] == 128
    assert [e["series"] for e in run.history] == [DISTILLED, DISTILLED]
    for name in ("model.pt", "run.json", "metrics.json", "history.json", "evaluation.json", "report.json"):
        assert (run_dir / "without_teacher" / name).is_file(), name
    assert load_run(run_dir / "without_teacher").info["teacher"] is None

    # The student is evaluated on exactly the teacher's validation images.
    teacher_files = sorted(s["relpath"] for s in load_run(teacher).evaluation["samples"])
    assert sorted(s["relpath"] for s in run.evaluation["samples"]) == teacher_files

    predictor = load_predictor(run_dir)
    top = predictor.predict([run.evaluation["samples"][0]["file"]])[0]
    assert {label for label, _ in top} == {"circle", "square", "triangle"}
    assert sum(p for _, p in top) == pytest.approx(1.0, abs=1e-4)
    # The full forward pass matches the cached-activation pass used for evaluation.
    probabilities = predictor.predict_probs([s["file"] for s in run.evaluation["samples"]])
    stored = torch.tensor([s["probabilities"] for s in run.evaluation["samples"]])
    assert torch.allclose(torch.from_numpy(probabilities), stored, atol=0.02)


def test_compare_table(distilled):
    _, run_dir = distilled
    rows = compare(run_dir)

    assert [row["role"] for row in rows] == ["teacher", "student", "student_without_teacher"]
    assert rows[1]["agreement"] == load_run(run_dir).metrics["agreement"]
    assert "agreement" not in rows[0]


def test_cli_distill_scratch_student(teacher, tmp_path, capsys):
    out = tmp_path / "cli_run"
    status = cli.main(
        [
            "distill", str(teacher), "--student", "cnn_small", "--temperature", "3", "--alpha", "0.3",
            "--epochs", "1", "--views", "1", "--batch-size", "16", "--latency-runs", "1", "--out", str(out),
        ]
    )

    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for role in ("teacher", "student", "student_without_teacher"):
        assert MODEL_KEYS <= set(metrics[role]), role
        assert metrics[role]["latency_ms_batch1"] > 0, role
        assert metrics[role]["latency_ms_batch32"] > 0, role
    assert metrics["speedup_batch1"] > 0
    assert "agreement" in metrics
    assert "agreement_without_teacher" in metrics
    assert metrics["student"]["name"] == "cnn_small"
    config = load_run(out).info["config"]
    assert (config["temperature"], config["alpha"], config["views"]) == (3.0, 0.3, 1)
    assert json.loads(capsys.readouterr().out)["views"] == 1


def test_cli_rejects_unknown_student(teacher, tmp_path, capsys):
    status = cli.main(["distill", str(teacher), "--student", "nope", "--out", str(tmp_path / "x")])

    assert status == 2
    assert "unknown student 'nope'" in capsys.readouterr().err
    # Nothing is written, so the corrected command can use the same --out.
    assert not (tmp_path / "x").exists()


def test_last_batch_of_one(tmp_path):
    collection = load_collection(H29)
    n_train = len(collection.train)
    teacher_dir = tmp_path / "teacher"
    train(collection, TrainConfig(epochs=1, batch_size=n_train - 1), teacher_dir)

    # n_train - 1 leaves one image alone in the last batch of every student epoch.
    config = small_config(batch_size=n_train - 1, epochs=1)
    metrics = run_distillation(teacher_dir, config, tmp_path / "student")

    assert metrics["num_train_images"] == n_train
    assert metrics["epochs_run"] == 1
    assert metrics["stopped_early"] is False


def test_stop_after_first_epoch_keeps_students(teacher, tmp_path):
    stop = threading.Event()
    run_dir = tmp_path / "student"
    events = []
    for event in distill(teacher, small_config(epochs=5, views=1), run_dir, stop):
        events.append(event)
        if isinstance(event, EpochEnd) and event.series == LABELS_ONLY:
            stop.set()

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics["stopped_early"] is True
    assert events[-1].metrics["epochs_run"] == 1
    assert (run_dir / "model.pt").is_file()
    assert (run_dir / "without_teacher" / "model.pt").is_file()


def test_stop_before_training_writes_no_model(teacher, tmp_path):
    stop = threading.Event()
    stop.set()
    events = list(distill(teacher, small_config(), tmp_path / "student", stop))

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics is None
    assert not (tmp_path / "student" / "model.pt").exists()


def test_changed_split_rejected(teacher, tmp_path):
    copied = tmp_path / "teacher_copy"
    shutil.copytree(teacher, copied)
    info = json.loads((copied / "run.json").read_text())
    info["config"]["seed"] = 12345  # another seed draws another validation split
    (copied / "run.json").write_text(json.dumps(info))

    with pytest.raises(TlappError, match="validation images"):
        teacher_collection(load_run(copied))


def test_missing_dataset_asks_for_data(teacher, tmp_path):
    copied = tmp_path / "teacher_copy"
    shutil.copytree(teacher, copied)
    info = json.loads((copied / "run.json").read_text())
    info["dataset"] = str(tmp_path / "gone")
    (copied / "run.json").write_text(json.dumps(info))

    with pytest.raises(TlappError) as error:
        teacher_collection(load_run(copied))
    assert "--data" in error.value.hint
    assert len(teacher_collection(load_run(copied), C01).val) == len(load_run(teacher).evaluation["samples"])


def test_two_class_teacher_warning(make_image_folder, tmp_path, distilled):
    data = make_image_folder({"ant": 8, "bee": 8})
    teacher_dir = tmp_path / "two_class_teacher"
    train(data, TrainConfig(epochs=1, batch_size=8), teacher_dir)

    events = list(distill(teacher_dir, small_config(epochs=1, views=1), tmp_path / "student"))

    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any(text.startswith("With 2 classes the teacher's softened probabilities add little") for text in warnings)
    assert isinstance(events[-1], Done)
    # The 3-class teacher gets no such warning.
    three_class_events, _ = distilled
    assert not any(isinstance(e, Message) and e.text.startswith("With 2 classes") for e in three_class_events)


@pytest.mark.parametrize("packed", ["wrapper folder", "zip"])
def test_teacher_split_drawn_again(make_image_folder, tmp_path, packed):
    data = make_image_folder({"photos/ant": 6, "photos/bee": 6})
    if packed == "zip":
        data = Path(shutil.make_archive(str(tmp_path / "photos"), "zip", data))
    teacher_dir = tmp_path / "teacher"
    train(data, TrainConfig(epochs=1, batch_size=8), teacher_dir)

    teacher_run = load_run(teacher_dir)
    assert teacher_run.info["dataset"] == str(data.resolve())
    collection = teacher_collection(teacher_run)
    assert sorted(s.relpath for s in collection.val) == sorted(s["relpath"] for s in teacher_run.evaluation["samples"])


def test_segmentation_or_unfinished_run_rejected(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"task": "segmentation", "classes": []}))

    with pytest.raises(TlappError, match="cannot be a teacher"):
        list(distill(tmp_path, small_config(), tmp_path / "out"))


def test_temperature_table(teacher):
    image = load_run(teacher).evaluation["samples"][0]["file"]
    table = temperature_table(teacher, image)

    assert table["temperatures"] == [1, 2, 5, 10, 20]
    assert table["classes"] == ["circle", "square", "triangle"]
    for row in table["probabilities"]:
        assert sum(row) == pytest.approx(1.0, abs=1e-5)
    expected = load_predictor(teacher).predict_probs([image])[0]
    assert table["probabilities"][0] == pytest.approx(expected.tolist(), abs=1e-5)
    # A higher temperature flattens the distribution: the top probability falls towards 1/3.
    top = [max(row) for row in table["probabilities"]]
    assert top == sorted(top, reverse=True)
    assert top[-1] < top[0]
    assert top[-1] > 1 / 3


def test_student_registry_describes_students():
    rows = {row["name"]: row for row in describe()}

    assert set(rows) == set(STUDENTS)
    assert 100_000 <= rows["cnn_small"]["params"] <= 300_000
    assert rows["cnn_small"]["pretrained"] is False
    teacher_params = bb.REGISTRY["efficientnet_lite2"].num_params
    assert rows["lite0_block6a_160"]["params"] * 4 < teacher_params
    assert rows["lite0_block6a_160"]["input_size"] == 160
    assert rows["lite0_block6a_160"]["available"] is True


def test_student_rebuilt_from_run_info():
    spec = get_student("lite0_block4_128")
    model = spec.build(3)
    info = {"student": spec.name, "student_spec": spec.to_dict(), "classes": ["a", "b", "c"], "config": {}}
    rebuilt = build_from_info(json.loads(json.dumps(info)))

    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 128, 128)
    model.eval()
    rebuilt.eval()
    assert torch.allclose(model(images), rebuilt(images), atol=1e-5)


def test_uncached_torchvision_student_rejected(monkeypatch):
    monkeypatch.setattr(WeightsSource, "status", lambda self: "download" if self.kind == "torchvision" else "bundled")

    assert get_student("mobilenet_v3_small").describe()["available"] is False
    with pytest.raises(TlappError, match="not available") as error:
        get_student("mobilenet_v3_small").build(2)
    assert "lite0_block6a_160" in error.value.hint


def test_config_lists_every_problem():
    config = DistillConfig(student="nope", temperature=0, alpha=2, epochs=0, views=0)

    with pytest.raises(TlappError) as error:
        config.validate()
    for fragment in ("unknown student", "temperature", "alpha", "epochs", "views"):
        assert fragment in error.value.message
    assert DistillConfig.from_dict({**DistillConfig().to_dict(), "extra": 1}) == DistillConfig()


def test_size_and_latency_measures():
    model = get_student("cnn_small").build(2, pretrained=False)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)

    assert state_dict_mb(model) == pytest.approx(buffer.tell() / 1e6)
    latency = measure_latency({"cnn": (model, 128)}, batch_size=2, runs=2, warmup=1)
    assert latency["cnn"] > 0
