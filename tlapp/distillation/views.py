"""Views of the training images labelled by the teacher once, before any student epoch.

A few hundred images show the student little of the teacher's behaviour, so every training image
gets several views: view 0 is the plain centre crop and views 1.. are random crops, flips and colour
changes. For each view the teacher's logits and the student's activations at its freeze boundary
are computed once and kept in memory; the epochs only read them. The teacher and the student see
the same crop, each at its own input size and normalisation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import v2

from tlapp.backbones import Preprocessing
from tlapp.features import FeatureCache, iter_features
from tlapp.training import Classifier

# Images per forward pass while caching.
CACHE_BATCH_SIZE = 16

# (stage, done, total) after each batch, where stage is "teacher" or "features" and the counts are network passes.
Step = tuple[str, int, int]


@dataclass
class ViewSet:
    """Cached training data: ``teacher_logits[v, i]`` and ``student.views[v][i]`` belong to view ``v`` of image ``i``."""

    teacher_logits: torch.Tensor  # (views, images, classes), float32
    student: FeatureCache

    @property
    def num_views(self) -> int:
        return self.teacher_logits.shape[0]


def crop_transform(teacher: Preprocessing) -> v2.Compose:
    """Return the random view transform, PIL image to PIL image at the teacher's input size.

    It augments like ``Preprocessing.train_transform`` (random crop of 60-100 % of the resized
    image, horizontal flip, light colour jitter) but stops before the tensor conversion, so that
    the teacher and the student can each convert the same crop.
    """
    interpolation = v2.InterpolationMode(teacher.interpolation)
    return v2.Compose(
        [
            v2.Resize(teacher.resize_size, interpolation=interpolation, antialias=True),
            v2.RandomResizedCrop(teacher.input_size, scale=(0.6, 1.0), interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        ]
    )


def crop_to_tensor(preprocessing: Preprocessing, crop_size: int) -> v2.Compose:
    """Return the transform of a square crop of ``crop_size`` pixels to a normalised tensor at the input size."""
    size = preprocessing.input_size
    resize = [] if crop_size == size else [
        v2.Resize((size, size), interpolation=v2.InterpolationMode(preprocessing.interpolation), antialias=True)
    ]
    return v2.Compose(
        [*resize, v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(preprocessing.mean, preprocessing.std)]
    )


def _random_view(images: Sequence[Image.Image], crop: Callable, seed: int) -> list[Image.Image]:
    # torchvision's random transforms draw from torch's global generator.
    torch.manual_seed(seed)
    return [crop(image) for image in images]


def iter_teacher_logits(
    teacher: Classifier,
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    stop: threading.Event | None = None,
) -> Generator[int, None, torch.Tensor]:
    """Run the whole teacher on ``images``; yield the count done after each batch, return the logits."""
    pooled_after = len(teacher.backbone.stages)
    cache = yield from iter_features(
        teacher.backbone, pooled_after, images, [transform], batch_size=CACHE_BATCH_SIZE, stop=stop
    )
    teacher.eval()
    with torch.inference_mode():
        return teacher.head(cache.views[0]).float()


def iter_view_set(
    teacher: Classifier,
    teacher_preprocessing: Preprocessing,
    student: Classifier,
    boundary: int,
    student_preprocessing: Preprocessing,
    images: Sequence[Image.Image],
    num_views: int,
    *,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> Generator[Step, None, ViewSet]:
    """Compute the teacher's logits and the student's activations after ``boundary`` stages for every view.

    Yields ``(stage, done, total)`` after each batch and returns the ViewSet. ``done`` counts the
    passes of both networks together (two per view of an image), so it only grows. Raises
    ``tlapp.events.StopRequested`` between batches once ``stop`` is set. The same seed gives
    the same views.
    """
    # Each view of an image takes two passes, the teacher's and then the student's.
    total = 2 * len(images) * num_views
    crop = crop_transform(teacher_preprocessing)
    crop_size = teacher_preprocessing.input_size
    teacher_tensor = crop_to_tensor(teacher_preprocessing, crop_size)
    student_tensor = crop_to_tensor(student_preprocessing, crop_size)
    logits, activations = [], []
    for view in range(num_views):
        if view == 0:
            view_images = images
            to_teacher, to_student = teacher_preprocessing.eval_transform(), student_preprocessing.eval_transform()
        else:
            view_images = _random_view(images, crop, seed * 1000 + view)
            to_teacher, to_student = teacher_tensor, student_tensor
        done = 2 * view * len(images)

        teacher_pass = iter_teacher_logits(teacher, view_images, to_teacher, stop)
        view_logits = yield from _offset(teacher_pass, "teacher", done, total)
        logits.append(view_logits)

        student_pass = iter_features(
            student.backbone, boundary, view_images, [to_student], batch_size=CACHE_BATCH_SIZE, stop=stop
        )
        cache = yield from _offset(student_pass, "features", done + len(images), total)
        activations.append(cache.views[0])
    return ViewSet(teacher_logits=torch.stack(logits), student=FeatureCache(views=activations, boundary=boundary))


def _offset(steps: Generator[int, None, object], stage: str, offset: int, total: int):
    """Turn per-view done counts into ``(stage, done over all views, total)`` steps; return the result."""
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return finished.value
        yield stage, offset + done, total
