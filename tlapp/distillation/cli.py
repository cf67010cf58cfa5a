"""Command-line subcommands: ``distill``, ``students`` and ``temperatures``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    """Add the distillation subcommands to the ``python -m tlapp`` parser."""
    from tlapp.distillation.engine import DistillConfig
    from tlapp.distillation.students import DEFAULT_STUDENT

    defaults = DistillConfig()
    parser = subparsers.add_parser(
        "distill", help="train a small student to imitate a trained classification run (the teacher)"
    )
    parser.add_argument("teacher", type=Path, help="folder of the finished classification run to imitate")
    parser.add_argument("--student", default=DEFAULT_STUDENT, help=f"student name, see 'students' (default {DEFAULT_STUDENT})")
    parser.add_argument(
        "--temperature", type=float, default=defaults.temperature,
        help=f"softmax temperature of the teacher-matching term (default {defaults.temperature})",
    )
    parser.add_argument(
        "--alpha", type=float, default=defaults.alpha,
        help=f"weight of the label loss from 0 to 1; the teacher term gets 1 - alpha (default {defaults.alpha})",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"passes over the training images (default {defaults.epochs})")
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help=f"learning rate of the new layers (default {defaults.learning_rate})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"images per training step (default {defaults.batch_size})")
    parser.add_argument(
        "--views", type=int, default=defaults.views,
        help=f"views cached per training image: the centre crop plus random crops (default {defaults.views})",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="random seed of the views, the head and the batches")
    parser.add_argument("--data", type=Path, help="dataset folder or zip (default: the one in the teacher's run.json)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the comparison student trained on the labels alone")
    parser.add_argument(
        "--latency-runs", type=int, default=defaults.latency_runs,
        help=f"timed passes per CPU latency measurement; the median is reported (default {defaults.latency_runs})",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (created if missing)")
    parser.set_defaults(func=cmd_distill)

    students_parser = subparsers.add_parser("students", help="list the distillation students and whether they can be built here")
    students_parser.add_argument("--json", action="store_true", help="print JSON")
    students_parser.set_defaults(func=cmd_students)

    temperatures_parser = subparsers.add_parser(
        "temperatures", help="show a run's class probabilities for one image at several softmax temperatures"
    )
    temperatures_parser.add_argument("run", type=Path, help="classification run folder")
    temperatures_parser.add_argument("image", type=Path, help="image file")
    temperatures_parser.add_argument("--json", action="store_true", help="print JSON")
    temperatures_parser.set_defaults(func=cmd_temperatures)


def cmd_distill(args: argparse.Namespace) -> int:
    from tlapp.cli import print_event
    from tlapp.runs import check_new_run_dir
    from tlapp.distillation.engine import DistillConfig, run_distillation

    config = DistillConfig(
        teacher=str(args.teacher),
        student=args.student,
        temperature=args.temperature,
        alpha=args.alpha,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        views=args.views,
        seed=args.seed,
        baseline=not args.no_baseline,
        data=str(args.data) if args.data else "",
        latency_runs=args.latency_runs,
    )
    check_new_run_dir(args.out)
    metrics = run_distillation(args.teacher, config, args.out, on_event=print_event)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_students(args: argparse.Namespace) -> int:
    from tlapp.distillation.students import describe

    rows = describe()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'params':>10} {'input':>6}  available")
    for row in rows:
        available = "yes" if row["available"] else f"no: {row['unavailable_reason']}"
        print(f"{row['name']:<20} {row['params']:>10,} {row['input_size']:>6}  {available}")
        print(f"{'':<20} {row['description']}")
    return 0


def cmd_temperatures(args: argparse.Namespace) -> int:
    from tlapp.distillation.compare import temperature_table

    table = temperature_table(args.run, args.image)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    width = max(len(label) for label in table["classes"])
    print(f"{'T':>4}  " + "  ".join(f"{label:>{max(width, 6)}}" for label in table["classes"]), file=sys.stdout)
    for temperature, row in zip(table["temperatures"], table["probabilities"]):
        print(f"{temperature:>4}  " + "  ".join(f"{p:>{max(width, 6)}.1%}" for p in row))
    return 0
