"""Training, stopping, the run folder and prediction of the U-Net segmenter, end to end."""

from __future__ import annotations

import csv
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlapp.errors import TlappError
from tlapp.events import Done, EpochEnd, Progress, Stopped, from_dict
from tlapp.segmentation.dataset import load_segmentation_data
from tlapp.segmentation.model import build_unet
from tlapp.segmentation.metrics import image_scores
from tlapp.segmentation.predict import colorize, load_segmenter, overlay
from tlapp.segmentation.training import SegmentationConfig, train, train_segmentation

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HARDCASES = SHARED / "hardcases"


def make_shapes_dataset(root: Path, count: int = 12, size: tuple[int, int] = (72, 56)) -> Path:
    """Write ``count`` noisy dark images with one bright ellipse each, and 0/255 masks of the ellipses."""
    rng = np.random.default_rng(0)
    width, height = size
    rows, columns = np.mgrid[0:height, 0:width]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir(parents=True)
    for index in range(count):
        centre_x, centre_y = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
        radius_x, radius_y = rng.uniform(0.15, 0.3) * width, rng.uniform(0.15, 0.3) * height
        inside = ((columns - centre_x) / radius_x) ** 2 + ((rows - centre_y) / radius_y) ** 2 <= 1
        pixels = rng.integers(0, 90, (height, width, 3))
        pixels[inside] = rng.integers(170, 256, (int(inside.sum()), 3))
        Image.fromarray(pixels.astype(np.uint8)).save(root / "images" / f"shape_{index:02d}.png")
        Image.fromarray(inside.astype(np.uint8) * 255).save(root / "masks" / f"shape_{index:02d}_mask.png")
    return root


def small_config(**overrides) -> SegmentationConfig:
    settings = {"epochs": 3, "image_size": 64, "batch_size": 4, "augment_views": 2, "seed": 0, "val_fraction": 0.25}
    settings.update(overrides)
    return SegmentationConfig(**settings)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def frozen_run(shapes, tmp_path_factory) -> tuple[Path, list]:
    run_dir = tmp_path_factory.mktemp("run") / "frozen"
    events = list(train_segmentation(shapes, small_config(), run_dir))
    return run_dir, events


def test_frozen_run_events(frozen_run):
    _, events = frozen_run
    epochs = [event for event in events if isinstance(event, EpochEnd)]

    assert isinstance(events[-1], Done)
    assert [event.epoch for event in epochs] == [1, 2, 3]
    assert any(isinstance(event, Progress) and event.stage == "features" for event in events)
    for event in epochs:
        assert set(event.extra) == {"val_iou", "val_dice", "train_iou"}
        assert 0.0 <= event.val_accuracy <= 1.0
    assert epochs[-1].train_loss < epochs[0].train_loss


def test_frozen_run_folder(frozen_run):
    run_dir, events = frozen_run
    info = json.loads((run_dir / "run.json").read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    logged = [from_dict(json.loads(line)) for line in (run_dir / "events.jsonl").read_text().splitlines()]

    assert info["task"] == "segmentation"
    assert info["classes"] == ["background", "object"]
    assert info["frozen_stages"] == 8
    assert info["image_size"] == 64
    assert info["preprocessing"]["mean"] == [0.5, 0.5, 0.5]
    for key in ("val_iou", "val_dice", "val_mean_iou_all_classes", "train_seconds", "backbone", "frozen_stages"):
        assert key in metrics, key
    assert set(metrics["per_class_iou"]) == {"background", "object"}
    assert metrics["augment_views_cached"] == 2
    assert len(evaluation["samples"]) == 3
    assert {"file", "relpath", "iou", "dice"} <= set(evaluation["samples"][0])
    assert len(history) == 3
    assert [event.kind for event in logged] == [event.kind for event in events]
    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert any(key.startswith("decoder.") for key in state)
    assert json.loads((run_dir / "report.json").read_text())["num_pairs"] == 12


def test_segmenter_predicts_at_original_size(frozen_run, shapes):
    run_dir, _ = frozen_run
    segmenter = load_segmenter(run_dir)
    image_path = shapes / "images" / "shape_00.png"
    image = Image.open(image_path).convert("RGB")

    mask = segmenter.predict(image_path)
    probabilities = segmenter.predict_probs(image)

    assert mask.shape == (56, 72)
    assert mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert probabilities.shape == (2, 56, 72)
    np.testing.assert_allclose(probabilities.sum(0), 1.0, atol=1e-5)
    assert overlay(image, mask).size == image.size
    assert colorize(mask).size == image.size


def test_segmenter_reproduces_the_evaluation(frozen_run):
    # Training scores the validation images on cached frozen-stage features; the segmenter
    # recomputes those stages, in the same precision, so its masks score the same.
    run_dir, _ = frozen_run
    segmenter = load_segmenter(run_dir)
    for sample in json.loads((run_dir / "evaluation.json").read_text())["samples"]:
        predicted = torch.from_numpy(segmenter.predict(sample["file"])).long()
        truth = torch.from_numpy((np.asarray(Image.open(sample["mask"])) > 0).astype(np.int64))
        assert image_scores(predicted, truth, 2)["iou"] == pytest.approx(sample["iou"], abs=0.02), sample["relpath"]


def test_overlay_tints_only_object_pixels():
    image = Image.new("RGB", (4, 2), (100, 100, 100))
    mask = np.array([[0, 1, 255, 2], [0, 0, 1, 1]], np.uint8)

    tinted = np.asarray(overlay(image, mask, colours=[(0, 0, 0), (200, 0, 0), (0, 200, 0)], alpha=0.5))
    coloured = np.asarray(colorize(mask, colours=[(0, 0, 0), (200, 0, 0), (0, 200, 0)]))

    assert tuple(tinted[0, 0]) == (100, 100, 100)
    assert tuple(tinted[0, 1]) == (150, 50, 50)
    assert tuple(tinted[0, 2]) == (100, 100, 100)
    assert tuple(tinted[0, 3]) == (50, 150, 50)
    assert tuple(coloured[0, 1]) == (200, 0, 0)
    assert tuple(coloured[0, 2]) == (255, 255, 255)


def test_load_segmenter_rejects_other_runs(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"task": "classification", "classes": ["a", "b"]}))
    with pytest.raises(TlappError, match="cannot segment"):
        load_segmenter(tmp_path)


