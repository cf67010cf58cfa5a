"""Every page of the app under Streamlit's AppTest, with the real engine on a 3-class dataset of 60 images."""

from __future__ import annotations

import json
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from conftest import HARDCASES
from streamlit.testing.v1 import AppTest

from tlapp.events import EpochEnd, Message, Progress, Stopped, to_dict
from tlapp.jobs import get_manager
from tlapp.workspace import is_valid_workspace_id

APP = Path(__file__).resolve().parents[1] / "app.py"
C01_ZIP = HARDCASES / "C01_control_3class" / "control_3class.zip"
H24_ZIP = HARDCASES / "H24_only_one_class" / "dataset_single_class.zip"
H09_POISON = HARDCASES / "H09_one_poison_file_reporting" / "files" / "square_10_download.jpg"
MIXED_UPLOAD = [
    HARDCASES / "H16_other_formats" / "files" / "circle_bitmap.bmp",
    HARDCASES / "H08_truncated_corrupt" / "files" / "zero_bytes.jpg",
    H09_POISON,
    HARDCASES / "H17_heic" / "files" / "circle_IMG_4001.heic",
    HARDCASES / "H01_grayscale" / "files" / "circle_gray_L.png",
]
TIMEOUT = 60
TRAINING_TIMEOUT = 300


@pytest.fixture
def library(tmp_path_factory) -> Path:
    """A dataset library with the 3-class control set unzipped as 'shapes'."""
    assert C01_ZIP.is_file(), f"missing test data {C01_ZIP}: place the shared/ folder beside the repository"
    root = tmp_path_factory.mktemp("library")
    with zipfile.ZipFile(C01_ZIP) as archive:
        archive.extractall(root / "shapes")
    return root


@pytest.fixture
def app(tmp_path, monkeypatch, library):
    """Return a function that opens a page of a fresh app in workspace 'apptest' and runs it."""
    monkeypatch.setenv("TLAPP_WORKSPACE", str(tmp_path / "workspaces"))
    monkeypatch.setenv("TLAPP_DATASETS", str(library))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["ws"] = "apptest"
    at.run()

    def open_page(page: str) -> AppTest:
        at.switch_page(page).run()
        assert not at.exception, [item.value for item in at.exception]
        return at

    return open_page


@pytest.fixture
def hold_job():
    """Return a function that submits a job which yields ``events`` and then waits until the test ends."""
    release = threading.Event()
    held = []

    def submit(run_dir: Path, owner: str, events: list):
        def work(stop):
            yield from events
            while not (release.is_set() or stop.is_set()):
                release.wait(0.05)

        job = get_manager().submit("train", run_dir, work, owner=owner)
        held.append(job)
        return job

    yield submit
    # Stop the page's runs first: they would start training once the held job ends.
    for job in get_manager().jobs(owner="apptest"):
        job.stop()
    release.set()
    for job in get_manager().jobs():
        assert get_manager().wait(job, TIMEOUT)


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def missing_shown_as(dataframe) -> str | None:
    """Return the text st.dataframe shows for missing values, or None for Streamlit's default ("None")."""
    return dataframe.proto.placeholder if dataframe.proto.HasField("placeholder") else None


def open_builder(open_page, dataset: str) -> AppTest:
    """Open the class builder tab with a new dataset named ``dataset``."""
    at = open_page("pages/data.py")
    at.session_state["data_tab"] = "Build class by class"
    at.run()
    at.text_input(key="builder_new_name").set_value(dataset)
    return at


def add_class(at: AppTest, name: str) -> AppTest:
    at.text_input(key="builder_class_name").set_value(name)
    at.button(key="builder_add_class").click().run()
    assert not at.exception
    return at


def pick_library_dataset(open_page) -> AppTest:
    at = open_page("pages/data.py")
    at.session_state["data_tab"] = "Instructor's library"
    at.run()
    at.selectbox(key="library_pick").set_value("shapes")
    at.button(key="library_use").click().run()
    assert not at.exception
    return at


