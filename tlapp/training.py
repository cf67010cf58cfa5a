"""Training a classifier by transfer learning: cache the frozen part, train the rest, keep the best.

``train_classifier`` is a generator of ``tlapp.events``; the CLI prints them, the app's job runner
stores them for the pages, and tests assert on them.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tlapp import backbones as bb
from tlapp.datasets import ImageCollection, load_collection
from tlapp.errors import TlappError
from tlapp.evaluation import evaluate_predictions
from tlapp.events import PROGRESS_INTERVAL, Clock, Done, EpochEnd, Event, Message, Progress, StopRequested, Stopped, to_dict
from tlapp.features import MAX_CACHE_BYTES, FeatureCache, boundary_shape, cache_bytes, iter_decode, iter_features
from tlapp.runs import save_run_files, write_config

log = logging.getLogger(__name__)

# Pretrained stages that are fine-tuned learn this much slower than the new head, so the first
# epochs of a randomly initialised head do not wreck the ImageNet features.
BACKBONE_LR_FACTOR = 0.1


# Costs the time estimate does not measure, from hymenoptera (photos of about 500 x 375 pixels,
# Lite0, 2 cores): reading a photo at ingestion and again for training, resizing and cropping one
# view, and building the model. Larger photos take longer, so these are estimates.
READ_MS_PER_IMAGE = 3.0
PREPARE_MS_PER_VIEW = 3.0
SETUP_SECONDS = 0.5


@dataclass
class TrainConfig:
    """Settings of one classification run."""

    backbone: str = bb.DEFAULT_BACKBONE
    """Registry name of the pretrained network."""
    pretrained: bool = True
    """Start from ImageNet weights; False trains from random initialisation, for comparison."""
    freeze: int | str = "all"
    """How many stages keep their pretrained weights: 0 fine-tunes everything, "all" trains only the head."""
    epochs: int = 10
    learning_rate: float = 3e-3
    """Learning rate of the head; fine-tuned backbone stages use a tenth of it."""
    batch_size: int = 16
    augment: bool = False
    """Train on random crops, flips and colour changes of each image."""
    augment_views: int = 4
    """Augmented views cached per image when ``augment`` is on; each epoch draws one per image."""
    seed: int = 0
    val_fraction: float = 0.2
    """Share of each class held out for validation when the data has no val/ folder."""
    weight_decay: float = 1e-4
    dropout: float = 0.2

    def validate(self) -> None:
        """Raise one TlappError that lists every invalid setting."""
        problems = []
        if self.backbone not in bb.REGISTRY:
            problems.append(f"unknown backbone '{self.backbone}' (choose one of {', '.join(bb.REGISTRY)})")
        else:
            try:
                bb.resolve_freeze(bb.REGISTRY[self.backbone], self.freeze)
            except TlappError as error:
                problems.append(str(error).rstrip("."))
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning rate must be between 0 and 1, got {self.learning_rate}")
        if not 1 <= self.batch_size <= 1024:
            problems.append(f"batch size must be between 1 and 1024, got {self.batch_size}")
        if not 1 <= self.augment_views <= 32:
            problems.append(f"augmented views must be between 1 and 32, got {self.augment_views}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"validation fraction must be between 0 and 1, got {self.val_fraction}")
        if problems:
            raise TlappError("Invalid training settings: " + "; ".join(problems) + ".", "Fix them and start again.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


class Classifier(nn.Module):
    """A backbone with a new head: dropout and one linear layer on the pooled features."""

    def __init__(self, backbone: bb.Backbone, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(backbone.num_features, num_classes))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def forward_from(self, activations: torch.Tensor, start: int) -> torch.Tensor:
        """Finish the forward pass from activations taken after ``start`` stages."""
        if start == len(self.backbone.stages):
            return self.head(activations)  # already pooled
        x = self.backbone.forward_stages(activations.float(), start)
        return self.head(self.backbone.pool(x))


def build_classifier(config: TrainConfig, num_classes: int, progress=None) -> tuple[Classifier, int]:
    """Build the classifier with its first stages frozen; return it and the frozen stage count."""
    spec = bb.get_spec(config.backbone)
    frozen = bb.resolve_freeze(spec, config.freeze)
    backbone = bb.create_backbone(config.backbone, pretrained=config.pretrained, progress=progress)
    bb.freeze_stages(backbone, frozen)
    return Classifier(backbone, num_classes, config.dropout), frozen


def estimate_train_seconds(
    backbone: str, freeze: int | str, num_images: int, epochs: int, augment: bool = False, views: int = 4
) -> float:
    """Estimate a run's wall time from this machine's measured per-stage forward times.

    Every photo is read twice (checked at ingestion, decoded for training), and each view is
    resized and cropped once. Caching runs the frozen stages once per view, and each epoch runs
    the trainable stages forward and backward (about three forward passes). The head is ignored.
    """
    spec = bb.get_spec(backbone)
    frozen = bb.resolve_freeze(spec, freeze)
    frozen_ms = sum(bb.measure_stage_ms(backbone, frozen=True)[:frozen])
    trainable_ms = sum(bb.measure_stage_ms(backbone)[frozen:])
    num_views = views if augment else 1
    reading = num_images * (READ_MS_PER_IMAGE + num_views * PREPARE_MS_PER_VIEW)
    caching = num_images * num_views * frozen_ms
    per_epoch = num_images * 3 * trainable_ms
    return SETUP_SECONDS + (reading + caching + epochs * per_epoch) / 1000


def _make_optimizer(model: Classifier, frozen: int, config: TrainConfig) -> torch.optim.Optimizer:
    backbone_params = [p for p in model.backbone.parameters() if p.requires_grad]
    groups = [{"params": list(model.head.parameters()), "lr": config.learning_rate}]
    if backbone_params:
        factor = BACKBONE_LR_FACTOR if config.pretrained else 1.0
        groups.append({"params": backbone_params, "lr": config.learning_rate * factor})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _train_epoch(
    model: Classifier,
    cache: FeatureCache,
    labels: torch.Tensor,
    frozen: int,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batch_size: int,
    generator: torch.Generator,
    stop: threading.Event | None,
) -> Generator[tuple[int, int], None, tuple[float, float]]:
    """Run one epoch over the cached activations.

    Yields (images seen, images in the epoch) after each batch and returns (mean loss, accuracy).
    Raises StopRequested between batches once ``stop`` is set.
    """
    num_images = cache.num_images
    order = torch.randperm(num_images, generator=generator)
    view_choice = torch.randint(len(cache.views), (num_images,), generator=generator)
    # A batch of one image breaks BatchNorm in train mode, so a lone last image waits for the next epoch.
    usable = num_images - 1 if num_images % batch_size == 1 and num_images > 1 else num_images

    model.train()
    bb.set_train_mode(model.backbone, frozen)
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, usable, batch_size):
        if stop is not None and stop.is_set():
            raise StopRequested
        index = order[start : min(start + batch_size, usable)]
        batch = torch.stack([cache.views[view_choice[i]][i] for i in index.tolist()])
        target = labels[index]
        logits = model.forward_from(batch, cache.boundary)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(1) == target).sum().item()
        seen += len(index)
        yield seen, usable
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.inference_mode()
def predict_cached(model: Classifier, cache: FeatureCache, batch_size: int = 64) -> torch.Tensor:
    """Return logits for the first view of every cached image."""
    model.eval()
    activations = cache.views[0]
    return torch.cat(
        [model.forward_from(activations[i : i + batch_size], cache.boundary) for i in range(0, len(activations), batch_size)]
    )


def _trainable_state(model: Classifier, frozen: int) -> dict[str, torch.Tensor]:
    """Copy the parameters and buffers that training can change: all but the frozen stages'."""
    frozen_prefixes = tuple(f"backbone.stages.{index}." for index in range(frozen))
    return {
        key: value.detach().clone()
        for key, value in model.state_dict().items()
        if not key.startswith(frozen_prefixes)
    }


