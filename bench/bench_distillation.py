"""Benchmark: distil an EfficientNet-Lite2 teacher into a small student on ants vs bees, and compare.

Usage (from the repository root):

    python bench/bench_distillation.py [--teacher RUN_DIR] [--out FOLDER] [--data FOLDER]

The default data is ants vs bees (2 classes). For 37 classes, where the teacher's softened
probabilities carry more than the labels, pass the pets sample's breed folders:
--data ../shared/datasets/oxford_pets_sample/images (with another --out, as the teacher differs).

Without --teacher it first trains the teacher (Lite2, all stages frozen, 10 epochs). The
teacher labels the views of every training image once, with seed 0. Then, for each seed, the
same student is trained with the teacher and on the labels alone, once with all cached views and
once with the centre crop only. The seeds change the new layers' initial weights, the batch order
and which view each epoch draws, not the views themselves.

It prints accuracy (mean and range over the seeds), agreement with the teacher, parameters, file
size and CPU latency, checks the targets below, and writes FOLDER/bench.json.

Targets: the student has at least 4x fewer parameters and at least 2.5x lower latency at batch 1
than the teacher, and its mean distilled accuracy is within 6 points of the teacher's and above
the mean accuracy of the same student trained on the labels alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tlapp.distillation import DEFAULT_STUDENT, DistillConfig, measure_latency, state_dict_mb  # noqa: E402
from tlapp.distillation.engine import load_teacher, prepare, train_students  # noqa: E402
from tlapp.events import Done, Progress, Stopped  # noqa: E402
from tlapp.runs import build_model, load_run  # noqa: E402
from tlapp.training import TrainConfig, train  # noqa: E402

DATA = REPO.parent / "shared" / "datasets" / "hymenoptera"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="dataset with train/ and val/ folders")
    parser.add_argument("--teacher", type=Path, help="existing teacher run (default: train one into OUT/teacher)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_distillation"), help="folder for the runs")
    parser.add_argument("--student", default=DEFAULT_STUDENT, help=f"student name (default {DEFAULT_STUDENT})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--views", type=int, default=8, help="views cached per training image (default 8)")
    parser.add_argument("--epochs", type=int, default=DistillConfig.epochs, help="epochs per student")
    parser.add_argument("--temperature", type=float, default=DistillConfig.temperature)
    parser.add_argument("--alpha", type=float, default=DistillConfig.alpha)
    parser.add_argument("--latency-runs", type=int, default=10, help="timed passes per latency measurement")
    return parser.parse_args()


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_teacher(args: argparse.Namespace) -> Path:
    if args.teacher:
        return args.teacher
    run_dir = args.out / "teacher"
    if (run_dir / "model.pt").is_file():
        return run_dir
    log("training the teacher (efficientnet_lite2, all stages frozen)")
    started = time.perf_counter()
    train(args.data, TrainConfig(backbone="efficientnet_lite2", freeze="all", epochs=10), run_dir)
    log(f"  teacher trained in {time.perf_counter() - started:.0f} s")
    return run_dir


def run_events(events) -> object:
    """Drain a generator of events, logging stage ends; return its return value or the final metrics."""
    while True:
        try:
            event = next(events)
        except StopIteration as finished:
            return finished.value
        if isinstance(event, Progress) and event.done == event.total and event.stage in ("teacher", "features"):
            log(f"  {event.message}: done at {event.elapsed:.0f} s")
        if isinstance(event, (Done, Stopped)):
            return event.metrics


def summarise(values: list[float]) -> dict:
    return {
        "mean": statistics.mean(values),
        "min": min(values),
        "max": max(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def loss_range(summary: dict) -> str:
    return f"{summary['mean']:.3f} ({summary['min']:.3f}-{summary['max']:.3f})"


def percent(summary: dict) -> str:
    return f"{summary['mean']:.1%} ({summary['min']:.1%}-{summary['max']:.1%})"


def train_all(prepared, config: DistillConfig, args: argparse.Namespace) -> tuple[dict, dict]:
    """Train both students for every seed, with all views and with the centre crop only.

    Returns the accuracy values per setting ("views8", "views1"), keyed by series, and the
    teacher's per-class accuracy.
    """
    results: dict[str, dict[str, list[float]]] = {}
    teacher_per_class: dict[str, float] = {}
    for views in sorted({args.views, 1}, reverse=True):
        for seed in args.seeds:
            run_config = replace(config, seed=seed, views=views)
            metrics = run_events(train_students(prepared, run_config, args.out / f"views{views}_seed{seed}"))
            values = [
                ("distilled", metrics["student"]["val_accuracy"]),
                ("labels_only", metrics["student_without_teacher"]["val_accuracy"]),
                ("agreement", metrics["agreement"]),
                ("agreement_labels_only", metrics["agreement_without_teacher"]),
                ("distilled_loss", metrics["student"]["val_loss"]),
                ("labels_only_loss", metrics["student_without_teacher"]["val_loss"]),
            ]
            for role, prefix in (("student", "distilled"), ("student_without_teacher", "labels_only")):
                values += [(f"{prefix} {label}", value) for label, value in metrics[role]["per_class_accuracy"].items()]
            for key, value in values:
                results.setdefault(f"views{views}", {}).setdefault(key, []).append(value)
            teacher_per_class = metrics["teacher"]["per_class_accuracy"]
            log(
                f"  views {views} seed {seed}: distilled {metrics['student']['val_accuracy']:.1%}, "
                f"labels only {metrics['student_without_teacher']['val_accuracy']:.1%}"
            )
    return results, teacher_per_class


def measure_models(teacher_dir: Path, student_dir: Path, runs: int) -> dict[str, dict]:
    """Return parameters, state-dict size and CPU latency of the teacher and a saved student, timed together."""
    teacher_run, teacher_model = load_teacher(teacher_dir)
    student_run = load_run(student_dir)
    student_model = build_model(student_run.info)
    student_model.load_state_dict(torch.load(student_run.path / "model.pt", weights_only=True))
    models = {
        "teacher": (teacher_model, teacher_run.info["preprocessing"]["input_size"]),
        "student": (student_model, student_run.info["preprocessing"]["input_size"]),
    }
    latency = {size: measure_latency(models, size, runs=runs) for size in (1, 32)}
    return {
        role: {
            "params": sum(p.numel() for p in model.parameters()),
            "size_mb": state_dict_mb(model),
            "latency_ms_batch1": latency[1][role],
            "latency_ms_batch32": latency[32][role],
        }
        for role, (model, _) in models.items()
    }


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    teacher_dir = ensure_teacher(args)
    teacher_seconds = time.perf_counter() - started

    config = DistillConfig(
        teacher=str(teacher_dir), student=args.student, temperature=args.temperature, alpha=args.alpha,
        epochs=args.epochs, views=args.views, data=str(args.data), latency_runs=0,
    )
    log(f"labelling {args.views} views of each training image with the teacher")
    prepare_started = time.perf_counter()
    prepared = run_events(prepare(teacher_dir, config))
    prepare_seconds = time.perf_counter() - prepare_started

    train_started = time.perf_counter()
    results, teacher_per_class = train_all(prepared, config, args)
    train_seconds = time.perf_counter() - train_started

    # The last distilled student with all views stands for the student's size and speed.
    measured = measure_models(teacher_dir, args.out / f"views{args.views}_seed{args.seeds[-1]}", args.latency_runs)
    teacher_run = load_run(teacher_dir)
    report = {
        "teacher": {
            "backbone": teacher_run.info.get("backbone"),
            "input_size": teacher_run.info["preprocessing"]["input_size"],
            "val_accuracy": teacher_run.metrics["val_accuracy"],
            "per_class_accuracy": teacher_per_class,
            **measured["teacher"],
        },
        "student": {"name": args.student, **measured["student"]},
        "accuracy": {name: {key: summarise(values) for key, values in series.items()} for name, series in results.items()},
        "seeds": args.seeds,
        "config": {**config.to_dict(), "latency_runs": args.latency_runs},
        "torch_threads": torch.get_num_threads(),
        # Other processes on a shared machine slow every timing; the 1-minute load average shows how much.
        "load_average_at_end": os.getloadavg()[0],
        "load_average_at_start": load_at_start,
        "seconds": {"teacher": teacher_seconds, "prepare": prepare_seconds, "train": train_seconds, "total": time.perf_counter() - started},
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2))
    print_report(report, args)
    return 0 if all(passed for _, passed in targets(report, args)) else 1


def targets(report: dict, args: argparse.Namespace) -> list[tuple[str, bool]]:
    teacher, student = report["teacher"], report["student"]
    main_views = report["accuracy"][f"views{args.views}"]
    distilled, labels_only = main_views["distilled"]["mean"], main_views["labels_only"]["mean"]
    return [
        (f"parameters {teacher['params'] / student['params']:.1f}x fewer (>= 4x)", teacher["params"] >= 4 * student["params"]),
        (
            f"latency at batch 1 {teacher['latency_ms_batch1'] / student['latency_ms_batch1']:.1f}x lower (>= 2.5x)",
            teacher["latency_ms_batch1"] >= 2.5 * student["latency_ms_batch1"],
        ),
        (
            f"distilled accuracy {(teacher['val_accuracy'] - distilled) * 100:.1f} points below the teacher (<= 6)",
            teacher["val_accuracy"] - distilled <= 0.06,
        ),
        (f"distilled {distilled:.1%} above labels only {labels_only:.1%}", distilled > labels_only),
    ]


def print_report(report: dict, args: argparse.Namespace) -> None:
    teacher, student = report["teacher"], report["student"]
    print(f"teacher run: {args.teacher or args.out / 'teacher'}; student: {student['name']}; seeds {report['seeds']}")

    print(f"{'model':<34} {'val accuracy':>22} {'agreement':>22} {'params':>10} {'MB':>6} {'ms b1':>7} {'ms/img b32':>10}")
    name = f"teacher ({teacher['backbone']}, {teacher['input_size']} px)"
    print(
        f"{name:<34} {teacher['val_accuracy']:>22.1%} {'':>22} {teacher['params']:>10,} "
        f"{teacher['size_mb']:>6.2f} {teacher['latency_ms_batch1']:>7.1f} {teacher['latency_ms_batch32']:>10.1f}"
    )
    for views in sorted(report["accuracy"], key=lambda name: -int(name[5:])):
        series = report["accuracy"][views]
        for key, label, agreement_key in (
            ("distilled", "distilled", "agreement"),
            ("labels_only", "labels only", "agreement_labels_only"),
        ):
            name = f"student, {label}, {views[5:]} view(s)"
            print(
                f"{name:<34} {percent(series[key]):>22} {percent(series[agreement_key]):>22} {student['params']:>10,} "
                f"{student['size_mb']:>6.2f} {student['latency_ms_batch1']:>7.1f} {student['latency_ms_batch32']:>10.1f}"
            )

    print("validation loss, mean cross-entropy (mean over seeds, range):")
    for views in sorted(report["accuracy"], key=lambda name: -int(name[5:])):
        series = report["accuracy"][views]
        losses = [f"{label} {loss_range(series[key])}" for key, label in (("distilled_loss", "distilled"), ("labels_only_loss", "labels only"))]
        print(f"  {views[5:]} view(s): " + ", ".join(losses))

    print("per-class accuracy (mean over seeds):")
    main_views = report["accuracy"][f"views{args.views}"]
    for label, accuracy in teacher["per_class_accuracy"].items():
        distilled = main_views[f"distilled {label}"]["mean"]
        labels_only = main_views[f"labels_only {label}"]["mean"]
        print(f"  {label:<12} teacher {accuracy:.1%}, distilled {distilled:.1%}, labels only {labels_only:.1%}")

    seconds = report["seconds"]
    print(
        f"time: teacher training {seconds['teacher']:.0f} s, teacher views {seconds['prepare']:.0f} s, student training {seconds['train']:.0f} s, "
        f"total {seconds['total']:.0f} s; torch threads {report['torch_threads']}, 1-minute load average "
        f"{report['load_average_at_start']:.1f} at the start and {report['load_average_at_end']:.1f} at the end"
    )
    for text, passed in targets(report, args):
        print(f"{'PASS' if passed else 'FAIL'}  {text}")


if __name__ == "__main__":
    sys.exit(main())
