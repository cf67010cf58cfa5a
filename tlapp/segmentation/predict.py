"""Predicting masks with a trained segmentation run, and drawing them."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from tlapp.backbones import frozen_precision
from tlapp.errors import TlappError
from tlapp.images import load_rgb
from tlapp.runs import MODEL_FILE, Run, load_run
from tlapp.segmentation.masks import IGNORE_INDEX, display_colour
from tlapp.segmentation.model import build_unet, decode_features, encode_from, encode_until
from tlapp.segmentation.transforms import image_tensor

log = logging.getLogger(__name__)

# Pixels marked IGNORE_INDEX are drawn in this colour by colorize.
IGNORE_COLOUR = (255, 255, 255)


def _palette(colours: Sequence[Sequence[int]] | None, num_classes: int) -> np.ndarray:
    """Return a 256 x 3 colour table: the given colours, display colours after them, IGNORE_COLOUR at 255."""
    table = np.array([display_colour(index) for index in range(256)], np.uint8)
    for index, colour in enumerate((colours or [])[:num_classes]):
        table[index] = colour
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table


def colorize(mask: np.ndarray, colours: Sequence[Sequence[int]] | None = None) -> Image.Image:
    """Return an RGB picture of a class-index mask: class i in ``colours[i]``, ignored pixels white."""
    mask = np.asarray(mask, np.uint8)
    return Image.fromarray(_palette(colours, int(mask.max(initial=0)) + 1)[mask])


def overlay(
    image: Image.Image, mask: np.ndarray, colours: Sequence[Sequence[int]] | None = None, alpha: float = 0.5
) -> Image.Image:
    """Return ``image`` with every non-background class tinted in its colour (class 0 and ignored pixels left as they are)."""
    mask = np.asarray(mask, np.uint8)
    rgb = np.asarray(image.convert("RGB"), np.float32)
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"mask shape {mask.shape} does not match image size {image.size}")
    tint = _palette(colours, int(mask.max(initial=0)) + 1)[mask].astype(np.float32)
    painted = (mask > 0) & (mask != IGNORE_INDEX)
    rgb[painted] = (1 - alpha) * rgb[painted] + alpha * tint[painted]
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


class Segmenter:
    """A trained U-Net loaded from a run folder, with the input size and normalisation it was trained with."""

    def __init__(self, run: Run):
        info = run.info
        self.run = run
        self.classes: list[str] = list(info["classes"])
        self.class_colours: list[tuple[int, int, int]] = [tuple(colour) for colour in info.get("class_colours", [])]
        self.input_size = int(info["image_size"])
        self.mean = tuple(info["preprocessing"]["mean"])
        self.std = tuple(info["preprocessing"]["std"])
        self.model = build_unet(
            info["backbone"], len(self.classes), pretrained=False, decoder_channels=tuple(info["decoder_channels"])
        )
        state = torch.load(run.path / MODEL_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval()
        self.backbone = info["backbone"]
        self.frozen = int(info.get("frozen_stages", 0))
        # One model instance serves every page session; inference on it is serialised.
        self._lock = threading.Lock()

    def load_image(self, image: str | Path | bytes | Image.Image, name: str | None = None) -> Image.Image:
        """Return the image as RGB at full size (EXIF orientation applied), as ``predict`` uses it."""
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        # Full size, so the mask matches the file pixel for pixel.
        return load_rgb(image, name=name, max_side=None)

    def predict_probs(self, image: str | Path | bytes | Image.Image, name: str | None = None) -> np.ndarray:
        """Return class probabilities (classes, height, width) at the image's own size."""
        picture = self.load_image(image, name)
        batch = image_tensor(picture, self.input_size, self.mean, self.std)[None]
        with self._lock, torch.inference_mode():
            logits = self._logits(batch)
            logits = F.interpolate(logits, size=(picture.height, picture.width), mode="bilinear", align_corners=False)
            return logits.softmax(1)[0].numpy()

    def _logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Return class logits at the input size; the frozen stages run as training cached them."""
        with frozen_precision():
            frozen_outputs = encode_until(self.model, self.backbone, batch, self.frozen)
        features = encode_from(self.model, self.backbone, [level.float() for level in frozen_outputs], self.frozen)
        return decode_features(self.model, features, tuple(batch.shape[-2:]))

    def predict(self, image: str | Path | bytes | Image.Image, name: str | None = None) -> np.ndarray:
        """Return the class-index mask (uint8, height x width) at the image's own size."""
        return self.predict_probs(image, name).argmax(0).astype(np.uint8)

    def colorize(self, mask: np.ndarray) -> Image.Image:
        return colorize(mask, self.class_colours)

    def overlay(self, image: Image.Image, mask: np.ndarray, alpha: float = 0.5) -> Image.Image:
        return overlay(image, mask, self.class_colours, alpha)


_SEGMENTERS: dict[tuple[str, float], Segmenter] = {}


def load_segmenter(run_dir: str | Path) -> Segmenter:
    """Return the Segmenter of a run, reusing a loaded one while ``model.pt`` is unchanged."""
    run = load_run(run_dir)
    if run.task != "segmentation" or not run.finished:
        raise TlappError(
            f"Run '{run.name}' cannot segment images (task {run.task}, model saved: {run.finished}).",
            "Choose a finished segmentation run.",
        )
    key = (str(run.path.resolve()), (run.path / MODEL_FILE).stat().st_mtime)
    if key not in _SEGMENTERS:
        _SEGMENTERS[key] = Segmenter(run)
    return _SEGMENTERS[key]
