"""Segmentation scores from a confusion matrix of pixels: IoU, Dice and pixel accuracy.

IoU of class c = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN), counted over every scored
pixel of a set of images (not averaged per image). Pixels marked IGNORE_INDEX are not counted.
A class with no pixels in the target and none predicted has no score (None) and is left out
of the means.
"""

from __future__ import annotations

import numpy as np
import torch

from tlapp.segmentation.masks import IGNORE_INDEX


def _none_if_nan(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _nanmean(values: np.ndarray) -> float | None:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else None


class ConfusionMatrix:
    """Pixel counts: ``matrix[true, predicted]``."""

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != IGNORE_INDEX
        # Targets beyond the class count can only come from a mapping bug; count them nowhere.
        valid &= target < self.num_classes
        codes = target[valid].long() * self.num_classes + predicted[valid].long()
        counts = torch.bincount(codes, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).numpy()

    def scores(self) -> dict:
        """Return per-class IoU and Dice, their means over the foreground classes (1..), and pixel accuracy.

        ``iou`` and ``dice`` average the foreground classes only, so a large background cannot
        hide a poor object; ``mean_iou_all_classes`` includes the background.
        """
        matrix = self.matrix.astype(np.float64)
        true_positive = np.diag(matrix)
        false_positive = matrix.sum(0) - true_positive
        false_negative = matrix.sum(1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = true_positive / (true_positive + false_positive + false_negative)
            dice = 2 * true_positive / (2 * true_positive + false_positive + false_negative)
        total = matrix.sum()
        return {
            "iou": _nanmean(iou[1:]),
            "dice": _nanmean(dice[1:]),
            "mean_iou_all_classes": _nanmean(iou),
            "pixel_accuracy": float(true_positive.sum() / total) if total else None,
            "per_class_iou": [_none_if_nan(value) for value in iou],
            "per_class_dice": [_none_if_nan(value) for value in dice],
            "support": [int(value) for value in matrix.sum(1)],
        }


def image_scores(predicted: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Return one image's foreground IoU, Dice and pixel accuracy.

    An image without foreground in the target or the prediction scores 1.0: an empty prediction
    of an empty mask is right.
    """
    confusion = ConfusionMatrix(num_classes)
    confusion.update(predicted, target)
    scores = confusion.scores()
    return {
        "iou": scores["iou"] if scores["iou"] is not None else 1.0,
        "dice": scores["dice"] if scores["dice"] is not None else 1.0,
        "pixel_accuracy": scores["pixel_accuracy"],
        "foreground_pixels": int(sum(scores["support"][1:])),
    }
