"""Side-by-side numbers of a teacher and its students: accuracy, size, CPU latency and agreement."""

from __future__ import annotations

import copy
import io
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from tlapp.errors import TlappError
from tlapp.images import load_rgb
from tlapp.runs import load_predictor, load_run

from tlapp.distillation.loss import soft_targets

TEMPERATURES = (1, 2, 5, 10, 20)

# Rows of ``compare``: the metrics.json key and the label a table shows.
TABLE_ROWS = (
    ("teacher", "teacher"),
    ("student", "distilled student"),
    ("student_without_teacher", "student on labels only"),
)


def state_dict_mb(model: nn.Module) -> float:
    """Return the size of the saved state dict (what ``model.pt`` holds) in MB of 10^6 bytes."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def measure_latency(
    models: dict[str, tuple[nn.Module, int]], batch_size: int, *, runs: int = 5, warmup: int = 1
) -> dict[str, float]:
    """Return each model's CPU forward time per image in milliseconds, at ``batch_size``.

    ``models`` maps a name to (model, input size). Each model is timed on random images in eval
    mode, in float32 and the default memory format, with torch's current thread count: the
    figures compare the networks, not ``tlapp.runs.Predictor``'s choice of precision and layout. The result is the median of ``runs`` timed passes after ``warmup``
    untimed ones. The passes of all models alternate, so that a load change on a shared machine
    slows every model alike instead of one.
    """
    prepared = {}
    for name, (model, size) in models.items():
        copy_ = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
        prepared[name] = (copy_, torch.randn(batch_size, 3, size, size))
    timings: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for round_ in range(warmup + runs):
            for name, (model, images) in prepared.items():
                started = time.perf_counter()
                model(images)
                if round_ >= warmup:
                    timings[name].append((time.perf_counter() - started) * 1000 / batch_size)
    return {name: statistics.median(values) for name, values in timings.items()}


def per_class_accuracy(evaluation: dict) -> dict[str, float]:
    """Return the accuracy on each class's validation images (its recall), from an evaluation dict."""
    return {label: scores["recall"] for label, scores in evaluation["per_class"].items()}


def agreement(logits: torch.Tensor, reference_logits: torch.Tensor) -> float:
    """Return the fraction of images whose top class is the same under both sets of logits."""
    if len(logits) == 0:
        return 0.0
    return (logits.argmax(1) == reference_logits.argmax(1)).float().mean().item()


def model_summary(model: nn.Module, evaluation: dict) -> dict:
    """Return the accuracy and size part of a comparison row (latency is measured for all rows at once)."""
    return {
        "val_accuracy": evaluation["accuracy"],
        "balanced_accuracy": evaluation["balanced_accuracy"],
        "val_loss": evaluation["loss"],
        "params": sum(p.numel() for p in model.parameters()),
        "size_mb": round(state_dict_mb(model), 3),
        "per_class_accuracy": per_class_accuracy(evaluation),
    }


def compare(run_dir: str | Path) -> list[dict]:
    """Return the comparison table of a finished distillation run, one row per model.

    Each row has ``role`` ("teacher", "student", "student_without_teacher"), ``label``, ``name``
    and the numbers stored in metrics.json: ``val_accuracy``, ``val_loss`` (mean cross-entropy), ``params``, ``size_mb``,
    ``latency_ms_batch1``, ``latency_ms_batch32`` (per image), ``per_class_accuracy`` and, for
    students, ``agreement`` with the teacher.
    """
    run = load_run(run_dir)
    if "teacher" not in run.metrics or "student" not in run.metrics:
        raise TlappError(
            f"{run.path} is not a finished distillation run: metrics.json has no teacher and student.",
            "Choose a run folder written by distill.",
        )
    agreements = {
        "student": run.metrics.get("agreement"),
        "student_without_teacher": run.metrics.get("agreement_without_teacher"),
    }
    rows = []
    for role, label in TABLE_ROWS:
        if role not in run.metrics:
            continue
        row = {"role": role, "label": label, **run.metrics[role]}
        if role in agreements:
            row["agreement"] = agreements[role]
        rows.append(row)
    return rows


def temperature_table(
    teacher_run: str | Path,
    image: str | Path | bytes | Image.Image,
    temperatures: Sequence[float] = TEMPERATURES,
) -> dict:
    """Return the teacher's class probabilities for one image at each temperature.

    The result has ``classes``, the raw ``logits``, ``temperatures`` and ``probabilities``: one
    row per temperature, softmax(logits / T), in the order of ``classes``. T = 1 is what the
    teacher predicts; higher temperatures show the ranking of the other classes that a student
    learns from.
    """
    predictor = load_predictor(teacher_run)
    if not isinstance(image, Image.Image):
        image = load_rgb(image, max_side=1024)
    batch = predictor.transform(image).unsqueeze(0)
    logits = predictor.logits(batch)[0]
    return {
        "classes": list(predictor.classes),
        "logits": logits.tolist(),
        "temperatures": list(temperatures),
        "probabilities": [soft_targets(logits, float(t)).tolist() for t in temperatures],
    }
