"""The U-Net with a registry encoder: pretrained weights, freezing by stage, feature-based decoding."""

from __future__ import annotations

import pytest
import torch

from tlapp import backbones as bb
from tlapp.errors import TlappError
from tlapp.segmentation import model as unet


def test_lite0_encoder_takes_every_bundled_tensor():
    model = unet.build_unet("efficientnet_lite0", num_classes=2, pretrained=False)
    unused = unet.load_encoder_weights(model, "efficientnet_lite0")
    imagenet = bb.build_imagenet_model("efficientnet_lite0").state_dict()
    encoder = model.encoder.model.state_dict()

    assert len(encoder) == 288
    assert set(encoder) <= set(imagenet)
    for key, tensor in encoder.items():
        assert torch.equal(tensor, imagenet[key]), key
    # Only the ImageNet head is left over: the 1x1 head convolution, its BatchNorm and the classifier.
    assert {key.split(".")[0] for key in unused} == {"conv_head", "bn2", "classifier"}


def test_resnet18_encoder_takes_torchvision_weights(monkeypatch, tmp_path):
    # A resnet18 state dict with random values replaces torchvision's ImageNet file in a
    # temporary torch hub cache, so the test neither downloads nor depends on this machine's cache.
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    source = bb.get_spec("resnet18").weights
    torch.manual_seed(0)
    saved = torchvision.models.resnet18().state_dict()
    source.cache_path().parent.mkdir(parents=True)
    torch.save(saved, source.cache_path())
    assert source.status() == "cached"

    model = unet.build_unet("resnet18", num_classes=3, pretrained=True)
    encoder = model.encoder.state_dict()
    assert set(encoder) == set(saved) - {"fc.weight", "fc.bias"}
    for key, tensor in encoder.items():
        assert torch.equal(tensor, saved[key]), key


def test_unsupported_backbone_is_rejected():
    with pytest.raises(TlappError, match="cannot be used as a U-Net encoder"):
        unet.build_unet("vgg16", num_classes=2, pretrained=False)


def test_stages_follow_the_registry():
    lite = unet.build_unet("efficientnet_lite0", 2, pretrained=False)
    resnet = unet.build_unet("resnet18", 2, pretrained=False)

    names = [name for name, _ in unet.encoder_stages(lite, "efficientnet_lite0")]
    assert names == ["stem", *(f"block{i}" for i in range(1, 8))]
    assert [name for name, _ in unet.encoder_stages(resnet, "resnet18")] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    # "all" and the registry's full count (which includes the unused head conv) freeze the 8 encoder stages.
    assert unet.resolve_encoder_freeze(lite, "efficientnet_lite0", "all") == 8
    assert unet.resolve_encoder_freeze(lite, "efficientnet_lite0", 9) == 8
    with pytest.raises(TlappError):
        unet.resolve_encoder_freeze(lite, "efficientnet_lite0", 10)


def test_freezing_stops_gradients_and_keeps_batchnorm_statistics():
    model = unet.build_unet("efficientnet_lite0", 2, pretrained=False)
    stages = unet.encoder_stages(model, "efficientnet_lite0")
    unet.freeze_encoder(model, "efficientnet_lite0", 3)
    unet.set_train_mode(model, "efficientnet_lite0", 3)

    for index, (name, modules) in enumerate(stages):
        for module in modules:
            trainable = {parameter.requires_grad for parameter in module.parameters()}
            assert trainable == {index >= 3}, name
            assert module.training == (index >= 3), name
    assert all(parameter.requires_grad for parameter in model.decoder.parameters())
    assert model.decoder.training

    unet.freeze_encoder(model, "efficientnet_lite0", 8)
    assert not any(parameter.requires_grad for parameter in model.encoder.parameters())


def test_cached_features_decode_like_the_full_model():
    model = unet.build_unet("efficientnet_lite0", 3, pretrained=False).eval()
    images = torch.randn(2, 3, 96, 64)
    with torch.inference_mode():
        expected = model(images)
        features = unet.encode(model, images)
        decoded = unet.decode_features(model, [feature.half().float() for feature in features], (96, 64))

    assert decoded.shape == (2, 3, 96, 64)
    # float16 storage of the cached features changes the logits only slightly.
    assert torch.allclose(decoded, expected, atol=0.05)


@pytest.mark.parametrize("size, padded", [(256, 256), (250, 256), (1, 32), (33, 64), (512, 512)])
def test_padded_size(size, padded):
    assert unet.padded_size(size) == padded


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
def test_encoding_splits_at_every_boundary(backbone):
    model = unet.build_unet(backbone, 2, pretrained=False).eval()
    images = torch.randn(1, 3, 32, 64)
    with torch.inference_mode():
        expected = unet.encode(model, images)
        steps, _ = unet.encoder_steps(model, backbone)
        for boundary in range(len(steps) + 1):
            kept = unet.encode_until(model, backbone, images, boundary)
            features = unet.encode_from(model, backbone, kept, boundary)
            assert len(features) == len(expected), boundary
            for feature, reference in zip(features, expected):
                assert torch.equal(feature, reference), boundary
