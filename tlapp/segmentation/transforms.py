"""Joint image and mask transforms: the same crop and flip for both, colour changes for the image only.

Images are stretched to a square of the network's input side rather than cropped, so the
prediction covers the whole image. Masks are resized with nearest-neighbour sampling, so class
ids are never blended. The work is done in Pillow and NumPy: torch's elementwise ops on single
images are slower there, because they synchronise threads for little work.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

# Random crops keep 40-100 % of the image area, with an aspect ratio between 3:4 and 4:3.
CROP_SCALE = (0.4, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)

PairTransform = Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]]


def _to_tensor(image: Image.Image, mean, std) -> torch.Tensor:
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    pixels = (pixels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def _resize_pair(image: Image.Image, target: np.ndarray, size: int, box=None) -> tuple[Image.Image, Image.Image]:
    resized = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    mask = Image.fromarray(target).resize((size, size), Image.Resampling.NEAREST, box=box)
    return resized, mask


def eval_transform(size: int, mean, std) -> PairTransform:
    """Return the deterministic transform: resize image and mask to ``size`` x ``size``, normalise the image."""

    def apply(image: Image.Image, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        resized, mask = _resize_pair(image, target, size)
        return _to_tensor(resized, mean, std), torch.from_numpy(np.asarray(mask).copy())

    return apply


def _crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """Draw a random crop like torchvision's RandomResizedCrop, using torch's random generator."""
    area = width * height
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(*CROP_SCALE).item()
        ratio = math.exp(torch.empty(1).uniform_(*log_ratio).item())
        crop_w = round(math.sqrt(target_area * ratio))
        crop_h = round(math.sqrt(target_area / ratio))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            left = torch.randint(0, width - crop_w + 1, (1,)).item()
            top = torch.randint(0, height - crop_h + 1, (1,)).item()
            return left, top, left + crop_w, top + crop_h
    return 0, 0, width, height


def train_transform(size: int, mean, std) -> PairTransform:
    """Return the augmenting transform: random resized crop and horizontal flip of both, colour jitter."""
    jitter = v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2)

    def apply(image: Image.Image, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        resized, mask = _resize_pair(image, target, size, box=_crop_box(*image.size))
        if torch.rand(1).item() < 0.5:
            resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        resized = jitter(resized)
        return _to_tensor(resized, mean, std), torch.from_numpy(np.asarray(mask).copy())

    return apply


def image_tensor(image: Image.Image, size: int, mean, std) -> torch.Tensor:
    """Return the network input for one image, as the evaluation transform makes it."""
    return _to_tensor(image.resize((size, size), Image.Resampling.BILINEAR), mean, std)


def resize_target(target: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a class-index target to ``size`` = (width, height) with nearest-neighbour sampling."""
    return np.asarray(Image.fromarray(target).resize(size, Image.Resampling.NEAREST))
