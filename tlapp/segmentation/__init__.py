"""Segmentation by transfer learning: a U-Net whose encoder is a pretrained registry backbone.

Data: :func:`load_segmentation_data` pairs images with masks and reads every common mask
convention (see ``masks.py``). Training: :func:`train_segmentation` with a
:class:`SegmentationConfig`. Prediction: :func:`load_segmenter`, :func:`overlay`, :func:`colorize`.

The names below are imported on first use, so that ``tlapp.cli`` can register the ``segment``
commands without loading torch and segmentation-models-pytorch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "SegmentationData": "tlapp.segmentation.dataset",
    "SegmentationReport": "tlapp.segmentation.dataset",
    "load_segmentation_data": "tlapp.segmentation.dataset",
    "inspect_segmentation": "tlapp.segmentation.dataset",
    "MaskConvention": "tlapp.segmentation.masks",
    "SegmentationConfig": "tlapp.segmentation.training",
    "train_segmentation": "tlapp.segmentation.training",
    "train": "tlapp.segmentation.training",
    "Segmenter": "tlapp.segmentation.predict",
    "load_segmenter": "tlapp.segmentation.predict",
    "overlay": "tlapp.segmentation.predict",
    "colorize": "tlapp.segmentation.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tlapp.segmentation' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
