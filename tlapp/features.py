"""Computing activations at the freeze boundary once per image, so epochs only run the trainable part."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from tlapp.backbones import Backbone, frozen_precision
from tlapp.events import StopRequested
from tlapp.images import load_rgb

log = logging.getLogger(__name__)

# Largest cache kept in memory. Above it the frozen stages run again in every epoch instead.
MAX_CACHE_BYTES = 3 * 1024**3

# Images are decoded at most this large: enough for every registry input size and its crops.
DECODE_MAX_SIDE = 512

def frozen_forward(backbone: Backbone, boundary: int, batch: torch.Tensor) -> torch.Tensor:
    """Return the activations of ``batch`` after the first ``boundary`` stages, pooled after the last.

    Training caches exactly these activations and prediction computes them the same way, so a
    trained run predicts what its evaluation measured. The result is float32.
    """
    # Channels-last runs these convolutions about 1.7x faster on a CPU (measured on Lite0).
    batch = batch.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), frozen_precision():
        activations = backbone.forward_stages(batch, 0, boundary)
        if boundary == len(backbone.stages):
            activations = backbone.pool(activations)
    return activations.float()

@dataclass
class FeatureCache:
    """Activations at the freeze boundary: ``views[v][i]`` is view ``v`` of image ``i``.

    With augmentation off there is one view (the deterministic centre crop). With it on there are
    several augmented views per image, and each epoch draws one of them per image.
    """

    views: list[torch.Tensor]  # each (num_images, *boundary_shape)
    boundary: int  # the number of frozen stages the activations come after

    @property
    def num_images(self) -> int:
        return self.views[0].shape[0]


def boundary_shape(backbone: Backbone, boundary: int, input_size: int) -> tuple[int, ...]:
    """Return the shape of one image's activations after ``boundary`` stages (pooled after the last)."""
    # Eval mode: a forward pass in train mode would update BatchNorm statistics with this dummy input.
    backbone.eval()
    with torch.inference_mode():
        x = torch.zeros(1, 3, input_size, input_size)
        x = backbone.forward_stages(x, 0, boundary)
        if boundary == len(backbone.stages):
            x = backbone.pool(x)
    return tuple(x.shape[1:])


def cache_bytes(shape: Sequence[int], num_images: int, num_views: int) -> int:
    """Return the memory a cache needs, storing spatial maps as float16 and vectors as float32."""
    per_value = 2 if len(shape) > 1 else 4
    count = 1
    for dim in shape:
        count *= dim
    return count * per_value * num_images * num_views


def _load_all(paths: Sequence[Path], names: Sequence[str]) -> list[Image.Image]:
    """Decode every image in parallel threads (Pillow releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda pair: load_rgb(pair[0], name=pair[1], max_side=DECODE_MAX_SIDE), zip(paths, names)))


def iter_batches(
    images: Sequence[Image.Image],
    transform: Callable[[Image.Image], torch.Tensor],
    batch_size: int,
) -> Iterator[torch.Tensor]:
    """Yield transformed image batches."""
    for start in range(0, len(images), batch_size):
        yield torch.stack([transform(image) for image in images[start : start + batch_size]])


def iter_features(
    backbone: Backbone,
    boundary: int,
    images: Sequence[Image.Image],
    transforms: Sequence[Callable[[Image.Image], torch.Tensor]],
    *,
    batch_size: int = 16,
    seed: int = 0,
    stop: threading.Event | None = None,
) -> Generator[int, None, FeatureCache]:
    """Run ``images`` through the first ``boundary`` stages, once per transform (view).

    Yields the number of images done after each batch and returns the cache, so a caller can
    report progress with ``cache = yield from iter_features(...)``. Random transforms are seeded
    per view, so the same seed gives the same cache.
    """
    backbone.eval().to(memory_format=torch.channels_last)
    done = 0
    views = []
    for view_index, transform in enumerate(transforms):
        torch.manual_seed(seed * 1000 + view_index)
        chunks = []
        for batch in iter_batches(images, transform, batch_size):
            if stop is not None and stop.is_set():
                raise StopRequested
            activations = frozen_forward(backbone, boundary, batch)
            # Spatial maps are large; float16 halves the cache and costs no accuracy that matters here.
            chunks.append(activations.half() if activations.dim() > 2 else activations)
            done += len(batch)
            yield done
        views.append(torch.cat(chunks))
    return FeatureCache(views=views, boundary=boundary)


def compute_features(backbone: Backbone, boundary: int, images, transforms, **options) -> FeatureCache:
    """Return the cache of ``iter_features`` without progress reports."""
    generator = iter_features(backbone, boundary, images, transforms, **options)
    while True:
        try:
            next(generator)
        except StopIteration as finished:
            return finished.value


def iter_decode(paths: Sequence[Path], names: Sequence[str]) -> Generator[int, None, list[Image.Image]]:
    """Decode images to RGB, downscaled to ``DECODE_MAX_SIDE``; yield the count done, return the images."""
    started = time.perf_counter()
    images: list[Image.Image] = []
    chunk = 64
    for start in range(0, len(paths), chunk):
        images.extend(_load_all(paths[start : start + chunk], names[start : start + chunk]))
        yield len(images)
    log.info("decoded %d images in %.1f s", len(images), time.perf_counter() - started)
    return images
