"""A U-Net whose encoder is a pretrained registry backbone (segmentation-models-pytorch 0.6).

The encoder is the backbone's convolutional stages without its ImageNet classifier. The decoder
upsamples the deepest features step by step and concatenates the encoder's feature map of the
same resolution at each step (the skip connections). A 3x3 convolution then gives per-pixel
class scores at the input resolution.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import segmentation_models_pytorch as smp
import torch
from torch import nn

from tlapp import backbones as bb
from tlapp.errors import TlappError
from tlapp.weights import ProgressCallback

log = logging.getLogger(__name__)

# Registry backbone -> smp encoder. "tu-" encoders wrap a timm model built with features_only,
# whose state dict uses the same names as the full timm model. smp's ResNet encoders subclass
# torchvision's ResNet, so torchvision's state dict loads into them.
SMP_ENCODERS = {
    "efficientnet_lite0": "tu-tf_efficientnet_lite0",
    "efficientnet_lite1": "tu-tf_efficientnet_lite1",
    "efficientnet_lite2": "tu-tf_efficientnet_lite2",
    "resnet18": "resnet18",
    "resnet50": "resnet50",
}

# Decoder widths from the deepest to the full-resolution block. smp's default is
# (256, 128, 64, 32, 16); half of it trains about 2.5 times faster on a CPU.
# NOTE: measured on a 2-core CPU with 256x256 inputs and the frozen Lite0 encoder (about 0.08 s
# per image for a decoder forward and backward pass, against 0.2 s for the default widths).
DECODER_CHANNELS = (128, 64, 32, 16, 16)

# The encoder downsamples 5 times by 2, so input sides must be multiples of 32.
SIZE_MULTIPLE = 32


def padded_size(size: int) -> int:
    """Return the smallest multiple of 32 that is at least ``size``: the input side the U-Net needs."""
    return max(SIZE_MULTIPLE, math.ceil(size / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def check_backbone(name: str) -> bb.BackboneSpec:
    """Return the registry entry of a backbone the U-Net supports, or raise TlappError."""
    spec = bb.get_spec(name)
    if name not in SMP_ENCODERS:
        raise TlappError(
            f"The backbone '{name}' cannot be used as a U-Net encoder here.",
            f"Choose one of: {', '.join(SMP_ENCODERS)}.",
        )
    return spec


def build_unet(
    backbone: str,
    num_classes: int,
    pretrained: bool = True,
    decoder_channels: tuple[int, ...] = DECODER_CHANNELS,
    progress: ProgressCallback | None = None,
) -> smp.Unet:
    """Build the U-Net; with ``pretrained``, load the backbone's ImageNet weights into its encoder."""
    check_backbone(backbone)
    model = smp.Unet(
        encoder_name=SMP_ENCODERS[backbone],
        encoder_weights=None,
        classes=num_classes,
        decoder_channels=tuple(decoder_channels),
    )
    if pretrained:
        load_encoder_weights(model, backbone, progress)
    return model


def _encoder_module(model: smp.Unet, backbone: str) -> nn.Module:
    """Return the module whose state dict uses the registry network's tensor names."""
    if bb.get_spec(backbone).family == "timm":
        return model.encoder.model
    return model.encoder


def load_encoder_weights(model: smp.Unet, backbone: str, progress: ProgressCallback | None = None) -> list[str]:
    """Copy the registry's ImageNet weights into the U-Net encoder; return the unused tensor names.

    Every encoder tensor must be found with the same shape (the unused ones are the ImageNet
    classifier and, for EfficientNet-Lite, the head convolution the U-Net does not use).
    Torchvision weights are downloaded when they are not cached yet.
    """
    source = bb.build_imagenet_model(backbone, pretrained=True, progress=progress).state_dict()
    encoder = _encoder_module(model, backbone)
    target = encoder.state_dict()
    missing = [key for key in target if key not in source or source[key].shape != target[key].shape]
    if missing:
        raise RuntimeError(f"ImageNet weights of {backbone} lack {len(missing)} encoder tensors, e.g. {missing[:3]}")
    encoder.load_state_dict({key: source[key] for key in target}, strict=True)
    unused = [key for key in source if key not in target]
    log.info("loaded %d ImageNet tensors of %s into the U-Net encoder (%d unused)", len(target), backbone, len(unused))
    return unused


