"""Training a U-Net segmenter by transfer learning, in the same shape as classification training.

``train_segmentation`` is a generator of ``tlapp.events``. The frozen encoder stages run once per
image (and per augmented view), and their outputs are cached: the skip features the decoder
needs plus the activation at the freeze boundary. Every epoch then runs only the trainable
stages and the decoder; with the whole encoder frozen that is the decoder alone. With nothing
frozen, every batch runs the whole network on freshly augmented images.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import threading
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from torch.nn import functional as F

from tlapp import backbones as bb
from tlapp.errors import TlappError
from tlapp.events import Clock, Done, EpochEnd, Event, Message, Progress, StopRequested, Stopped, to_dict
from tlapp.images import load_rgb
from tlapp.runs import save_run_files, write_config
from tlapp.segmentation import model as unet
from tlapp.segmentation.dataset import TRIMAP_BORDERS, SegmentationData, load_segmentation_data
from tlapp.segmentation.masks import IGNORE_INDEX
from tlapp.segmentation.metrics import ConfusionMatrix, image_scores
from tlapp.segmentation.transforms import eval_transform, resize_target, train_transform

log = logging.getLogger(__name__)

# Fine-tuned pretrained encoder stages learn this much slower than the new decoder, so the first
# epochs of a randomly initialised decoder do not wreck the ImageNet features.
ENCODER_LR_FACTOR = 0.1

# Largest feature cache kept in memory; above it fewer augmented views are cached.
MAX_CACHE_BYTES = 3 * 1024**3

# Training decodes images at most this large. That bounds the memory of a few hundred photos and
# still leaves random crops for a 512-pixel input enough pixels.
LOAD_MAX_SIDE = 1024


@dataclass
class SegmentationConfig:
    """Settings of one segmentation run."""

    backbone: str = bb.DEFAULT_BACKBONE
    """Registry name of the pretrained network used as the U-Net encoder."""
    pretrained: bool = True
    """Start the encoder from ImageNet weights; False trains from random initialisation, for comparison."""
    freeze: int | str = "all"
    """Encoder stages that keep their pretrained weights: "all" trains only the decoder, 0 fine-tunes everything."""
    epochs: int = 8
    learning_rate: float = 3e-3
    """Learning rate of the decoder; fine-tuned pretrained encoder stages use a tenth of it."""
    batch_size: int = 8
    image_size: int = 256
    """Side of the square the images are resized to, rounded up to a multiple of 32."""
    augment: bool = True
    """Train on random crops, horizontal flips and colour changes, applied to image and mask together."""
    augment_views: int = 4
    """Augmented views cached per image when the encoder is frozen; epochs cycle through them."""
    seed: int = 0
    val_fraction: float = 0.2
    trimap_border: str = "object"
    """Class of the border value 3 in Oxford-style trimaps: "object", or "ignore" to leave it unscored."""
    drop_outline_masks: bool = False
    """Leave out pairs whose binary mask looks like an outline rather than a filled region."""
    class_names: list[str] | None = None
    """Display names of the classes, background first; None keeps the names found in the masks."""
    weight_decay: float = 1e-4

    def validate(self) -> None:
        """Raise one TlappError that lists every invalid setting."""
        problems = []
        if self.backbone not in unet.SMP_ENCODERS:
            problems.append(f"unknown or unsupported backbone '{self.backbone}' (choose one of {', '.join(unet.SMP_ENCODERS)})")
        else:
            try:
                bb.resolve_freeze(bb.get_spec(self.backbone), self.freeze)
            except TlappError as error:
                problems.append(str(error))
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning rate must be between 0 and 1, got {self.learning_rate}")
        if not 1 <= self.batch_size <= 256:
            problems.append(f"batch size must be between 1 and 256, got {self.batch_size}")
        if not 32 <= self.image_size <= 1024:
            problems.append(f"image size must be between 32 and 1024 pixels, got {self.image_size}")
        if not 1 <= self.augment_views <= 32:
            problems.append(f"augmented views must be between 1 and 32, got {self.augment_views}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"validation fraction must be between 0 and 1, got {self.val_fraction}")
        if self.trimap_border not in TRIMAP_BORDERS:
            problems.append(f"trimap border must be 'object' or 'ignore', got '{self.trimap_border}'")
        if problems:
            raise TlappError("Invalid segmentation settings: " + "; ".join(problems) + ".", "Fix them and start again.")

    @property
    def input_size(self) -> int:
        """Side of the square network input: ``image_size`` rounded up to a multiple of 32."""
        return unet.padded_size(self.image_size)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmentationConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


def _check_stop(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise StopRequested


@dataclass
class _Loaded:
    """One pair decoded into memory."""

    image: Image.Image  # RGB, longer side at most LOAD_MAX_SIDE
    target: np.ndarray  # class indices at the image's size
    original_target: np.ndarray  # class indices at the mask file's size (used for the final scores)


class _Batches:
    """Inputs of the network for one split: cached frozen-stage outputs, or images to transform.

    With a cache, each tensor of ``features`` has (views * images, ...) float16 entries (see
    ``model.encode_until`` for what they are) and ``targets`` is (views * images, size, size);
    entry ``v * num_images + i`` is view ``v`` of image ``i``. Without one, batches are
    transformed from ``loaded`` on demand.
    """

    def __init__(self, loaded: list[_Loaded], num_views: int, boundary: int = 0):
        self.loaded = loaded
        self.num_views = num_views
        self.boundary = boundary  # frozen stages whose outputs are cached
        self.features: list[torch.Tensor] | None = None
        self.targets: torch.Tensor | None = None
        self.inputs: torch.Tensor | None = None  # validation without a cache: transformed once, float16

    @property
    def num_images(self) -> int:
        return len(self.loaded)


# --- loading and caching ---------------------------------------------------------------------


def _load_pairs(data: SegmentationData, pairs, clock: Clock, stop, what: str) -> Generator[Progress, None, list[_Loaded]]:
    loaded = []
    for index, pair in enumerate(pairs):
        _check_stop(stop)
        image = load_rgb(pair.image, name=pair.image_relpath, max_side=LOAD_MAX_SIDE)
        original = data.convention.read_target(pair.mask, pair.mask_relpath)
        target = resize_target(original, image.size) if image.size != original.shape[::-1] else original
        loaded.append(_Loaded(image, target, original))
        if clock.due():
            yield Progress("decode", index + 1, len(pairs), clock.elapsed, message=f"reading {what} images and masks")
    return loaded


def _cache_bytes_per_view(model: smp.Unet, backbone: str, boundary: int, size: int) -> int:
    with torch.inference_mode():
        kept = unet.encode_until(model.eval(), backbone, torch.zeros(1, 3, size, size), boundary)
    return sum(tensor.numel() for tensor in kept) * 2 + size * size


def _cache_features(
    model: smp.Unet, backbone: str, batches: _Batches, transforms: list, size: int, clock: Clock, stop, what: str, seed: int
) -> Iterator[Progress]:
    """Fill ``batches.features`` and ``targets`` by running the frozen stages once per view."""
    total = batches.num_images * len(transforms)
    torch.manual_seed(seed)
    model.eval()
    features: list[torch.Tensor] | None = None
    targets = torch.empty((total, size, size), dtype=torch.uint8)
    chunk = 16
    done = 0
    for view, transform in enumerate(transforms):
        for start in range(0, batches.num_images, chunk):
            _check_stop(stop)
            items = batches.loaded[start : start + chunk]
            pairs = [transform(item.image, item.target) for item in items]
            images = torch.stack([image for image, _ in pairs])
            # Frozen stages run in bfloat16 where the CPU computes it natively, as for classification.
            with torch.inference_mode(), bb.frozen_precision():
                levels = unet.encode_until(model, backbone, images, batches.boundary)
            if features is None:
                features = [torch.empty((total, *level.shape[1:]), dtype=torch.float16) for level in levels]
            offset = view * batches.num_images + start
            for store, level in zip(features, levels):
                store[offset : offset + len(items)] = level.half()
            targets[offset : offset + len(items)] = torch.stack([target for _, target in pairs])
            done += len(items)
            if done < total and clock.due():
                yield Progress("features", done, total, clock.elapsed, message=f"computing frozen-stage features of the {what} images")
    # Always report the finished step, so a fast cache still shows up in the events.
    yield Progress("features", total, total, clock.elapsed, eta=0.0, message=f"computing frozen-stage features of the {what} images")
    batches.features, batches.targets = features, targets


def _transform_all(batches: _Batches, transform) -> None:
    pairs = [transform(item.image, item.target) for item in batches.loaded]
    batches.inputs = torch.stack([image for image, _ in pairs]).half()
    batches.targets = torch.stack([target for _, target in pairs])


# --- one epoch -------------------------------------------------------------------------------


def _loss_function(num_classes: int):
    dice = smp.losses.DiceLoss(mode="multiclass", ignore_index=IGNORE_INDEX, from_logits=True)

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # Dice balances small objects against the background; cross-entropy gives smooth gradients early on.
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX) + dice(logits, target)

    return loss


def _forward_batch(model, backbone: str, batches: _Batches, indices: list[int], size: int, transform) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (logits, targets) for cache entries or, without a cache, freshly transformed images."""
    if batches.features is not None:
        kept = [tensor[indices].float() for tensor in batches.features]
        features = unet.encode_from(model, backbone, kept, batches.boundary)
        return unet.decode_features(model, features, (size, size)), batches.targets[indices].long()
    if batches.inputs is not None:
        return model(batches.inputs[indices].float()), batches.targets[indices].long()
    pairs = [transform(batches.loaded[i].image, batches.loaded[i].target) for i in indices]
    images = torch.stack([image for image, _ in pairs])
    return model(images), torch.stack([target for _, target in pairs]).long()


