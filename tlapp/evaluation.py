"""Metrics of a classifier on its validation images: accuracy, per-class scores, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F


def confusion_matrix(true: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return counts with rows = true class and columns = predicted class."""
    flat = true * num_classes + predicted
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class_scores(confusion: torch.Tensor, classes: Sequence[str]) -> dict[str, dict]:
    """Return precision, recall, F1 and support per class (0.0 where a score is undefined)."""
    scores = {}
    for index, label in enumerate(classes):
        true_positive = confusion[index, index].item()
        predicted = confusion[:, index].sum().item()
        actual = confusion[index, :].sum().item()
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[label] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    return scores


def evaluate_predictions(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], samples: Sequence) -> dict:
    """Score validation logits; ``samples`` (with ``path`` and ``relpath``) name the images in order.

    Returns the JSON-ready dict stored as ``evaluation.json``: accuracy, balanced accuracy (mean
    recall over classes that have validation images), loss, per-class scores, the confusion
    matrix and every validation image with its probabilities and loss.
    """
    probabilities = logits.float().softmax(1)
    predicted = probabilities.argmax(1)
    losses = F.cross_entropy(logits.float(), labels, reduction="none")
    confusion = confusion_matrix(labels, predicted, len(classes))
    per_class = per_class_scores(confusion, classes)
    recalls = [score["recall"] for score in per_class.values() if score["support"]]
    return {
        "accuracy": (predicted == labels).float().mean().item(),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else 0.0,
        "loss": losses.mean().item(),
        "classes": list(classes),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "samples": [
            {
                "file": str(sample.path),
                "relpath": sample.relpath,
                "true": int(labels[i]),
                "predicted": int(predicted[i]),
                "probabilities": [round(p, 5) for p in probabilities[i].tolist()],
                "loss": losses[i].item(),
            }
            for i, sample in enumerate(samples)
        ],
    }


def misclassified(evaluation: dict) -> list[dict]:
    """Return the wrongly predicted validation images, highest loss first."""
    wrong = [sample for sample in evaluation["samples"] if sample["true"] != sample["predicted"]]
    return sorted(wrong, key=lambda sample: sample["loss"], reverse=True)


def cell_samples(evaluation: dict, true: int, predicted: int) -> list[dict]:
    """Return the validation images in one confusion-matrix cell, highest loss first."""
    cell = [s for s in evaluation["samples"] if s["true"] == true and s["predicted"] == predicted]
    return sorted(cell, key=lambda sample: sample["loss"], reverse=True)
