"""Benchmark: tlapp's cached-feature training against a plain loop, on real photos.

The plain loop is what the PyTorch transfer-learning tutorial does with a frozen backbone: every
epoch decodes every image and pushes it through the whole network, although only the head learns.
Both paths use the same backbone, preprocessing, head, optimizer, epochs and seed.

tlapp runs the frozen stages in bfloat16 where the CPU computes it natively (see
tlapp.backbones.frozen_dtype). To separate that from caching, the cached path also runs once in
float32, like the plain loop.

    python bench/bench_classification.py [DATA] [--backbone efficientnet_lite0] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlapp import backbones as bb  # noqa: E402
from tlapp.datasets import load_collection  # noqa: E402
from tlapp.backbones import PRECISION_VARIABLE, frozen_dtype  # noqa: E402
from tlapp.images import load_rgb  # noqa: E402
from tlapp.training import Classifier, TrainConfig, train  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "hymenoptera"


def plain_loop(data: Path, config: TrainConfig) -> tuple[float, float]:
    """Train the head the plain way; return (wall seconds, best validation accuracy)."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    collection = load_collection(data, val_fraction=config.val_fraction, seed=config.seed)
    spec = bb.get_spec(config.backbone)
    transform = spec.preprocessing.eval_transform()
    backbone = bb.create_backbone(config.backbone).eval().to(memory_format=torch.channels_last)
    bb.freeze_stages(backbone, spec.num_stages)
    model = Classifier(backbone, len(collection.classes), config.dropout)
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = -(-len(collection.train) // config.batch_size) * config.epochs
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    generator = torch.Generator().manual_seed(config.seed)

    def batches(samples, shuffle):
        order = torch.randperm(len(samples), generator=generator).tolist() if shuffle else range(len(samples))
        order = list(order)
        for start in range(0, len(order), config.batch_size):
            chosen = [samples[i] for i in order[start : start + config.batch_size]]
            images = torch.stack([transform(load_rgb(s.path, max_side=512)) for s in chosen])
            yield images.contiguous(memory_format=torch.channels_last), torch.tensor([s.label for s in chosen])

    best = 0.0
    for _ in range(config.epochs):
        model.head.train()
        for images, labels in batches(collection.train, shuffle=True):
            with torch.no_grad():
                features = backbone(images)
            loss = F.cross_entropy(model.head(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        correct = 0
        with torch.inference_mode():
            for images, labels in batches(collection.val, shuffle=False):
                correct += (model(images).argmax(1) == labels).sum().item()
        best = max(best, correct / len(collection.val))
    return time.perf_counter() - started, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--backbone", default=bb.DEFAULT_BACKBONE)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = TrainConfig(backbone=args.backbone, freeze="all", epochs=args.epochs, seed=args.seed)

    print(f"data {args.data}, backbone {args.backbone}, head only, {args.epochs} epochs, "
          f"{torch.get_num_threads()} threads, frozen stages in {str(frozen_dtype()).removeprefix('torch.')}")
    warm_up(args.data, config)

    cached_seconds, cached_accuracy = cached_path(args.data, config)
    print(f"tlapp, cached features:          {cached_seconds:7.1f} s   val accuracy {cached_accuracy:.3f}", flush=True)
    os.environ[PRECISION_VARIABLE] = "float32"
    float32_seconds, float32_accuracy = cached_path(args.data, config)
    del os.environ[PRECISION_VARIABLE]
    print(f"tlapp, cached features, float32: {float32_seconds:7.1f} s   val accuracy {float32_accuracy:.3f}", flush=True)

    plain_seconds, plain_accuracy = plain_loop(args.data, config)
    print(f"plain loop, float32:             {plain_seconds:7.1f} s   val accuracy {plain_accuracy:.3f}")
    print(f"speed-up {plain_seconds / cached_seconds:.1f}x, accuracy difference "
          f"{(cached_accuracy - plain_accuracy) * 100:+.1f} points; "
          f"caching alone (both float32): {plain_seconds / float32_seconds:.1f}x")


def cached_path(data: Path, config: TrainConfig) -> tuple[float, float]:
    """Train with tlapp's engine; return (train_seconds, validation accuracy)."""
    with tempfile.TemporaryDirectory() as run_dir:
        metrics = train(data, config, run_dir)
    return metrics["train_seconds"], metrics["val_accuracy"]


def warm_up(data: Path, config: TrainConfig) -> None:
    """Read every file and run the backbone once, untimed, so neither path pays for a cold start."""
    collection = load_collection(data, val_fraction=config.val_fraction, seed=config.seed)
    backbone = bb.create_backbone(config.backbone).eval()
    size = bb.get_spec(config.backbone).preprocessing.input_size
    with torch.inference_mode():
        backbone(torch.zeros(2, 3, size, size))
    print(f"warmed up on {len(collection.train) + len(collection.val)} images", flush=True)

if __name__ == "__main__":
    main()