def _train_epoch(model, batches, epoch, config, frozen, optimizer, scheduler, loss_fn, transform, generator, stop):
    """Run one epoch; yield (images seen, images in the epoch) per batch; return (loss, confusion)."""
    num_images = batches.num_images
    order = torch.randperm(num_images, generator=generator).tolist()
    # A batch of one image breaks BatchNorm in train mode, so a lone last image waits for the next epoch.
    usable = num_images - 1 if num_images % config.batch_size == 1 and num_images > 1 else num_images
    unet.set_train_mode(model, config.backbone, frozen)
    confusion = ConfusionMatrix(model.segmentation_head[0].out_channels)
    total_loss, seen = 0.0, 0
    for start in range(0, usable, config.batch_size):
        _check_stop(stop)
        chosen = order[start : min(start + config.batch_size, usable)]
        # Each epoch takes the next cached view of every image, so all views get used.
        indices = [((epoch - 1 + i) % batches.num_views) * num_images + i for i in chosen] if batches.features is not None else chosen
        logits, target = _forward_batch(model, config.backbone, batches, indices, config.input_size, transform)
        if (target != IGNORE_INDEX).any():
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(chosen)
        scheduler.step()
        confusion.update(logits.detach().argmax(1), target)
        seen += len(chosen)
        yield seen, usable
    return total_loss / max(seen, 1), confusion