def skipped_summary(skipped: list[dict], named_count: int = 3) -> str:
    """Return one sentence naming the first ``named_count`` skipped files with their reasons."""
    count = len(skipped)
    files = "file that is not a usable image" if count == 1 else "files that are not usable images"
    named = "; ".join(f"{entry['file']} ({entry['reason']})" for entry in skipped[:named_count])
    more = f"; and {count - named_count} more, listed in the dataset report" if count > named_count else ""
    return f"Skipped {count} {files}: {named}{more}."


def _dataset_messages(collection: ImageCollection) -> Iterator[Message]:
    report = collection.report
    yield Message(
        f"{report.num_images} images in {len(collection.classes)} classes: "
        f"{len(collection.train)} for training, {len(collection.val)} for validation ({report.split} split)."
    )
    if report.skipped:
        yield Message(skipped_summary(report.skipped), "warning")
    for warning in report.warnings:
        yield Message(warning, "warning")


def _report(steps: Generator[int, None, object], stage: str, total: int, clock: Clock, message: str):
    """Turn a generator of done-counts into Progress events at most every second; return its value."""
    started = clock.elapsed
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            yield Progress(stage, total, total, clock.elapsed, eta=0.0, message=message)
            return finished.value
        if done < total and clock.due():
            rate = (clock.elapsed - started) / max(done, 1)
            yield Progress(stage, done, total, clock.elapsed, eta=rate * (total - done), message=message)


