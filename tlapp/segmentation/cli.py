"""Command-line group ``segment``: ``segment inspect | train | predict`` (registered by tlapp.cli)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from tlapp.errors import TlappError


def cmd_inspect(args: argparse.Namespace) -> int:
    from tlapp.segmentation.dataset import load_segmentation_data

    data = load_segmentation_data(
        args.data,
        val_fraction=args.val_fraction,
        seed=args.seed,
        trimap_border=args.trimap_border,
        drop_outline_masks=args.drop_outline_masks,
    )
    report = data.report
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    print(f"{report.num_pairs} image/mask pairs ({report.layout}): {report.split_counts['train']} for training, "
          f"{report.split_counts['val']} for validation")
    print(f"masks: {report.convention}")
    for name, pixels in report.class_pixels.items():
        print(f"  {name}: {pixels:,} pixels")
    for problem in report.problems:
        print(f"left out {problem['file']}: {problem['reason']}")
    for warning in report.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tlapp.cli import print_event
    from tlapp.runs import check_new_run_dir
    from tlapp.segmentation.training import SegmentationConfig, train

    config = SegmentationConfig(
        backbone=args.backbone,
        pretrained=not args.from_scratch,
        freeze=args.freeze,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        image_size=args.image_size,
        augment=args.augment,
        augment_views=args.views,
        seed=args.seed,
        val_fraction=args.val_fraction,
        trimap_border=args.trimap_border,
        drop_outline_masks=args.drop_outline_masks,
        class_names=args.class_names,
    )
    check_new_run_dir(args.out)
    metrics = train(args.data, config, args.out, on_event=print_event)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tlapp.segmentation.predict import load_segmenter

    segmenter = load_segmenter(args.run)
    args.out.mkdir(parents=True, exist_ok=True)
    failures = 0
    for path in args.images:
        try:
            picture = segmenter.load_image(path, str(path))
            mask = segmenter.predict(picture)
        except TlappError as error:
            failures += 1
            print(f"error: {error}", file=sys.stderr)
            continue
        mask_path = args.out / f"{path.stem}_mask.png"
        overlay_path = args.out / f"{path.stem}_overlay.png"
        # The mask PNG stores class indices (0 = background), so other tools read it back unchanged.
        Image.fromarray(mask, "L").save(mask_path)
        segmenter.overlay(picture, mask).save(overlay_path)
        shares = ", ".join(
            f"{name} {float((mask == index).mean()):.1%}" for index, name in enumerate(segmenter.classes)
        )
        print(f"{path}: {mask_path.name}, {overlay_path.name} ({shares})")
    return 2 if failures else 0


def _class_names(value: str) -> list[str]:
    return [name.strip() for name in value.split(",")]


def register(subparsers) -> None:
    """Add the ``segment`` command group to the tlapp command line."""
    from tlapp.cli import parse_freeze
    from tlapp.segmentation.model import SMP_ENCODERS
    from tlapp.segmentation.training import SegmentationConfig

    defaults = SegmentationConfig()
    parser = subparsers.add_parser("segment", help="segmentation: train a U-Net on image/mask pairs and predict masks")
    commands = parser.add_subparsers(dest="segment_command", required=True)

    def add_data_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("data", type=Path, help="folder or .zip with images/ and masks/ folders, or a CSV of pairs")
        command.add_argument("--seed", type=int, default=defaults.seed, help="random seed for the split, augmentation and training")
        command.add_argument(
            "--val-fraction", type=float, default=defaults.val_fraction,
            help=f"share of the pairs held out for validation (default {defaults.val_fraction})",
        )
        command.add_argument(
            "--trimap-border", choices=("object", "ignore"), default=defaults.trimap_border,
            help="class of the border value 3 in Oxford-style trimaps: object, or ignore to leave it unscored (default object)",
        )
        command.add_argument(
            "--drop-outline-masks", action="store_true",
            help="leave out pairs whose binary mask looks like an outline rather than a filled region",
        )

    inspect_parser = commands.add_parser("inspect", help="pair and check a segmentation dataset and report on it")
    add_data_options(inspect_parser)
    inspect_parser.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect_parser.set_defaults(func=cmd_inspect)

    train_parser = commands.add_parser("train", help="train a U-Net with a pretrained encoder")
    add_data_options(train_parser)
    train_parser.add_argument(
        "--backbone", default=defaults.backbone, choices=list(SMP_ENCODERS),
        help=f"registry backbone used as the encoder (default {defaults.backbone})",
    )
    train_parser.add_argument(
        "--freeze", type=parse_freeze, default=defaults.freeze,
        help="encoder stages that keep their pretrained weights: 'all' trains only the decoder, 0 fine-tunes everything",
    )
    train_parser.add_argument("--from-scratch", action="store_true", help="random initial encoder weights instead of ImageNet")
    train_parser.add_argument("--epochs", type=int, default=defaults.epochs, help=f"passes over the training images (default {defaults.epochs})")
    train_parser.add_argument("--lr", type=float, default=defaults.learning_rate, help=f"learning rate of the decoder (default {defaults.learning_rate})")
    train_parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help=f"images per training step (default {defaults.batch_size})")
    train_parser.add_argument(
        "--image-size", type=int, default=defaults.image_size,
        help=f"side in pixels of the square the images are resized to, rounded up to a multiple of 32 (default {defaults.image_size})",
    )
    train_parser.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=defaults.augment,
        help="train on random crops, flips and colour changes (default on)",
    )
    train_parser.add_argument(
        "--views", type=int, default=defaults.augment_views,
        help=f"augmented views cached per image when the encoder is frozen (default {defaults.augment_views})",
    )
    train_parser.add_argument("--class-names", type=_class_names, help="comma-separated class names, background first")
    train_parser.add_argument("--out", type=Path, required=True, help="run folder to write (created if missing)")
    train_parser.set_defaults(func=cmd_train)

    predict_parser = commands.add_parser("predict", help="predict masks with a trained segmentation run")
    predict_parser.add_argument("run", type=Path, help="run folder written by segment train")
    predict_parser.add_argument("images", type=Path, nargs="+", help="image files")
    predict_parser.add_argument(
        "--out", type=Path, required=True,
        help="folder for <name>_mask.png (class index per pixel) and <name>_overlay.png",
    )
    predict_parser.set_defaults(func=cmd_predict)
