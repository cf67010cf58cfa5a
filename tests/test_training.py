"""Training a classifier end to end on small generated photos: events, run folder, stop, seeds."""

from __future__ import annotations

import json
import threading
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import HARDCASES
from tlapp import backbones as bb
from tlapp.datasets import load_collection
from tlapp.errors import TlappError
from tlapp.events import Done, EpochEnd, Message, Progress, Stopped, from_dict
from tlapp.backbones import PRECISION_VARIABLE, frozen_dtype
from tlapp.features import frozen_forward
from tlapp.runs import list_runs, load_predictor, load_run
from tlapp.training import TrainConfig, estimate_train_seconds, skipped_summary, train, train_classifier

COLOURS = {"blue": (40, 60, 200), "red": (210, 40, 40), "yellow": (230, 210, 40)}


def write_colour_photos(root, per_class: dict[str, int], size=(80, 64)):
    """Write noisy images whose dominant colour is the class, so pretrained features separate them."""
    rng = np.random.default_rng(0)
    for label, count in per_class.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            noise = rng.normal(0, 25, (size[1], size[0], 3))
            pixels = np.clip(np.array(COLOURS[label]) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{label}_{i}.jpg")
    return root


@pytest.fixture
def colour_data(tmp_path):
    return write_colour_photos(tmp_path / "photos", {"blue": 8, "red": 8, "yellow": 8})


# A few optimizer steps on 18 images need a higher learning rate than the default to converge.
QUICK = {"batch_size": 8, "learning_rate": 0.02}


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """One head-only run shared by the tests that only read its results: (data, run folder, events)."""
    root = tmp_path_factory.mktemp("head_run")
    data = write_colour_photos(root / "photos", {"blue": 8, "red": 8, "yellow": 8})
    events = list(train_classifier(data, TrainConfig(epochs=5, **QUICK), root / "run"))
    return data, root / "run", events


def test_head_only_run_learns_and_writes_folder(head_run):
    _, run_dir, events = head_run

    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert [e.epoch for e in epochs] == [1, 2, 3, 4, 5]
    assert any(isinstance(e, Progress) and e.stage == "features" for e in events)
    assert isinstance(events[-1], Done)
    metrics = events[-1].metrics
    assert metrics["val_accuracy"] == 1.0
    assert metrics["frozen_stages"] == 9
    assert metrics["trainable_params"] == 1280 * 3 + 3
    assert metrics["total_params"] == bb.REGISTRY["efficientnet_lite0"].num_params + 1280 * 3 + 3
    for name in ["config.json", "model.pt", "run.json", "metrics.json", "history.json", "evaluation.json", "report.json"]:
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    logged = [from_dict(json.loads(line)) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert logged == events


def test_run_weights_load_safely_and_predict(head_run):
    data, run_dir, _ = head_run

    state = torch.load(run_dir / "model.pt", weights_only=True)
    assert "head.1.weight" in state
    predictor = load_predictor(run_dir)
    top = predictor.predict([data / "red" / "red_0.jpg", data / "blue" / "blue_1.jpg"])
    assert top[0][0][0] == "red"
    assert top[1][0][0] == "blue"
    assert sum(p for _, p in top[0]) == pytest.approx(1.0, abs=1e-4)
    run = load_run(run_dir)
    assert run.classes == ["blue", "red", "yellow"]
    assert [r.name for r in list_runs(run_dir.parent)] == ["run"]


def test_evaluation_lists_every_validation_image(head_run):
    evaluation = load_run(head_run[1]).evaluation

    assert len(evaluation["samples"]) == 6  # 20 % of 8 per class, at least one each
    assert sum(map(sum, evaluation["confusion"])) == 6
    assert set(evaluation["per_class"]) == {"blue", "red", "yellow"}
    for sample in evaluation["samples"]:
        assert sum(sample["probabilities"]) == pytest.approx(1.0, abs=1e-3)


def test_partial_freeze_fine_tunes_only_later_stages(colour_data, tmp_path):
    pretrained = bb.create_backbone("efficientnet_lite0").state_dict()
    metrics = train(colour_data, TrainConfig(freeze=7, epochs=2, **QUICK), tmp_path / "run")

    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    for key, value in pretrained.items():
        stage = int(key.split(".")[1]) if key.startswith("stages.") else None
        if stage is not None and stage < 7:
            assert torch.equal(state[f"backbone.{key}"], value), f"frozen {key} changed"
    assert not torch.equal(state["backbone.stages.8.0.weight"], pretrained["stages.8.0.weight"])
    assert metrics["frozen_stages"] == 7


def test_fine_tune_everything_with_augmentation(colour_data, tmp_path):
    config = TrainConfig(freeze=0, epochs=1, augment=True, augment_views=2, **QUICK)
    metrics = train(colour_data, config, tmp_path / "run")

    assert metrics["frozen_stages"] == 0
    assert metrics["trainable_params"] == metrics["total_params"]


def test_last_batch_of_one_does_not_break_batchnorm(tmp_path):
    data = write_colour_photos(tmp_path / "photos", {"blue": 8, "red": 8})
    n_train = len(load_collection(data).train)
    # Batch size n - 1 leaves one image alone in the last batch, with BatchNorm in trainable stages.
    metrics = train(data, TrainConfig(freeze=7, epochs=1, batch_size=n_train - 1), tmp_path / "run")

    assert metrics["num_train_images"] == n_train
    assert metrics["epochs_run"] == 1


@pytest.mark.parametrize("archive", ["dataset_17_images.zip", "dataset_33_images.zip"])
def test_hardcase_last_batch_of_one(archive, tmp_path):
    collection = load_collection(HARDCASES / "H29_last_batch_of_one" / archive)
    n_train = len(collection.train)
    config = TrainConfig(freeze=8, epochs=1, batch_size=n_train - 1)

    metrics = train(collection, config, tmp_path / "run")

    assert metrics["num_train_images"] == n_train
    assert metrics["epochs_run"] == 1


def test_stop_keeps_the_best_epoch_so_far(colour_data, tmp_path):
    stop = threading.Event()
    events = []
    for event in train_classifier(colour_data, TrainConfig(epochs=50, **QUICK), tmp_path / "run", stop):
        events.append(event)
        if isinstance(event, EpochEnd) and event.epoch == 2:
            stop.set()

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics["epochs_run"] == 2
    assert events[-1].metrics["stopped_early"] is True
    assert (tmp_path / "run" / "model.pt").is_file()


def test_stop_during_feature_caching_ends_cleanly(colour_data, tmp_path):
    stop = threading.Event()
    stop.set()
    events = list(train_classifier(colour_data, TrainConfig(epochs=2), tmp_path / "run", stop))

    assert isinstance(events[-1], Stopped)
    assert events[-1].metrics is None
    assert not (tmp_path / "run" / "model.pt").exists()


def test_same_seed_gives_same_history(colour_data, tmp_path):
    config = TrainConfig(epochs=2, augment=True, augment_views=2, seed=3, **QUICK)
    train(colour_data, config, tmp_path / "a")
    train(colour_data, config, tmp_path / "b")

    first = load_run(tmp_path / "a").history
    second = load_run(tmp_path / "b").history
    for one, two in zip(first, second):
        assert one["train_loss"] == pytest.approx(two["train_loss"], rel=1e-5)
        assert one["val_loss"] == pytest.approx(two["val_loss"], rel=1e-5)


def test_from_scratch_warns_in_events(colour_data, tmp_path):
    events = list(train_classifier(colour_data, TrainConfig(pretrained=False, epochs=1), tmp_path / "run"))

    warnings = [e.text for e in events if isinstance(e, Message) and e.level == "warning"]
    assert any("random weights" in text for text in warnings)


def test_invalid_settings_are_listed_together():
    with pytest.raises(TlappError) as caught:
        TrainConfig(epochs=0, learning_rate=5, freeze=99).validate()
    message = str(caught.value)
    assert "epochs" in message
    assert "learning rate" in message
    assert "cannot freeze 99" in message


def test_estimate_grows_as_fewer_stages_are_frozen():
    head_only = estimate_train_seconds("efficientnet_lite0", "all", 300, 10)
    fine_tune = estimate_train_seconds("efficientnet_lite0", 0, 300, 10)

    assert 0 < head_only < fine_tune


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
def test_prediction_reproduces_the_evaluation(monkeypatch, colour_data, tmp_path, precision):
    # Training caches the frozen stages' activations and prediction recomputes them: in either
    # precision a run must predict the probabilities its evaluation recorded.
    monkeypatch.setenv(PRECISION_VARIABLE, precision)
    assert frozen_dtype() == getattr(torch, precision)
    train(colour_data, TrainConfig(freeze=7, epochs=2, **QUICK), tmp_path / "run")

    samples = load_run(tmp_path / "run").evaluation["samples"]
    predictor = load_predictor(tmp_path / "run")
    probs = predictor.predict_probs([s["file"] for s in samples])
    # The cache keeps partly frozen activations in float16, so allow for its rounding.
    np.testing.assert_allclose(probs, [s["probabilities"] for s in samples], atol=0.02)


def test_bfloat16_features_match_float32(monkeypatch):
    import skimage.data

    spec = bb.get_spec("efficientnet_lite0")
    transform = spec.preprocessing.eval_transform()
    batch = torch.stack([transform(Image.fromarray(skimage.data.chelsea())), transform(Image.fromarray(skimage.data.coffee()))])
    backbone = bb.create_backbone("efficientnet_lite0").eval()
    monkeypatch.setenv(PRECISION_VARIABLE, "float32")
    exact = frozen_forward(backbone, len(backbone.stages), batch)
    monkeypatch.setenv(PRECISION_VARIABLE, "bfloat16")
    rounded = frozen_forward(backbone, len(backbone.stages), batch)

    assert rounded.dtype == torch.float32
    assert not torch.equal(rounded, exact)
    # On these two photos the pooled features differ by about 2.7 % (relative norm).
    assert ((rounded - exact).norm(dim=1) / exact.norm(dim=1)).max() < 0.05
    assert torch.nn.functional.cosine_similarity(rounded, exact).min() > 0.998


def test_unknown_precision_uses_automatic(monkeypatch, caplog):
    monkeypatch.delenv(PRECISION_VARIABLE, raising=False)
    automatic = frozen_dtype()
    monkeypatch.setenv(PRECISION_VARIABLE, "float8")
    assert frozen_dtype() == automatic
    assert frozen_dtype() == automatic
    assert caplog.text.count("ignoring TLAPP_FROZEN_PRECISION=float8") == 1


def test_skipped_summary_names_files():
    skipped = [{"file": f"a/{i}.txt", "reason": "not an image file (.txt)"} for i in range(5)]

    assert skipped_summary(skipped[:1]) == "Skipped 1 file that is not a usable image: a/0.txt (not an image file (.txt))."
    summary = skipped_summary(skipped)
    assert summary.startswith("Skipped 5 files that are not usable images: a/0.txt (not an image file (.txt)); a/1.txt")
    assert "a/3.txt" not in summary
    assert summary.endswith("; and 2 more, listed in the dataset report.")