def train_classifier(
    data: str | Path | ImageCollection,
    config: TrainConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Train a classifier, yielding events; every event is also appended to ``run_dir/events.jsonl``."""
    run_dir = Path(run_dir)
    config.validate()  # before anything is written, so invalid settings leave no run folder behind
    write_config(run_dir, config.to_dict())
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as log_file:
        for event in _train_steps(data, config, run_dir, stop):
            log_file.write(json.dumps(to_dict(event)) + "\n")
            log_file.flush()
            yield event


def _train_steps(
    data: str | Path | ImageCollection, config: TrainConfig, run_dir: Path, stop: threading.Event | None
) -> Iterator[Event]:
    clock = Clock()
    config.validate()
    torch.manual_seed(config.seed)

    # Ingestion: every file decoded once, bad files reported, split made.
    collection = data if isinstance(data, ImageCollection) else load_collection(
        data, val_fraction=config.val_fraction, seed=config.seed
    )
    yield from _dataset_messages(collection)
    spec = bb.get_spec(config.backbone)
    if not config.pretrained:
        yield Message(f"{spec.name} starts from random weights: expect much lower accuracy than pretrained.", "warning")

    # Model: building it may download weights, so it runs in a thread while progress is reported.
    latest: list[Progress] = []

    def on_download(done: int, total: int) -> None:
        latest[:] = [Progress("download", done, total, clock.elapsed, message=f"downloading {spec.weights.filename}")]

    with ThreadPoolExecutor(max_workers=1) as pool:
        building = pool.submit(build_classifier, config, len(collection.classes), on_download)
        while not wait([building], timeout=PROGRESS_INTERVAL).done:
            yield from latest
        model, frozen = building.result()
    trainable, total = bb.count_params(model)
    precision = "in bfloat16, which this CPU computes natively" if bb.frozen_dtype() == torch.bfloat16 else "in float32"
    yield Message(
        f"{spec.name}: {frozen} of {spec.num_stages} stages frozen (they run {precision}); "
        f"training {trainable:,} of {total:,} parameters."
    )
    num_views = config.augment_views if config.augment else 1
    boundary = frozen
    shape = boundary_shape(model.backbone, boundary, spec.preprocessing.input_size)
    needed = cache_bytes(shape, len(collection.train), num_views) + cache_bytes(shape, len(collection.val), 1)
    if needed > MAX_CACHE_BYTES:
        # NOTE: too big to keep in memory, so cache the preprocessed images and rerun frozen stages per epoch.
        yield Message(
            f"The activations of {frozen} frozen stages would need {needed / 1024**3:.1f} GB; "
            "caching images instead, so every epoch also runs the frozen stages (slower). "
            "Freeze more stages or turn augmentation views down to speed this up.",
            "warning",
        )
        boundary = 0

    # Decode every image once, then run the frozen stages once per image (and augmented view).
    train_paths = [sample.path for sample in collection.train] + [sample.path for sample in collection.val]
    names = [sample.relpath for sample in collection.train] + [sample.relpath for sample in collection.val]
    decoding = iter_decode(train_paths, names)
    images = yield from _report(decoding, "decode", len(names), clock, "decoding images")
    train_images, val_images = images[: len(collection.train)], images[len(collection.train) :]

    if config.augment:
        train_transforms = [spec.preprocessing.train_transform()] * num_views
    else:
        train_transforms = [spec.preprocessing.eval_transform()]
    what = f"computing features of {boundary} frozen stages"
    try:
        train_cache = yield from _report(
            iter_features(model.backbone, boundary, train_images, train_transforms, seed=config.seed, stop=stop),
            "features", len(train_images) * num_views, clock, what,
        )
        val_cache = yield from _report(
            iter_features(model.backbone, boundary, val_images, [spec.preprocessing.eval_transform()], stop=stop),
            "features", len(val_images), clock, what + " (validation images)",
        )
    except StopRequested:
        yield Stopped(str(run_dir), None)
        return
    del images, train_images, val_images

    yield from _fit(model, frozen, train_cache, val_cache, collection, config, run_dir, clock, stop)


def _fit(
    model: Classifier,
    frozen: int,
    train_cache: FeatureCache,
    val_cache: FeatureCache,
    collection: ImageCollection,
    config: TrainConfig,
    run_dir: Path,
    clock: Clock,
    stop: threading.Event | None,
) -> Iterator[Event]:
    """Train the unfrozen part for ``config.epochs`` epochs, then evaluate and save the best epoch."""
    train_labels = torch.tensor([s.label for s in collection.train])
    val_labels = torch.tensor([s.label for s in collection.val])
    optimizer = _make_optimizer(model, frozen, config)
    steps_per_epoch = math.ceil(train_cache.num_images / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * config.epochs))
    generator = torch.Generator().manual_seed(config.seed)

    history: list[dict] = []
    best_state, best_key, best_epoch = None, None, 0
    fit_started = clock.elapsed
    stopped = False
    for epoch in range(1, config.epochs + 1):
        epoch_run = _train_epoch(
            model, train_cache, train_labels, frozen, optimizer, scheduler, config.batch_size, generator, stop
        )
        try:
            while True:
                seen, count = next(epoch_run)
                if clock.due():
                    # Average over every epoch so far, so one slow batch does not swing the estimate.
                    done = (epoch - 1) * count + seen
                    remaining = (clock.elapsed - fit_started) / done * (config.epochs * count - done)
                    yield Progress("train", seen, count, clock.elapsed, eta=remaining, epoch=epoch,
                                   message=f"epoch {epoch} of {config.epochs}")
        except StopIteration as finished:
            train_loss, train_accuracy = finished.value
        except StopRequested:
            stopped = True
            break

        val_logits = predict_cached(model, val_cache)
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        val_accuracy = (val_logits.argmax(1) == val_labels).float().mean().item()
        # Best = highest validation accuracy; ties go to the lower validation loss.
        key = (val_accuracy, -val_loss)
        is_best = best_key is None or key > best_key
        if is_best:
            best_state, best_key, best_epoch = _trainable_state(model, frozen), key, epoch
        per_epoch = (clock.elapsed - fit_started) / epoch
        event = EpochEnd(
            epoch=epoch, epochs=config.epochs,
            train_loss=train_loss, train_accuracy=train_accuracy,
            val_loss=val_loss, val_accuracy=val_accuracy,
            learning_rate=optimizer.param_groups[0]["lr"],
            elapsed=clock.elapsed, eta=per_epoch * (config.epochs - epoch), best=is_best,
        )
        history.append(to_dict(event))
        yield event
        if stop is not None and stop.is_set():
            stopped = True
            break

    if best_state is None:
        yield Stopped(str(run_dir), None)
        return

    # Evaluate the best epoch and write the run folder.
    model.load_state_dict(best_state, strict=False)
    yield Progress("evaluate", 0, 1, clock.elapsed, message="evaluating the best epoch")
    val_logits = predict_cached(model, val_cache)
    evaluation = evaluate_predictions(val_logits, val_labels, collection.classes, collection.val)
    trainable, total = bb.count_params(model)
    metrics = {
        "val_accuracy": evaluation["accuracy"],
        "balanced_accuracy": evaluation["balanced_accuracy"],
        "val_loss": evaluation["loss"],
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "train_seconds": round(clock.elapsed, 2),
        "backbone": config.backbone,
        "pretrained": config.pretrained,
        "frozen_stages": frozen,
        "num_stages": len(model.backbone.stages),
        "trainable_params": trainable,
        "total_params": total,
        "num_classes": len(collection.classes),
        "num_train_images": len(collection.train),
        "num_val_images": len(collection.val),
        "stopped_early": stopped,
    }
    save_run_files(
        run_dir,
        model=model,
        info={
            "task": "classification",
            "config": config.to_dict(),
            "classes": collection.classes,
            "preprocessing": bb.get_spec(config.backbone).preprocessing.to_dict(),
            "backbone": config.backbone,
            "frozen_stages": frozen,
            "trainable_params": trainable,
            "total_params": total,
            # What the user loaded (folder or zip), so a teacher's split can be drawn again.
            "dataset": str(collection.source or collection.root),
        },
        report=collection.report.to_dict(),
        history=history,
        metrics=metrics,
        evaluation=evaluation,
    )
    yield Progress("evaluate", 1, 1, clock.elapsed, message="evaluating the best epoch")
    yield (Stopped if stopped else Done)(str(run_dir), metrics)


def train(
    data: str | Path | ImageCollection,
    config: TrainConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
    on_event=None,
) -> dict:
    """Run ``train_classifier`` to the end and return the metrics (``{}`` when stopped before any epoch)."""
    metrics: dict = {}
    for event in train_classifier(data, config, run_dir, stop):
        if on_event:
            on_event(event)
        if isinstance(event, (Done, Stopped)):
            metrics = event.metrics or {}
    return metrics