def train_two_epochs(open_page) -> AppTest:
    pick_library_dataset(open_page)
    at = open_page("pages/train.py")
    at.slider(key="train_epochs").set_value(2)
    # The job manager is process-wide, so jobs of earlier tests are still listed.
    earlier = set(get_manager().jobs(owner="apptest"))
    at.button(key="train_start").click().run()
    assert not at.exception
    jobs = [job for job in get_manager().jobs(owner="apptest") if job not in earlier]
    assert len(jobs) == 1
    assert get_manager().wait(jobs[0], TRAINING_TIMEOUT), "training did not finish in time"
    assert jobs[0].status == "done", jobs[0].events[-1]
    return at


def test_home_links_every_step(app):
    at = app("pages/home.py")
    assert texts(at.page_link) == ["Add or choose photos", "Train a model", "Evaluate a run", "Predict new photos"]
    assert at.query_params["ws"] == "apptest"


def test_new_visitor_gets_workspace_id(tmp_path, monkeypatch):
    monkeypatch.setenv("TLAPP_WORKSPACE", str(tmp_path))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    workspace_id = at.query_params["ws"]
    assert is_valid_workspace_id(workspace_id)
    assert (tmp_path / workspace_id / "datasets").is_dir()


@pytest.mark.parametrize(
    ("page", "link"),
    [("pages/train.py", "Go to 1. Data"), ("pages/evaluate.py", "Go to 2. Train"), ("pages/predict.py", "Go to 2. Train")],
)
def test_missing_prerequisite_explained(app, page, link):
    at = app(page)
    assert len(at.info) == 1
    assert texts(at.page_link) == [link]
    assert not at.error


def test_data_page_without_dataset(app):
    at = app("pages/data.py")
    assert "No dataset chosen yet" in at.info[-1].value


def test_library_pick_shows_report(app):
    at = pick_library_dataset(app)
    assert "Using the library dataset 'shapes'." in texts(at.success)
    assert texts(at.metric) == ["60", "3", "48 / 12", "0"]
    counts = [spec for spec in plotly_specs(at) if spec["layout"]["title"]["text"] == "Images per class"]
    assert counts[0]["data"][0]["x"] == ["circle", "square", "triangle"]
    assert counts[0]["data"][0]["y"] == [20, 20, 20]
    assert len(at.get("image")) == 3 * 6
    assert not at.error
    assert not at.warning


def test_zip_upload_becomes_chosen_dataset(app, tmp_path):
    at = app("pages/data.py")
    at.file_uploader[0].set_value(("control_3class.zip", C01_ZIP.read_bytes(), "application/zip")).run()
    assert not at.exception

    assert "Unpacked control_3class.zip into the dataset 'control_3class'." in texts(at.success)
    assert texts(at.metric)[:2] == ["60", "3"]
    assert at.selectbox(key="dataset_chooser").value == "control_3class"
    assert (tmp_path / "workspaces" / "apptest" / "datasets" / "control_3class" / "circle").is_dir()


def test_chosen_dataset_can_be_deleted(app, tmp_path):
    at = app("pages/data.py")
    at.file_uploader[0].set_value(("control_3class.zip", C01_ZIP.read_bytes(), "application/zip")).run()

    at.button(key="dataset_chooser_delete").click().run()
    assert not at.exception
    assert "Deleted the dataset 'control_3class'." in texts(at.success)
    assert not (tmp_path / "workspaces" / "apptest" / "datasets" / "control_3class").exists()
    assert at.selectbox(key="dataset_chooser").value != "control_3class"


def test_one_class_zip_refused_naming_class(app, tmp_path):
    at = app("pages/data.py")
    at.file_uploader[0].set_value(("single.zip", H24_ZIP.read_bytes(), "application/zip")).run()
    assert not at.exception

    assert len(at.error) == 1
    assert "circle" in at.error[0].value
    kept = tmp_path / "workspaces" / "apptest" / "datasets" / "single" / "circle"
    assert len(list(kept.iterdir())) == 12