def test_partly_frozen_encoder_trains_later_stages(shapes, tmp_path):
    metrics = train(shapes, small_config(freeze=3, epochs=1), tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    pretrained = build_unet("efficientnet_lite0", 2, pretrained=True).state_dict()

    assert metrics["frozen_stages"] == 3
    assert metrics["augment_views_cached"] == 2
    # Stages 0-2 (stem, block1, block2) keep their weights and BatchNorm statistics; block6 trains.
    for key in ("conv_stem.weight", "bn1.running_mean", "blocks.1.0.conv_pw.weight", "blocks.1.0.bn1.running_var"):
        assert torch.equal(trained[f"encoder.model.{key}"], pretrained[f"encoder.model.{key}"]), key
    for key in ("blocks.5.0.conv_pw.weight", "blocks.5.0.bn1.running_mean"):
        assert not torch.equal(trained[f"encoder.model.{key}"], pretrained[f"encoder.model.{key}"]), key


def test_unfrozen_encoder_trains_without_a_cache(shapes, tmp_path):
    metrics = train(shapes, small_config(freeze=0, epochs=1), tmp_path / "run")
    trained = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    pretrained = build_unet("efficientnet_lite0", 2, pretrained=True).state_dict()

    assert metrics["frozen_stages"] == 0
    assert metrics["augment_views_cached"] == 0
    assert not torch.equal(trained["encoder.model.conv_stem.weight"], pretrained["encoder.model.conv_stem.weight"])


def test_stop_before_training_ends_without_a_model(shapes, tmp_path):
    stop = threading.Event()
    stop.set()
    events = list(train_segmentation(shapes, small_config(), tmp_path / "run", stop))

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics is None
    assert not (tmp_path / "run" / "model.pt").exists()


def test_stop_after_an_epoch_keeps_the_best_epoch(shapes, tmp_path):
    stop = threading.Event()
    events = []
    for event in train_segmentation(shapes, small_config(epochs=5), tmp_path / "run", stop):
        events.append(event)
        if isinstance(event, EpochEnd):
            stop.set()

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics["epochs_run"] == 1
    assert events[-1].metrics["stopped_early"] is True
    assert (tmp_path / "run" / "model.pt").is_file()


def test_invalid_settings_are_listed(shapes, tmp_path):
    config = SegmentationConfig(backbone="vgg16", epochs=0, trimap_border="maybe")
    with pytest.raises(TlappError) as error:
        list(train_segmentation(shapes, config, tmp_path / "run"))
    message = str(error.value)
    assert "vgg16" in message
    assert "epochs" in message
    assert "trimap border" in message


def test_config_round_trip():
    config = SegmentationConfig(freeze=4, image_size=320, class_names=["bg", "cell"])
    assert SegmentationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_class_names_can_be_renamed(shapes, tmp_path):
    data = load_segmentation_data(shapes)
    data.rename_classes(["sky", "ball"])
    assert data.classes == ["sky", "ball"]
    assert list(data.report.class_pixels) == ["sky", "ball"]
    with pytest.raises(TlappError, match="2 classes"):
        data.rename_classes(["only one"])


def test_control_segmentation_learns(tmp_path):
    config = SegmentationConfig(epochs=6, image_size=96, batch_size=4, augment_views=2)
    metrics = train(HARDCASES / "C02_control_seg" / "control_seg.zip", config, tmp_path / "run")
    assert metrics["val_iou"] > 0.85


def test_pets_subset_learns(tmp_path):
    # A light version of the pets acceptance run: every fourth pair of the sample, listed in a CSV
    # file with absolute paths. About a third of the sample's masks are outlines, which no model
    # can match, so they are left out.
    pets = SHARED / "datasets" / "oxford_pets_sample"
    with open(pets / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[::4]
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "mask"])
        for row in rows:
            writer.writerow([pets / row["image"], pets / row["mask"]])
    config = SegmentationConfig(epochs=4, image_size=160, batch_size=8, augment_views=2, drop_outline_masks=True)

    metrics = train(tmp_path / "pairs.csv", config, tmp_path / "run")

    assert metrics["num_train_images"] + metrics["num_val_images"] < len(rows)
    # Predicting every pixel as pet scores about 0.3 here; the trained U-Net scored 0.71.
    assert metrics["val_iou"] > 0.6
