"""The Segmentation page under Streamlit's AppTest, with the real engine on 20 pairs of 128 px images."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import HARDCASES, SHARED
from PIL import Image
from streamlit.testing.v1 import AppTest

from tlapp.jobs import get_manager

APP = Path(__file__).resolve().parents[1] / "app.py"
PAGE = "pages/segmentation.py"
C02_ZIP = HARDCASES / "C02_control_seg" / "control_seg.zip"
H09_POISON = HARDCASES / "H09_one_poison_file_reporting" / "files" / "square_10_download.jpg"
LIBRARY = SHARED / "datasets"
TIMEOUT = 60
TRAINING_TIMEOUT = 300


@pytest.fixture
def page(tmp_path, monkeypatch):
    """Open the Segmentation page of a fresh app in workspace 'segtest'; the library is the shared datasets."""
    assert C02_ZIP.is_file(), f"missing test data {C02_ZIP}: place the shared/ folder beside the repository"
    monkeypatch.setenv("TLAPP_WORKSPACE", str(tmp_path / "workspaces"))
    monkeypatch.setenv("TLAPP_DATASETS", str(LIBRARY))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params["ws"] = "segtest"
    at.run()
    at.switch_page(PAGE).run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(element.proto.spec) for element in at.get("plotly_chart")]


def open_tab(at: AppTest, tab: str) -> AppTest:
    at.session_state["seg_tab"] = tab
    at.run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def upload_c02(at: AppTest) -> AppTest:
    at.file_uploader[0].set_value(("control_seg.zip", C02_ZIP.read_bytes(), "application/zip")).run()
    assert not at.exception, [item.value for item in at.exception]
    return at


def zip_members(prefix: str) -> dict[str, bytes]:
    with zipfile.ZipFile(C02_ZIP) as archive:
        return {Path(name).name: archive.read(name) for name in sorted(archive.namelist()) if name.startswith(prefix)}


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def outline_zip() -> bytes:
    """Return a zip of 8 pairs of 64 px: 6 masks with a filled square, 2 with only its 2-pixel outline."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(8):
            archive.writestr(f"images/pair_{index}.png", png(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
            mask = np.zeros((64, 64), np.uint8)
            mask[12:52, 12:52] = 255
            if index >= 6:
                mask[14:50, 14:50] = 0
            archive.writestr(f"masks/pair_{index}.png", png(mask))
    return buffer.getvalue()


def test_missing_pairs_explained(page):
    at = page
    assert "No dataset chosen yet" in at.info[-1].value

    at = open_tab(at, "Train")
    assert texts(at.info) == ["Choose a segmentation dataset first."]
    at.button(key="seg_go_Pairs").click().run()
    assert at.session_state["seg_tab"] == "Pairs"

    at = open_tab(at, "Results")
    assert texts(at.info) == ["No finished segmentation run yet: train one first."]
    at = open_tab(at, "Predict")
    assert texts(at.info) == ["No trained segmentation model yet: train one first."]
    assert not at.error


def test_zip_upload_shows_pair_report(page, tmp_path):
    at = upload_c02(page)

    assert "Unpacked control_seg.zip into the segmentation dataset 'control_seg'." in texts(at.success)
    assert texts(at.metric) == ["20", "2", "16 / 4", "0"]
    assert "binary" in at.info[0].value
    assert not at.warning
    assert not at.error
    names = [widget.value for widget in at.text_input if widget.label.startswith("Name of class")]
    assert names == ["background", "object"]
    pixels = [spec for spec in plotly_specs(at) if spec["layout"]["title"]["text"].startswith("Pixels per class")]
    assert pixels[0]["data"][0]["y"] == ["background", "object"]
    previews = [image.proto.imgs[0].caption for image in at.get("image") if image.proto.imgs[0].caption]
    assert previews == [f"images/sample_{index:02d}.jpg" for index in range(12)]
    stored = tmp_path / "workspaces" / "segtest" / "segmentation" / "datasets" / "control_seg"
    assert len(list((stored / "masks").iterdir())) == 20
    # Segmentation data stays out of the classification Data page.
    assert not (tmp_path / "workspaces" / "segtest" / "datasets" / "control_seg").exists()


def test_files_side_by_side_report_missing_mask(page):
    at = page
    at.radio(key="seg_source").set_value("Upload images and masks").run()
    images = list(zip_members("images/").items())[:5]
    masks = list(zip_members("masks/").items())[:4]
    at.text_input(key="seg_files_dataset").set_value("shapes")
    at.file_uploader(key="seg_images_0").set_value([(name, data, "image/jpeg") for name, data in images])
    at.file_uploader(key="seg_masks_0").set_value([(name, data, "image/png") for name, data in masks])
    at.run()
    at.button(key="seg_files_save").click().run()
    assert not at.exception, [item.value for item in at.exception]

    assert "Saved 5 images and 4 masks in 'shapes'." in texts(at.success)
    assert texts(at.metric)[0] == "4"
    assert texts(at.metric)[3] == "1"
    problems = at.dataframe[-1].value
    assert list(problems["File"]) == ["images/sample_04.jpg"]
    assert "no mask" in problems["Reason"][0]


def test_outline_masks_left_out_on_request(page):
    at = page
    at.file_uploader[0].set_value(("outlines.zip", outline_zip(), "application/zip")).run()
    assert not at.exception, [item.value for item in at.exception]
    assert "outlines" in at.warning[0].value
    assert texts(at.metric)[0] == "8"

    at.checkbox(key="seg_drop_outlines_workspace_outlines_input").check().run()
    assert texts(at.metric)[0] == "6"
    problems = at.dataframe[-1].value
    assert sorted(problems["File"]) == ["masks/pair_6.png", "masks/pair_7.png"]

    # The choice outlives the Pairs tab, whose checkbox the Train tab does not draw.
    at = open_tab(at, "Train")
    assert "5 training and 1 validation pairs" in at.markdown[1].value


def test_library_membrane_pairs(page):
    at = page
    at.radio(key="seg_source").set_value("Instructor's library").run()
    at.selectbox(key="seg_library_pick").set_value("membrane")
    at.button(key="seg_library_use").click().run()
    assert not at.exception, [item.value for item in at.exception]

    assert "Using the library dataset 'membrane'." in texts(at.success)
    assert texts(at.metric)[:2] == ["30", "2"]
    assert any("image/ + label/" in caption.value for caption in at.caption)


def test_train_results_predict(page):
    at = upload_c02(page)
    at.text_input(key="seg_class_workspace_control_seg_1_input").set_value("shape").run()

    at = open_tab(at, "Train")
    assert "classes background, shape" in at.markdown[1].value
    at.slider(key="seg_epochs").set_value(1)
    at.select_slider(key="seg_image_size").set_value(128)
    at.checkbox(key="seg_augment").uncheck()
    at.button(key="seg_start").click().run()
    assert not at.exception, [item.value for item in at.exception]
    jobs = get_manager().jobs(owner="segtest")
    assert len(jobs) == 1
    assert jobs[0].kind == "segment"
    assert get_manager().wait(jobs[0], TRAINING_TIMEOUT), "segmentation training did not finish in time"
    assert jobs[0].status == "done", jobs[0].events[-1]

    at.run()
    assert not at.exception, [item.value for item in at.exception]
    assert [metric.label for metric in at.metric][:3] == ["Validation IoU", "Dice", "Pixel accuracy"]
    curves = [spec for spec in plotly_specs(at) if len(spec["data"]) == 4 and spec["data"][0].get("mode") == "lines+markers"]
    assert curves, "no training curves"
    assert curves[0]["data"][0]["x"] == [1]

    at.button(key="seg_to_results").click().run()
    assert not at.exception, [item.value for item in at.exception]
    assert at.session_state["seg_tab"] == "Results"
    per_class = at.dataframe[1].value
    assert list(per_class["class"]) == ["background", "shape"]
    gallery_ious = [float(metric.value.rstrip("%")) for metric in at.metric if metric.label == "IoU"]
    assert len(gallery_ious) == 4
    assert gallery_ious == sorted(gallery_ious)
    # Each validation image shows twice: with its true mask and with the predicted one.
    captions = [image.proto.imgs[0].caption for image in at.get("image")]
    assert sum(caption.endswith("true mask") for caption in captions) == 4
    assert sum(caption.endswith("predicted mask") for caption in captions) == 4

    at = open_tab(at, "Predict")
    sample = zip_members("images/")["sample_00.jpg"]
    at.file_uploader(key="seg_predict_files").set_value(
        [("sample_00.jpg", sample, "image/jpeg"), ("download.jpg", H09_POISON.read_bytes(), "image/jpeg")]
    ).run()
    assert not at.exception, [item.value for item in at.exception]
    assert len(at.error) == 1
    assert "download.jpg" in at.error[0].value
    downloads = at.get("download_button")
    assert len(downloads) == 1
    assert any("shape:" in caption.value for caption in at.caption)


def test_unfinished_run_shows_its_settings(page, tmp_path):
    # A run without run.json (queued, or cut off by a restart) is described by its config.json.
    from tlapp.runs import write_config
    from tlapp.segmentation.training import SegmentationConfig

    run_dir = tmp_path / "workspaces" / "segtest" / "segmentation" / "runs" / "2024-01-01_000000_efficientnet_lite0"
    write_config(run_dir, SegmentationConfig(freeze=5, epochs=3, image_size=192, augment=False).to_dict())

    at = open_tab(page, "Results")
    row = at.dataframe[0].value.iloc[0]
    assert row["status"] == "interrupted (the server restarted)"
    assert row["backbone"] == "efficientnet_lite0"
    assert row["frozen stages"] == "5"
    assert row["image size"] == 192
    assert row["epochs"] == 3
    assert row["augmentation"] == "no"
    assert pd.isna(row["validation IoU"])