@torch.inference_mode()
def _validate(model, backbone: str, batches: _Batches, size: int, loss_fn, batch_size: int) -> tuple[float, ConfusionMatrix]:
    model.eval()
    confusion = ConfusionMatrix(model.segmentation_head[0].out_channels)
    total_loss, count = 0.0, 0
    for start in range(0, batches.num_images, batch_size):
        indices = list(range(start, min(start + batch_size, batches.num_images)))
        logits, target = _forward_batch(model, backbone, batches, indices, size, None)
        if (target != IGNORE_INDEX).any():
            total_loss += loss_fn(logits, target).item() * len(indices)
            count += len(indices)
        confusion.update(logits.argmax(1), target)
    return total_loss / max(count, 1), confusion


# --- the run ---------------------------------------------------------------------------------


def train_segmentation(
    data: str | Path | SegmentationData,
    config: SegmentationConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Train a U-Net segmenter, yielding events; every event is also appended to ``run_dir/events.jsonl``.

    ``data`` is a dataset path, or a SegmentationData used as it is (its split and mask
    convention then take precedence over the config's val_fraction, trimap_border and
    drop_outline_masks). Raises TlappError for problems the user can fix (invalid settings,
    unusable data).
    """
    run_dir = Path(run_dir)
    config.validate()  # before anything is written, so invalid settings leave no run folder behind
    write_config(run_dir, config.to_dict())
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as log_file:
        for event in _train_steps(data, config, run_dir, stop):
            log_file.write(json.dumps(to_dict(event)) + "\n")
            log_file.flush()
            yield event


def _data_messages(data: SegmentationData) -> Iterator[Message]:
    report = data.report
    yield Message(
        f"{report.num_pairs} image/mask pairs ({report.layout}): {len(data.train)} for training, "
        f"{len(data.val)} for validation. Classes: {', '.join(data.classes)}."
    )
    yield Message(f"Masks read as {report.convention}.")
    for warning in report.warnings:
        yield Message(warning, "warning")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _make_optimizer(model: smp.Unet, config: SegmentationConfig) -> torch.optim.Optimizer:
    encoder_params = [p for p in model.encoder.parameters() if p.requires_grad]
    other_params = [p for name, p in model.named_parameters() if not name.startswith("encoder.") and p.requires_grad]
    groups = [{"params": other_params, "lr": config.learning_rate}]
    if encoder_params:
        factor = ENCODER_LR_FACTOR if config.pretrained else 1.0
        groups.append({"params": encoder_params, "lr": config.learning_rate * factor})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _train_steps(
    data: str | Path | SegmentationData, config: SegmentationConfig, run_dir: Path, stop: threading.Event | None
) -> Iterator[Event]:
    clock = Clock()
    config.validate()
    _seed_everything(config.seed)
    if not isinstance(data, SegmentationData):
        yield Progress("scan", 0, 1, clock.elapsed, message="pairing images with masks and reading every mask")
        data = load_segmentation_data(
            data,
            val_fraction=config.val_fraction,
            seed=config.seed,
            trimap_border=config.trimap_border,
            drop_outline_masks=config.drop_outline_masks,
        )
    if config.class_names:
        data.rename_classes(config.class_names)
    yield from _data_messages(data)
    size = config.input_size
    if size != config.image_size:
        yield Message(f"Image size {config.image_size} rounded up to {size}: the U-Net needs a multiple of 32.")

    spec = bb.get_spec(config.backbone)
    downloads: list[Progress] = []

    def on_download(done: int, total: int) -> None:
        downloads.append(Progress("download", done, total, clock.elapsed, message=f"downloading {spec.weights.filename}"))

    model = unet.build_unet(config.backbone, len(data.classes), config.pretrained, progress=on_download)
    yield from downloads[-1:]
    frozen = unet.resolve_encoder_freeze(model, config.backbone, config.freeze)
    unet.freeze_encoder(model, config.backbone, frozen)
    num_stages = len(unet.encoder_stages(model, config.backbone))
    trainable, total = bb.count_params(model)
    if not config.pretrained:
        yield Message(f"The {spec.name} encoder starts from random weights: expect a much lower IoU than pretrained.", "warning")
    yield Message(
        f"U-Net, encoder {spec.name}: {frozen} of {num_stages} encoder stages frozen; "
        f"training {trainable:,} of {total:,} parameters at {size}x{size} pixels."
    )

    try:
        train_loaded = yield from _load_pairs(data, data.train, clock, stop, "training")
        val_loaded = yield from _load_pairs(data, data.val, clock, stop, "validation")
        mean, std = spec.preprocessing.mean, spec.preprocessing.std
        train_batches, val_batches, transform = yield from _prepare_batches(
            model, config, frozen, train_loaded, val_loaded, size, mean, std, clock, stop
        )
    except StopRequested:
        yield Stopped(str(run_dir), None)
        return

    yield from _fit(model, frozen, num_stages, train_batches, val_batches, transform, data, config, run_dir, clock, stop)


def _prepare_batches(model, config, frozen, train_loaded, val_loaded, size, mean, std, clock, stop):
    """Cache the frozen stages' outputs (several augmented views per image), or prepare on-the-fly batches."""
    evaluate = eval_transform(size, mean, std)
    augment = train_transform(size, mean, std) if config.augment else evaluate
    views = config.augment_views if config.augment else 1
    uncached = _Batches(train_loaded, 1), _Batches(val_loaded, 1)
    if frozen == 0:
        _transform_all(uncached[1], evaluate)
        return (*uncached, augment)

    per_view = _cache_bytes_per_view(model, config.backbone, frozen, size)
    affordable = (MAX_CACHE_BYTES // per_view - len(val_loaded)) // max(len(train_loaded), 1)
    if affordable < 1:
        # NOTE: not even one view fits, so every batch runs the frozen stages again.
        yield Message(
            f"The outputs of {frozen} frozen stages would need more than {MAX_CACHE_BYTES / 1024**3:.0f} GB; "
            "every epoch runs them again instead (slower). Use a smaller image size to speed this up.", "warning",
        )
        _transform_all(uncached[1], evaluate)
        return (*uncached, augment)
    if affordable < views:
        views = affordable
        yield Message(
            f"Caching {views} augmented views per image instead of {config.augment_views}, to keep the feature "
            f"cache under {MAX_CACHE_BYTES / 1024**3:.0f} GB.", "warning",
        )

    train_batches, val_batches = _Batches(train_loaded, views, frozen), _Batches(val_loaded, 1, frozen)
    yield from _cache_features(model, config.backbone, train_batches, [augment] * views, size, clock, stop, "training", config.seed)
    yield from _cache_features(model, config.backbone, val_batches, [evaluate], size, clock, stop, "validation", config.seed)
    return train_batches, val_batches, augment


def _fit(model, frozen, num_stages, train_batches, val_batches, transform, data, config, run_dir, clock, stop) -> Iterator[Event]:
    """Train for ``config.epochs`` epochs, keep the epoch with the best validation IoU, write the run."""
    loss_fn = _loss_function(len(data.classes))
    optimizer = _make_optimizer(model, config)
    steps_per_epoch = math.ceil(train_batches.num_images / config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps_per_epoch * config.epochs))
    generator = torch.Generator().manual_seed(config.seed)

    history: list[dict] = []
    best_state, best_key, best_epoch, best_epoch_iou = None, None, 0, None
    fit_started = clock.elapsed
    stopped = False
    for epoch in range(1, config.epochs + 1):
        epoch_started = clock.elapsed
        steps = _train_epoch(model, train_batches, epoch, config, frozen, optimizer, scheduler, loss_fn, transform, generator, stop)
        try:
            while True:
                seen, count = next(steps)
                if clock.due():
                    per_epoch = (clock.elapsed - epoch_started) / seen * count
                    remaining = per_epoch * (config.epochs - epoch + 1 - seen / count)
                    yield Progress("train", seen, count, clock.elapsed, eta=remaining, epoch=epoch, message=f"epoch {epoch} of {config.epochs}")
        except StopIteration as finished:
            train_loss, train_confusion = finished.value
        except StopRequested:
            stopped = True
            break

        val_loss, val_confusion = _validate(model, config.backbone, val_batches, config.input_size, loss_fn, config.batch_size)
        val_scores, train_scores = val_confusion.scores(), train_confusion.scores()
        val_iou = val_scores["iou"] if val_scores["iou"] is not None else 0.0
        # Best = highest validation IoU; ties go to the lower validation loss.
        key = (val_iou, -val_loss)
        is_best = best_key is None or key > best_key
        if is_best:
            best_state, best_key, best_epoch, best_epoch_iou = copy.deepcopy(model.state_dict()), key, epoch, val_iou
        per_epoch = (clock.elapsed - fit_started) / epoch
        event = EpochEnd(
            epoch=epoch, epochs=config.epochs,
            train_loss=train_loss, train_accuracy=train_scores["pixel_accuracy"],
            val_loss=val_loss, val_accuracy=val_scores["pixel_accuracy"],
            learning_rate=optimizer.param_groups[0]["lr"],
            elapsed=clock.elapsed, eta=per_epoch * (config.epochs - epoch), best=is_best,
            extra={"val_iou": val_scores["iou"], "val_dice": val_scores["dice"], "train_iou": train_scores["iou"]},
        )
        history.append(to_dict(event))
        yield event
        if stop is not None and stop.is_set():
            stopped = True
            break

    if best_state is None:
        yield Stopped(str(run_dir), None)
        return

    model.load_state_dict(best_state)
    yield Progress("evaluate", 0, 1, clock.elapsed, message="evaluating the best epoch at the original image sizes")
    evaluation = _evaluate(model, config.backbone, val_batches, data, config.input_size, config.batch_size)
    trainable, total = bb.count_params(model)
    metrics = {
        "val_iou": evaluation["iou"],
        "val_dice": evaluation["dice"],
        "val_mean_iou_all_classes": evaluation["mean_iou_all_classes"],
        "val_pixel_accuracy": evaluation["pixel_accuracy"],
        "per_class_iou": {name: scores["iou"] for name, scores in evaluation["per_class"].items()},
        "per_class_dice": {name: scores["dice"] for name, scores in evaluation["per_class"].items()},
        "best_epoch": best_epoch,
        "best_epoch_val_iou_at_input_size": best_epoch_iou,
        "epochs_run": len(history),
        "train_seconds": round(clock.elapsed, 2),
        "backbone": config.backbone,
        "pretrained": config.pretrained,
        "frozen_stages": frozen,
        "num_encoder_stages": num_stages,
        "trainable_params": trainable,
        "total_params": total,
        "image_size": config.input_size,
        "num_classes": len(data.classes),
        "num_train_images": len(data.train),
        "num_val_images": len(data.val),
        "augment_views_cached": train_batches.num_views if train_batches.features is not None else 0,
        "stopped_early": stopped,
    }
    spec = bb.get_spec(config.backbone)
    save_run_files(
        run_dir,
        model=model,
        info={
            "task": "segmentation",
            "model_type": "unet",
            "config": config.to_dict(),
            "classes": data.classes,
            "class_colours": [list(colour) for colour in data.convention.class_colours],
            "preprocessing": {"input_size": config.input_size, "resize": "stretch to a square", "mean": list(spec.preprocessing.mean), "std": list(spec.preprocessing.std)},
            "backbone": config.backbone,
            "encoder": unet.SMP_ENCODERS[config.backbone],
            "decoder_channels": list(unet.DECODER_CHANNELS),
            "frozen_stages": frozen,
            "image_size": config.input_size,
            "trainable_params": trainable,
            "total_params": total,
            "mask_convention": data.convention.to_dict(),
            "dataset": str(data.root),
        },
        report=data.report.to_dict(),
        history=history,
        metrics=metrics,
        evaluation=evaluation,
    )
    yield Progress("evaluate", 1, 1, clock.elapsed, message="evaluating the best epoch at the original image sizes")
    yield (Stopped if stopped else Done)(str(run_dir), metrics)


@torch.inference_mode()
def _evaluate(model, backbone: str, val_batches: _Batches, data: SegmentationData, size: int, batch_size: int) -> dict:
    """Score the model on every validation pair at the mask's original size."""
    model.eval()
    num_classes = len(data.classes)
    confusion = ConfusionMatrix(num_classes)
    samples = []
    for start in range(0, val_batches.num_images, batch_size):
        indices = list(range(start, min(start + batch_size, val_batches.num_images)))
        logits, _ = _forward_batch(model, backbone, val_batches, indices, size, None)
        for row, index in enumerate(indices):
            original = torch.from_numpy(val_batches.loaded[index].original_target).long()
            upsampled = F.interpolate(logits[row : row + 1], size=original.shape, mode="bilinear", align_corners=False)
            predicted = upsampled.argmax(1)[0]
            confusion.update(predicted, original)
            pair = data.val[index]
            samples.append(
                {"file": str(pair.image), "relpath": pair.image_relpath, "mask": str(pair.mask), "mask_relpath": pair.mask_relpath,
                 **image_scores(predicted, original, num_classes)}
            )
    scores = confusion.scores()
    per_class = {
        name: {"iou": iou, "dice": dice, "pixels": pixels}
        for name, iou, dice, pixels in zip(data.classes, scores["per_class_iou"], scores["per_class_dice"], scores["support"])
    }
    return {
        "iou": scores["iou"],
        "dice": scores["dice"],
        "mean_iou_all_classes": scores["mean_iou_all_classes"],
        "pixel_accuracy": scores["pixel_accuracy"],
        "per_class": per_class,
        "confusion": confusion.matrix.tolist(),
        "classes": data.classes,
        "samples": samples,
    }


def train(
    data: str | Path | SegmentationData,
    config: SegmentationConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
    on_event=None,
) -> dict:
    """Run ``train_segmentation`` to the end and return the metrics (``{}`` when stopped before any epoch)."""
    metrics: dict = {}
    for event in train_segmentation(data, config, run_dir, stop):
        if on_event:
            on_event(event)
        if isinstance(event, (Done, Stopped)):
            metrics = event.metrics or {}
    return metrics