def test_class_builder_adds_photos(app):
    at = app("pages/data.py")
    at.session_state["data_tab"] = "Build class by class"
    at.run()
    at.text_input(key="builder_new_name").set_value("pets")
    for label in ("cats", "dogs"):
        at.text_input(key="builder_class_name").set_value(label)
        at.button(key="builder_add_class").click().run()
        assert not at.exception
    assert at.selectbox(key="builder_dataset").value == "pets"
    with zipfile.ZipFile(C01_ZIP) as archive:
        photos = {name: archive.read(name) for name in archive.namelist() if name.endswith(".jpg")}
    for label, prefix in (("cats", "circle/"), ("dogs", "square/")):
        files = [(Path(name).name, data, "image/jpeg") for name, data in photos.items() if name.startswith(prefix)][:5]
        uploader = next(u for u in at.file_uploader if u.label == f"Photos of {label}")
        uploader.set_value(files).run()
        assert not at.exception
    assert "Added 5 photos to 'dogs'." in texts(at.success)
    assert texts(at.metric)[:2] == ["10", "2"]


def test_class_builder_rejects_unusable_files(app):
    at = open_builder(app, "mixed")
    add_class(at, "x")
    uploader = next(u for u in at.file_uploader if u.label == "Photos of x")
    uploader.set_value([(path.name, path.read_bytes(), "application/octet-stream") for path in MIXED_UPLOAD]).run()
    assert not at.exception

    expected = (
        "Added 3 photos to 'x'; 2 files were not added: zero_bytes.jpg (empty file (0 bytes)), "
        "square_10_download.jpg (not an image: looks like an HTML page)."
    )
    assert texts(at.warning) == [expected]
    assert not at.success
    assert [expander.label for expander in at.expander] == ["x: 3 photos (open to add more)"]


def test_class_builder_lists_many_rejections(app):
    at = open_builder(app, "junk")
    add_class(at, "x")
    uploader = next(u for u in at.file_uploader if u.label == "Photos of x")
    uploader.set_value([(f"note_{index}.txt", b"not a photo", "text/plain") for index in range(7)]).run()
    assert not at.exception

    warning = texts(at.warning)[0]
    assert warning.startswith("Added 0 photos to 'x'; 7 files were not added: note_0.txt (")
    assert warning.endswith(" and 2 more, listed in the table below.")
    assert list(at.dataframe[0].value["File"]) == [f"note_{index}.txt" for index in range(7)]


def test_class_builder_uploader_takes_any_file(app):
    at = open_builder(app, "pets")
    add_class(at, "cats")
    uploader = next(u for u in at.file_uploader if u.label == "Photos of cats")
    assert list(uploader.proto.type) == []
    assert "JPEG, PNG, WebP, HEIC, TIFF, BMP, GIF and every other format Pillow reads." in texts(at.caption)


@pytest.mark.parametrize(
    ("typed", "level", "message"),
    [
        ("   ", "warning", "Type a name for the new class first, for example 'cats'."),
        ("../evil", "warning", "'../evil' was saved as '_evil' because class names cannot contain / \\ : * ? \" < > | or start or end with a dot."),
        ("a/b", "warning", "'a/b' was saved as 'a_b' because"),
        ("circle", "info", "Class 'circle' already exists in 'shapes', so no class was created."),
    ],
)
def test_class_builder_explains_names(app, tmp_path, typed, level, message):
    at = open_builder(app, "shapes")
    add_class(at, "circle")
    assert "Created class 'circle' in 'shapes'. Now add its photos." in texts(at.success)

    add_class(at, typed)
    matching = [text for text in texts(getattr(at, level)) if message in text]
    assert len(matching) == 1
    assert not at.success
    classes = sorted(path.name for path in (tmp_path / "workspaces" / "apptest" / "datasets" / "shapes").iterdir())
    expected = {"   ": ["circle"], "../evil": ["_evil", "circle"], "a/b": ["a_b", "circle"], "circle": ["circle"]}
    assert classes == expected[typed]


