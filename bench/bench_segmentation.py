"""Benchmark: a U-Net with a frozen, partly frozen or fine-tuned pretrained encoder, or one from scratch.

All variants use the same data split, input size, decoder, epochs, batch size, learning rate and
seed. Only the encoder's starting weights and the trained stages differ. The outputs of frozen
stages are computed once per image and augmented view and cached, so the frozen variant's epochs
run the decoder only and the partly frozen one's the upper blocks too. The fine-tuned and
from-scratch variants run the whole network on every batch.

Masks that look like outlines rather than filled regions (about 110 of the 370 in the pets
sample) are left out unless --keep-outline-masks is given, because no model can match them.

    python bench/bench_segmentation.py [DATA] [--epochs 6] [--image-size 192] [--variants frozen,fine-tuned,scratch]

Prints one table row per variant and writes the rows as JSON to --json when given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that wait by sleeping instead of spinning. On a CPU shared with other processes
# spinning threads take the cores the working threads need: on the 2-core development machine
# under a load average of 4-6, a training step of the frozen-encoder U-Net ran 4 times faster so.
# OpenMP reads the variable when torch loads it, so it must be set before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlapp.segmentation.dataset import load_segmentation_data  # noqa: E402
from tlapp.segmentation.training import SegmentationConfig, train  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "oxford_pets_sample"

# Variant name -> the settings that differ from the shared ones.
VARIANTS = {
    "frozen": {"pretrained": True, "freeze": "all"},
    # EfficientNet-Lite stages 0-4 (stem to block4) frozen and cached; blocks 5-7 train.
    "partly-frozen": {"pretrained": True, "freeze": 5},
    "fine-tuned": {"pretrained": True, "freeze": 0},
    "scratch": {"pretrained": False, "freeze": 0},
}


def run_variant(data: Path, name: str, shared: dict) -> dict:
    """Train one variant in a temporary run folder; return its table row."""
    config = SegmentationConfig(**shared, **VARIANTS[name])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlapp-bench-seg-") as run_dir:
        metrics = train(data, config, run_dir)
    wall = time.perf_counter() - started
    return {
        "variant": name,
        "val_iou": metrics["val_iou"],
        "val_dice": metrics["val_dice"],
        "val_mean_iou_all_classes": metrics["val_mean_iou_all_classes"],
        "best_epoch": metrics["best_epoch"],
        "trainable_params": metrics["trainable_params"],
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, nargs="?", default=DEFAULT_DATA, help="segmentation dataset (default: the pets sample)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs of every variant (default 6)")
    parser.add_argument("--image-size", type=int, default=192, help="network input side in pixels (default 192)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (default 8)")
    parser.add_argument("--views", type=int, default=3, help="augmented views cached for the frozen encoder (default 3)")
    parser.add_argument("--keep-outline-masks", action="store_true", help="train and score on outline-like masks too")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split, augmentation and training (default 0)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()

    shared = {
        "epochs": args.epochs,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "augment": True,
        "augment_views": args.views,
        "seed": args.seed,
        "drop_outline_masks": not args.keep_outline_masks,
    }
    data = load_segmentation_data(args.data, seed=args.seed, drop_outline_masks=not args.keep_outline_masks)
    print(
        f"{args.data.name}: {len(data.train)} training / {len(data.val)} validation pairs; "
        f"{args.epochs} epochs at {args.image_size}x{args.image_size}, seed {args.seed}; "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}), "
        f"{os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at start",
        flush=True,
    )
    rows = []
    print(f"{'variant':<12} {'val IoU':>8} {'val Dice':>9} {'mIoU all':>9} {'best ep':>8} {'trainable':>11} {'wall s':>8}", flush=True)
    for name in args.variants.split(","):
        row = run_variant(args.data, name, shared)
        rows.append(row)
        print(
            f"{name:<12} {row['val_iou']:>8.3f} {row['val_dice']:>9.3f} {row['val_mean_iou_all_classes']:>9.3f} "
            f"{row['best_epoch']:>8} {row['trainable_params']:>11,} {row['wall_seconds']:>8.1f}",
            flush=True,
        )
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
