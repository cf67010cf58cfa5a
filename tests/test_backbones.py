"""The backbone registry: parameter counts, stages, freezing and the bundled ImageNet weights."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from PIL import Image
from skimage import data as skimage_data
from torch import nn
from torchvision.models import ResNet18_Weights

from tlapp import backbones as bb
from tlapp.errors import TlappError
from tlapp.weights import WeightsSource, fetch_torchvision, load_by_position

IMAGENET_CLASSES = ResNet18_Weights.DEFAULT.meta["categories"]


@pytest.mark.parametrize("name", list(bb.REGISTRY))
def test_registry_entry_matches_built_network(name):
    spec = bb.REGISTRY[name]
    backbone = bb.create_backbone(name, pretrained=False).eval()

    assert sum(p.numel() for p in backbone.parameters()) == spec.num_params
    assert len(backbone.stages) == spec.num_stages
    with torch.inference_mode():
        features = backbone(torch.randn(2, 3, 64, 64))
    assert features.shape == (2, spec.num_features)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18", "mobilenet_v3_small", "convnext_tiny", "vgg16"])
def test_gradients_reach_only_trainable_stages(name):
    backbone = bb.create_backbone(name, pretrained=False)
    frozen = bb.REGISTRY[name].num_stages - 2
    bb.freeze_stages(backbone, frozen)
    bb.set_train_mode(backbone, frozen)

    backbone(torch.randn(2, 3, 64, 64)).sum().backward()

    for index, stage in enumerate(backbone.stages):
        for parameter in stage.parameters():
            if index < frozen:
                assert parameter.grad is None, f"stage {index} is frozen but got a gradient"
            else:
                assert parameter.requires_grad
    trainable = [p for p in backbone.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)


def test_frozen_batchnorm_keeps_running_statistics():
    backbone = bb.create_backbone("efficientnet_lite0", pretrained=True)
    bb.freeze_stages(backbone, 4)
    bb.set_train_mode(backbone, 4)
    before = {k: v.clone() for k, v in backbone.stages[:4].state_dict().items()}
    after_trainable = backbone.stages[5].state_dict()["0.bn1.running_mean"].clone()

    backbone(torch.randn(4, 3, 96, 96) * 3 + 1)

    for key, value in backbone.stages[:4].state_dict().items():
        assert torch.equal(value, before[key]), f"frozen buffer {key} changed"
    assert not torch.equal(backbone.stages[5].state_dict()["0.bn1.running_mean"], after_trainable)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
@pytest.mark.parametrize(
    ("photo", "expected"),
    [(skimage_data.chelsea, "tabby"), (skimage_data.coffee, "espresso")],
)
def test_bundled_weights_recognise_real_photos(name, photo, expected):
    model = bb.build_imagenet_model(name).eval()
    transform = bb.REGISTRY[name].preprocessing.eval_transform()

    with torch.inference_mode():
        probabilities = model(transform(Image.fromarray(photo())).unsqueeze(0)).softmax(1)[0]
    top5 = [IMAGENET_CLASSES[i] for i in probabilities.topk(5).indices]

    assert expected in top5


def test_bundled_weights_need_their_own_normalisation():
    """With ImageNet's mean and std instead of (0.5, 0.5, 0.5) the same weights are clearly less sure."""
    model = bb.build_imagenet_model("efficientnet_lite0").eval()
    right = bb.REGISTRY["efficientnet_lite0"].preprocessing
    wrong = bb.Preprocessing(right.input_size, right.resize_size, right.interpolation, bb.IMAGENET_MEAN, bb.IMAGENET_STD)
    photo = Image.fromarray(skimage_data.coffee())
    espresso = IMAGENET_CLASSES.index("espresso")

    with torch.inference_mode():
        right_p = model(right.eval_transform()(photo).unsqueeze(0)).softmax(1)[0, espresso]
        wrong_p = model(wrong.eval_transform()(photo).unsqueeze(0)).softmax(1)[0, espresso]

    assert right_p > 0.8
    assert wrong_p < right_p - 0.1


def test_load_by_position_checks_every_shape():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    weights = {"a": torch.zeros(4, 3), "b": torch.zeros(4), "c": torch.zeros(3, 4), "d": torch.zeros(2)}

    with pytest.raises(ValueError, match="tensor c has shape"):
        load_by_position(model, weights, origin="test.pth")


def use_torch_home(monkeypatch, folder):
    """Point torch's hub cache at ``folder``/hub for one test."""
    monkeypatch.setenv("TORCH_HOME", str(folder))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)


def test_offline_download_names_file_url_and_folder(monkeypatch, tmp_path):
    use_torch_home(monkeypatch, tmp_path)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    source = WeightsSource("torchvision", url="https://download.pytorch.org/models/resnet18-f37072fd.pth")
    with pytest.raises(TlappError) as caught:
        fetch_torchvision(source)
    message = str(caught.value)
    assert "resnet18-f37072fd.pth" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert str(tmp_path / "hub" / "checkpoints") in message
    assert not list((tmp_path / "hub" / "checkpoints").glob("*"))


def test_weights_status_reports_cache_and_bundles(monkeypatch, tmp_path):
    use_torch_home(monkeypatch, tmp_path)
    source = bb.REGISTRY["resnet18"].weights
    assert source.status() == "download"
    source.cache_path().parent.mkdir(parents=True)
    source.cache_path().write_bytes(b"x")
    assert source.status() == "cached"
    assert bb.REGISTRY["efficientnet_lite0"].weights.status() == "bundled"
    assert WeightsSource("bundled", package="no_such_weights_package").status() == "missing"


@pytest.mark.parametrize(("freeze", "expected"), [("all", 9), (0, 0), ("3", 3)])
def test_resolve_freeze_accepts_counts_and_all(freeze, expected):
    assert bb.resolve_freeze(bb.REGISTRY["efficientnet_lite0"], freeze) == expected


@pytest.mark.parametrize("freeze", [10, -1, "most"])
def test_resolve_freeze_rejects_out_of_range(freeze):
    with pytest.raises(TlappError, match="0 to 9"):
        bb.resolve_freeze(bb.REGISTRY["efficientnet_lite0"], freeze)


def test_unknown_backbone_lists_choices():
    with pytest.raises(TlappError, match="efficientnet_lite0"):
        bb.get_spec("resnet1000")