def encoder_stages(model: smp.Unet, backbone: str) -> list[tuple[str, list[nn.Module]]]:
    """Return the encoder's stages in order as (registry stage name, modules).

    The stages follow the registry's split. EfficientNet-Lite's last registry stage, the head
    convolution, feeds only the ImageNet classifier and is not part of the U-Net encoder.
    """
    spec = bb.get_spec(backbone)
    if spec.family == "timm":
        timm_model = model.encoder.model
        modules = [[timm_model.conv_stem, timm_model.bn1], *([block] for block in timm_model.blocks)]
    else:
        encoder = model.encoder
        modules = [[encoder.conv1, encoder.bn1], [encoder.layer1], [encoder.layer2], [encoder.layer3], [encoder.layer4]]
    return list(zip(spec.stage_names, modules))


def resolve_encoder_freeze(model: smp.Unet, backbone: str, freeze: int | str) -> int:
    """Turn "all" or a registry stage count into the number of frozen encoder stages."""
    count = bb.resolve_freeze(bb.get_spec(backbone), freeze)
    return min(count, len(encoder_stages(model, backbone)))


def freeze_encoder(model: smp.Unet, backbone: str, count: int) -> None:
    """Stop gradients in the first ``count`` encoder stages; the decoder always trains."""
    for parameter in model.encoder.parameters():
        parameter.requires_grad = True
    for _, modules in encoder_stages(model, backbone)[:count]:
        for module in modules:
            for parameter in module.parameters():
                parameter.requires_grad = False


def set_train_mode(model: smp.Unet, backbone: str, frozen: int) -> None:
    """Put the model in train mode except frozen stages, whose BatchNorm keeps its ImageNet statistics."""
    model.train()
    for _, modules in encoder_stages(model, backbone)[:frozen]:
        for module in modules:
            module.eval()


def encoder_steps(model: smp.Unet, backbone: str) -> tuple[list[Callable[[torch.Tensor], torch.Tensor]], frozenset[int]]:
    """Return the encoder as one callable per registry stage, and the stages whose outputs the decoder uses.

    Running the steps in order and collecting the marked outputs gives exactly what
    ``model.encoder`` returns (without its leading input entry), which is what allows caching
    the outputs of frozen stages.
    """
    if bb.get_spec(backbone).family == "timm":
        timm_model = model.encoder.model

        def stem(x: torch.Tensor) -> torch.Tensor:
            return timm_model.bn1(timm_model.conv_stem(x))

        feature_stages = frozenset(info["stage"] for info in timm_model.feature_info.get_dicts())
        return [stem, *timm_model.blocks], feature_stages

    encoder = model.encoder

    def resnet_stem(x: torch.Tensor) -> torch.Tensor:
        return encoder.relu(encoder.bn1(encoder.conv1(x)))

    def resnet_layer1(x: torch.Tensor) -> torch.Tensor:
        return encoder.layer1(encoder.maxpool(x))

    return [resnet_stem, resnet_layer1, encoder.layer2, encoder.layer3, encoder.layer4], frozenset(range(5))


def encode_until(model: smp.Unet, backbone: str, images: torch.Tensor, boundary: int) -> list[torch.Tensor]:
    """Run the first ``boundary`` encoder stages; return what the rest needs to finish the encoding.

    That is the decoder features produced so far, followed by the activation after stage
    ``boundary`` when that activation is not itself one of them.
    """
    steps, feature_stages = encoder_steps(model, backbone)
    kept, x = [], images
    for index in range(boundary):
        x = steps[index](x)
        if index in feature_stages:
            kept.append(x)
    if boundary == 0 or boundary - 1 not in feature_stages:
        kept.append(x)
    return kept


def encode_from(model: smp.Unet, backbone: str, kept: list[torch.Tensor], boundary: int) -> list[torch.Tensor]:
    """Finish the encoding from the output of :func:`encode_until`; return all decoder features."""
    steps, feature_stages = encoder_steps(model, backbone)
    last_is_feature = boundary > 0 and boundary - 1 in feature_stages
    features = list(kept) if last_is_feature else list(kept[:-1])
    x = kept[-1]
    for index in range(boundary, len(steps)):
        x = steps[index](x)
        if index in feature_stages:
            features.append(x)
    return features


def decode_features(model: smp.Unet, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Run the decoder and the segmentation head on encoder features; return class logits.

    ``features`` are the encoder's outputs without its first entry (the input image itself),
    which the decoder uses only for its spatial size.
    """
    placeholder = features[0].new_empty((features[0].shape[0], 0, *size))
    return model.segmentation_head(model.decoder([placeholder, *features]))


def encode(model: smp.Unet, images: torch.Tensor) -> list[torch.Tensor]:
    """Return the encoder's feature maps of ``images`` without the leading input entry."""
    return list(model.encoder(images))[1:]