def test_run_of_dead_server_shown_interrupted(app, tmp_path):
    pick_library_dataset(app)
    run_dir = tmp_path / "workspaces" / "apptest" / "runs" / "2024-01-01_000000_efficientnet_lite0"
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text(json.dumps(to_dict(Message("50 images in 2 classes"))) + "\n", encoding="utf-8")

    at = app("pages/train.py")
    assert any("interrupted" in markdown.value for markdown in at.markdown)
    runs = at.dataframe[0].value
    assert list(runs["status"]) == ["interrupted"]


def test_train_page_follows_training_not_students(app, tmp_path):
    pick_library_dataset(app)
    runs = tmp_path / "workspaces" / "apptest" / "runs"
    trained = runs / "2024-01-01_000000_efficientnet_lite0"
    trained.mkdir(parents=True)
    (trained / "events.jsonl").write_text(json.dumps(to_dict(Message("50 images in 2 classes"))) + "\n", encoding="utf-8")
    student = runs / "2024-01-02_000000_distill_lite0_block6a_160"
    student.mkdir()
    (student / "run.json").write_text(json.dumps({"task": "classification", "model_type": "student", "classes": ["a", "b"]}))

    at = app("pages/train.py")
    headlines = [markdown.value for markdown in at.markdown if markdown.value.startswith("**Run ")]
    assert len(headlines) == 1
    assert headlines[0].startswith(f"**Run {trained.name}**: interrupted")


def test_interrupted_run_keeps_its_settings(app, tmp_path):
    # A run cut off before its first epoch has no run.json; its config.json names its settings.
    from tlapp.runs import write_config
    from tlapp.training import TrainConfig

    pick_library_dataset(app)
    run_dir = tmp_path / "workspaces" / "apptest" / "runs" / "2024-01-01_000000_efficientnet_lite1"
    write_config(run_dir, TrainConfig(backbone="efficientnet_lite1", freeze=4, epochs=7, augment=True).to_dict())

    at = app("pages/train.py")
    row = at.dataframe[0].value.iloc[0]
    assert row["status"] == "interrupted"
    assert row["backbone"] == "efficientnet_lite1"
    assert row["frozen stages"] == 4
    assert row["epochs"] == 7
    assert row["augmentation"] == "yes"


def test_run_stopped_in_queue_explained(app, tmp_path, hold_job):
    from tlapp import backbones

    hold_job(tmp_path / "other_participant_run", "someone-else", [])
    pick_library_dataset(app)
    at = app("pages/train.py")
    at.slider(key="train_epochs").set_value(3)
    at.button(key="train_start").click().run()
    assert not at.exception
    assert any("number 1 in the queue" in text for text in texts(at.info))
    stages = backbones.get_spec(backbones.DEFAULT_BACKBONE).num_stages
    queued = at.dataframe[0].value.iloc[0]
    assert queued["status"] == "queued"
    assert queued["backbone"] == backbones.DEFAULT_BACKBONE
    assert queued["frozen stages"] == stages
    assert queued["epochs"] == 3
    assert pd.isna(queued["validation accuracy"])
    assert pd.isna(queued["training time"])
    assert missing_shown_as(at.dataframe[0]) == "–"

    at.button(key="train_stop").click().run()
    at.run()
    assert not at.exception
    assert "Stopped before the first epoch finished; no model was kept." in texts(at.info)
    stopped = at.dataframe[0].value.iloc[0]
    assert stopped["status"] == "stopped"
    assert stopped["backbone"] == backbones.DEFAULT_BACKBONE
    assert pd.isna(stopped["validation accuracy"])


