"""The command line: ``python -m tlapp inspect | train | predict | backbones | segment | distill``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from tlapp.errors import TlappError

log = logging.getLogger(__name__)

# Modules that add their own subcommands through register(subparsers).
COMMAND_MODULES = ("tlapp.segmentation.cli", "tlapp.distillation")


def parse_freeze(value: str) -> int | str:
    """Accept "all" or a stage count."""
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of stages or 'all', got '{value}'") from None


def positive_int(value: str) -> int:
    """Accept a whole number of at least 1."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{value}'")
    return number


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Add the options every training command shares, with the classifier's defaults."""
    from tlapp.training import TrainConfig

    defaults = TrainConfig()
    parser.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"passes over the training images (default {defaults.epochs})"
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.learning_rate,
        help=f"learning rate of the new head; fine-tuned stages get a tenth (default {defaults.learning_rate})",
    )
    parser.add_argument(
        "--batch-size", type=int, default=defaults.batch_size,
        help=f"images per training step (default {defaults.batch_size})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed for the split, augmentation and training")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="share of each class held out for validation when the data has no val/ folder (default 0.2)",
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder to write (created if missing)")


def print_event(event) -> None:
    """Print one training event as a human-readable line on stderr."""
    if event.kind == "message":
        prefix = "warning: " if event.level == "warning" else ""
        print(f"{prefix}{event.text}", file=sys.stderr)
    elif event.kind == "progress":
        eta = f", about {event.eta:.0f} s left" if event.eta else ""
        print(f"  {event.message or event.stage}: {event.done}/{event.total}{eta}", file=sys.stderr)
    elif event.kind == "epoch":
        series = f"[{event.series}] " if event.series else ""
        extra = "".join(f" {key} {value:.3f}" for key, value in event.extra.items() if isinstance(value, float))
        print(
            f"{series}epoch {event.epoch}/{event.epochs}: train loss {event.train_loss:.3f} "
            f"acc {event.train_accuracy:.3f} | val loss {event.val_loss:.3f} acc {event.val_accuracy:.3f}"
            f"{extra}{' (best)' if event.best else ''}",
            file=sys.stderr,
        )
    elif event.kind == "stopped":
        print("stopped", file=sys.stderr)


def cmd_inspect(args: argparse.Namespace) -> int:
    from tlapp.datasets import DatasetError, inspect

    try:
        report = inspect(args.data, val_fraction=args.val_fraction, seed=args.seed)
    except DatasetError as error:
        if args.json and getattr(error, "report", None) is not None:
            print(json.dumps(error.report.to_dict(), indent=2))
        raise
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.num_images} images in {len(report.classes)} classes ({report.split} split)")
    for label, count in report.classes.items():
        print(f"  {label}: {count}")
    for skipped in report.skipped:
        print(f"skipped {skipped['file']}: {skipped['reason']}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tlapp.runs import check_new_run_dir
    from tlapp.training import TrainConfig, train

    config = TrainConfig(
        backbone=args.backbone,
        pretrained=not args.from_scratch,
        freeze=args.freeze,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        augment=args.augment,
        augment_views=args.views,
        seed=args.seed,
        val_fraction=args.val_fraction,
    )
    check_new_run_dir(args.out)
    metrics = train(args.data, config, args.out, on_event=print_event)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tlapp.runs import load_predictor

    predictor = load_predictor(args.run)
    results, failures = [], 0
    for image in args.images:
        try:
            top = predictor.predict([image], names=[str(image)], top=args.top)[0]
        except TlappError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            results.append({"image": str(image), "error": str(error)})
            continue
        results.append({"image": str(image), "top": [{"label": label, "probability": p} for label, p in top]})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            if "top" in result:
                ranked = ", ".join(f"{item['label']} {item['probability']:.1%}" for item in result["top"])
                print(f"{result['image']}: {ranked}")
    return 2 if failures else 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from tlapp.backbones import REGISTRY

    rows = [
        {
            "name": spec.name,
            "params": spec.num_params,
            "input_size": spec.preprocessing.input_size,
            "stages": spec.num_stages,
            "weights": spec.weights.status(),
            "description": spec.description,
        }
        for spec in REGISTRY.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'params':>12} {'input':>6} {'stages':>6}  weights")
    for row in rows:
        print(
            f"{row['name']:<20} {row['params']:>12,} {row['input_size']:>6} {row['stages']:>6}  "
            f"{row['weights']:<9} {row['description']}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tlapp.backbones import DEFAULT_BACKBONE

    parser = argparse.ArgumentParser(prog="python -m tlapp", description="Transfer learning on images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log engine details")
    commands = parser.add_subparsers(dest="command", required=True)

    inspect_parser = commands.add_parser("inspect", help="check a labelled image folder or zip and report on it")
    inspect_parser.add_argument("data", type=Path, help="folder or .zip with one folder per class")
    inspect_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect_parser.add_argument("--val-fraction", type=float, default=0.2, help="validation share (default 0.2)")
    inspect_parser.add_argument("--seed", type=int, default=0, help="random seed of the split")
    inspect_parser.set_defaults(func=cmd_inspect)

    train_parser = commands.add_parser("train", help="train a classifier on a labelled image collection")
    train_parser.add_argument("data", type=Path, help="folder or .zip with one folder per class")
    train_parser.add_argument("--backbone", default=DEFAULT_BACKBONE, help=f"registry name (default {DEFAULT_BACKBONE})")
    train_parser.add_argument(
        "--freeze", type=parse_freeze, default="all",
        help="stages that keep their pretrained weights: 0 fine-tunes everything, 'all' trains only the head",
    )
    train_parser.add_argument("--from-scratch", action="store_true", help="random initial weights instead of ImageNet")
    train_parser.add_argument("--augment", action="store_true", help="train on random crops, flips and colour changes")
    train_parser.add_argument("--views", type=int, default=4, help="augmented views cached per image (default 4)")
    add_training_options(train_parser)
    train_parser.set_defaults(func=cmd_train)

    predict_parser = commands.add_parser(
        "predict", help="classify images with a trained run",
        description="Classify images. Exit status 2 when any image could not be read; the others are still printed.",
    )
    predict_parser.add_argument("run", type=Path, help="run folder written by train")
    predict_parser.add_argument("images", type=Path, nargs="+", help="image files")
    predict_parser.add_argument("--top", type=positive_int, default=3, help="how many classes to show per image (default 3)")
    predict_parser.add_argument("--json", action="store_true", help="print JSON")
    predict_parser.set_defaults(func=cmd_predict)

    backbones_parser = commands.add_parser("backbones", help="list the backbones and whether their weights are here")
    backbones_parser.add_argument("--json", action="store_true", help="print JSON")
    backbones_parser.set_defaults(func=cmd_backbones)

    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
            module.register(commands)
        except (ImportError, AttributeError) as error:
            # A broken optional part must not take inspect, train and predict down with it.
            log.warning("commands of %s are unavailable: %s", module_name, error)
            print(f"warning: commands of {module_name} are unavailable: {error}", file=sys.stderr)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (2 for problems the user can fix)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except TlappError as error:
        print(f"error: {error.message}", file=sys.stderr)
        if error.hint:
            print(error.hint, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
