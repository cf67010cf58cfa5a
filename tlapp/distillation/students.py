"""The student registry: small networks that learn to imitate a trained classifier (the teacher).

A student is a ``tlapp.training.Classifier``: a ``Backbone`` (stages, then a pool) with a new
head. Its first ``frozen`` stages keep their weights, so their activations are computed once per
image and augmented view, exactly as in classification training. Students come in two kinds:

- truncated pretrained backbones: the first stages of a registry backbone with its ImageNet
  weights, often at a lower input size, plus a new 1x1 convolution block when ``head_width`` is set;
- a compact CNN trained from scratch. With ``frozen = 0`` the cache contains the preprocessed images.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch
from torch import nn

from tlapp import backbones as bb
from tlapp import runs
from tlapp.errors import TlappError
from tlapp.training import Classifier

log = logging.getLogger(__name__)

# The compact CNN takes ImageNet-normalised images like most torchvision models.
SCRATCH_MEAN = bb.IMAGENET_MEAN
SCRATCH_STD = bb.IMAGENET_STD
# Share of the resized image that the centre crop keeps (224 of 256 in torchvision's recipe).
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class StudentSpec:
    """A registry entry: how to build one student network."""

    name: str
    description: str
    backbone: str | None
    """Registry backbone whose first ``stages`` stages start the student; None builds the compact CNN."""
    stages: int
    """Backbone stages kept (all of them when equal to the backbone's stage count)."""
    frozen: int
    """Leading stages whose weights stay fixed; their activations are cached once per view."""
    input_size: int
    next_stage_blocks: int = 0
    """Leading blocks of the backbone's next stage, kept as one more stage (for a cut inside a stage)."""
    head_width: int = 0
    """Channels of a new 1x1 convolution + BatchNorm + ReLU stage after the kept stages (0: none)."""
    widths: tuple[int, ...] = ()
    """Channels of each stage of the compact CNN (two 3x3 convolutions per stage, the first with stride 2)."""

    @property
    def pretrained(self) -> bool:
        return self.backbone is not None

    def preprocessing(self) -> bb.Preprocessing:
        """Return the preprocessing at this student's input size (normalisation of its weights)."""
        resize = int(round(self.input_size / CROP_FRACTION))
        if self.backbone is None:
            return bb.Preprocessing(self.input_size, resize, "bilinear", SCRATCH_MEAN, SCRATCH_STD)
        source = bb.get_spec(self.backbone).preprocessing
        return bb.Preprocessing(self.input_size, resize, source.interpolation, source.mean, source.std)

    def weights_status(self) -> str:
        """Return the weights status of the source backbone ("bundled", "cached", "download", "missing"), or "none"."""
        return bb.get_spec(self.backbone).weights.status() if self.backbone else "none"

    def unavailable_reason(self) -> str | None:
        """Return why this student cannot start from pretrained weights here, or None when it can."""
        status = self.weights_status()
        if status in ("none", "bundled", "cached"):
            return None
        if status == "missing":
            return f"the weights package of {self.backbone} is not installed"
        return (
            f"the ImageNet weights of {self.backbone} are not in the torch cache "
            f"({bb.get_spec(self.backbone).weights.cache_path()}) and students never download them"
        )

    def check_available(self) -> None:
        """Raise a TlappError saying why this student cannot start from pretrained weights here."""
        if reason := self.unavailable_reason():
            raise TlappError(
                f"Student '{self.name}' is not available: {reason}.",
                "Train one classification run with that backbone on a machine with internet to fill the "
                f"cache, or choose another student: {', '.join(available_students())}.",
            )

    def build(self, num_classes: int, *, pretrained: bool = True, dropout: float = 0.2) -> Classifier:
        """Build the student with its frozen stages fixed; ``pretrained=False`` skips loading weights."""
        if self.backbone is None:
            backbone = _compact_cnn(self.widths)
        else:
            backbone = self._truncated_backbone(pretrained)
        bb.freeze_stages(backbone, self.frozen)
        return Classifier(backbone, num_classes, dropout)

    def _truncated_backbone(self, pretrained: bool) -> bb.Backbone:
        if pretrained:
            self.check_available()
        full = bb.create_backbone(self.backbone, pretrained=pretrained)
        if self.stages == len(full.stages) and not self.head_width:
            return full
        stages = list(full.stages[: self.stages])
        if self.next_stage_blocks:
            stages.append(nn.Sequential(*list(full.stages[self.stages])[: self.next_stage_blocks]))
        channels = _output_channels(stages)
        if self.head_width:
            stages.append(_conv_bn_relu(channels, self.head_width, kernel=1, stride=1))
            channels = self.head_width
        pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        return bb.Backbone(stages, pool, channels)

    @property
    def pretrained_stages(self) -> int:
        """Number of stages that start from ImageNet weights (0 for the compact CNN)."""
        if not self.pretrained:
            return 0
        return self.stages + (1 if self.next_stage_blocks else 0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> StudentSpec:
        values = dict(data)
        values["widths"] = tuple(values.get("widths", ()))
        return cls(**values)

    def describe(self, num_classes: int = 2) -> dict:
        """Return what a page shows about this student: size, input, weights and availability."""
        total, frozen = _param_counts(self, num_classes)
        reason = self.unavailable_reason()
        if self.pretrained:
            num_stages = self.pretrained_stages + (1 if self.head_width else 0)
        else:
            num_stages = len(self.widths)
        return {
            "name": self.name,
            "description": self.description,
            "backbone": self.backbone,
            "pretrained": self.pretrained,
            "params": total,
            "trainable_params": total - frozen,
            "input_size": self.input_size,
            "num_stages": num_stages,
            "frozen_stages": self.frozen,
            "weights": self.weights_status(),
            "available": reason is None,
            "unavailable_reason": reason or "",
        }


def _conv_bn_relu(channels_in: int, channels_out: int, *, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, kernel, stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


def _compact_cnn(widths: tuple[int, ...]) -> bb.Backbone:
    """Build the from-scratch CNN: per stage, a 3x3 convolution with stride 2 and one with stride 1."""
    stages, channels = [], 3
    for width in widths:
        stages.append(
            nn.Sequential(
                _conv_bn_relu(channels, width, kernel=3, stride=2),
                _conv_bn_relu(width, width, kernel=3, stride=1),
            )
        )
        channels = width
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    return bb.Backbone(stages, pool, channels)


def _output_channels(stages: list[nn.Module]) -> int:
    """Return the channel count after ``stages``, from a forward pass on a small dummy image."""
    module = nn.Sequential(*stages)
    was_training = module.training
    # Eval mode: in train mode the dummy batch would change the BatchNorm running statistics.
    module.eval()
    with torch.inference_mode():
        channels = module(torch.zeros(1, 3, 64, 64)).shape[1]
    module.train(was_training)
    return channels


@lru_cache(maxsize=None)
def _param_counts(spec: StudentSpec, num_classes: int) -> tuple[int, int]:
    """Return (total, frozen) parameter counts, from a model built without loading weights."""
    model = spec.build(num_classes, pretrained=False)
    trainable, total = bb.count_params(model)
    return total, total - trainable


STUDENTS: dict[str, StudentSpec] = {
    spec.name: spec
    for spec in [
        StudentSpec(
            name="lite0_block6a_160",
            description=(
                "EfficientNet-Lite0 up to the first block of block6 (ImageNet weights bundled, works "
                "offline), frozen, with a new 1x1 convolution and head, at 160 px"
            ),
            backbone="efficientnet_lite0",
            stages=6,  # stem, block1 .. block5
            next_stage_blocks=1,  # the first of block6's four blocks
            frozen=7,  # every pretrained stage: only the new layers train
            input_size=160,
            head_width=512,
        ),
        StudentSpec(
            name="lite0_block4_128",
            description=(
                "EfficientNet-Lite0 cut after block4 (ImageNet weights bundled, works offline) "
                "with a new 1x1 convolution, at 128 px: the smallest pretrained student"
            ),
            backbone="efficientnet_lite0",
            stages=5,  # stem, block1 .. block4
            frozen=4,
            input_size=128,
            head_width=384,
        ),
        StudentSpec(
            name="cnn_small",
            description="Compact CNN trained from scratch: 4 stages of two 3x3 convolutions, at 128 px",
            backbone=None,
            stages=0,
            frozen=0,
            input_size=128,
            widths=(16, 32, 64, 128),
        ),
        StudentSpec(
            name="mobilenet_v3_small",
            description="MobileNetV3-Small with torchvision's ImageNet weights (only when they are cached)",
            backbone="mobilenet_v3_small",
            stages=13,
            frozen=9,  # the last four stages train
            input_size=224,
        ),
        StudentSpec(
            name="resnet18",
            description=(
                "ResNet-18 with torchvision's ImageNet weights (only when they are cached); "
                "a student only for teachers larger than it"
            ),
            backbone="resnet18",
            stages=5,
            frozen=4,  # layer4 trains
            input_size=224,
        ),
    ]
}

DEFAULT_STUDENT = "lite0_block6a_160"


def get_student(name: str) -> StudentSpec:
    """Return the registry entry ``name``, or raise a TlappError listing the choices."""
    try:
        return STUDENTS[name]
    except KeyError:
        raise TlappError(f"Unknown student '{name}'.", f"Choose one of: {', '.join(STUDENTS)}.") from None


def available_students() -> list[str]:
    """Return the names of the students that can be built here without a download."""
    return [name for name, spec in STUDENTS.items() if spec.unavailable_reason() is None]


def describe(num_classes: int = 2) -> list[dict]:
    """Return ``StudentSpec.describe`` for every registered student, in registry order."""
    return [spec.describe(num_classes) for spec in STUDENTS.values()]


def build_from_info(info: dict) -> Classifier:
    """Rebuild an untrained student from a run.json dict, for ``tlapp.runs.build_model``."""
    spec = StudentSpec.from_dict(info["student_spec"]) if "student_spec" in info else get_student(info["student"])
    dropout = info.get("config", {}).get("dropout", 0.2)
    return spec.build(len(info["classes"]), pretrained=False, dropout=dropout)


runs.MODEL_BUILDERS["student"] = build_from_info