def test_progress_shows_engine_time_left(app, tmp_path, hold_job):
    pick_library_dataset(app)
    run_dir = tmp_path / "workspaces" / "apptest" / "runs" / "2024-01-01_000000_started_elsewhere"
    run_dir.mkdir(parents=True)
    events = [
        Progress("train", 2, 10, 30.0, eta=500.0, epoch=1, message="epoch 1 of 3"),
        EpochEnd(1, 3, 0.9, 0.6, 0.8, 0.5, 0.003, 40.0, eta=65.0, best=True),
    ]
    job = hold_job(run_dir, "apptest", events)
    while len(job.events) < len(events):
        threading.Event().wait(0.05)

    at = app("pages/train.py")
    progress = at.get("progress")
    assert len(progress) == 1
    assert "about 1 min 05 s left" in progress[0].proto.text
    row = at.dataframe[0].value.iloc[0]
    assert row["status"] == "running"
    for column in ("backbone", "frozen stages", "epochs", "augmentation", "validation accuracy", "training time"):
        assert pd.isna(row[column]), column
    assert missing_shown_as(at.dataframe[0]) == "–"


def test_train_evaluate_predict(app):
    at = train_two_epochs(app)
    at.run()
    assert not at.exception
    assert "Validation accuracy" in [metric.label for metric in at.metric]
    curves = [spec for spec in plotly_specs(at) if len(spec["data"]) == 4]
    assert curves, "no training curves"
    assert curves[0]["data"][0]["x"] == [1, 2]

    at = app("pages/evaluate.py")
    labels = [metric.label for metric in at.metric]
    assert labels[:2] == ["Accuracy", "Balanced accuracy"]
    heatmaps = [spec for spec in plotly_specs(at) if spec["data"][0]["type"] == "heatmap"]
    assert len(heatmaps) == 1
    assert heatmaps[0]["data"][0]["x"] == ["circle", "square", "triangle"]
    counts = [[int(count) for count in row] for row in heatmaps[0]["data"][0]["text"]]
    assert sum(map(sum, counts)) == 12
    per_class = at.dataframe[0].value
    assert list(per_class["class"]) == ["circle", "square", "triangle"]
    assert list(per_class["support"]) == [4, 4, 4]

    at = app("pages/predict.py")
    with zipfile.ZipFile(C01_ZIP) as archive:
        triangle = archive.read("triangle/triangle_00.jpg")
        circle = archive.read("circle/circle_00.jpg")
    at.file_uploader(key="predict_files").set_value(
        [
            ("triangle.jpg", triangle, "image/jpeg"),
            ("download.jpg", H09_POISON.read_bytes(), "image/jpeg"),
            ("circle.jpg", circle, "image/jpeg"),
        ]
    ).run()
    assert not at.exception
    assert len(at.error) == 1
    assert "download.jpg" in at.error[0].value
    assert "HTML" in at.error[0].value
    bars = [spec for spec in plotly_specs(at) if spec["data"][0].get("orientation") == "h"]
    assert len(bars) == 2
    assert sorted(bars[0]["data"][0]["y"]) == ["circle", "square", "triangle"]
    table = at.dataframe[0].value
    assert list(table["file"]) == ["triangle.jpg", "download.jpg", "circle.jpg"]
    assert list(table["error"]) == ["", "not an image: looks like an HTML page", ""]
    assert list(table.columns[-4:]) == ["p(circle)", "p(square)", "p(triangle)", "error"]
    assert pd.isna(table["probability"][1])
    assert table["probability"][0] > 0
    assert missing_shown_as(at.dataframe[0]) == ""
    assert len(at.get("download_button")) == 1

    at.file_uploader(key="predict_files").set_value(None)
    at.camera_input(key="predict_camera").set_value(("camera.jpg", circle, "image/jpeg")).run()
    assert not at.exception
    assert not at.error
    bars = [spec for spec in plotly_specs(at) if spec["data"][0].get("orientation") == "h"]
    assert len(bars) == 1
    assert list(at.dataframe[0].value["file"]) == ["camera.jpg"]
    assert len(at.get("download_button")) == 1
