"""Training students on cached views: the epoch loop, validation and the best epoch."""

from __future__ import annotations

import copy
import threading
from collections.abc import Generator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from tlapp import backbones as bb
from tlapp.datasets import ImageCollection
from tlapp.evaluation import evaluate_predictions
from tlapp.events import Clock, EpochEnd, Event, Progress, StopRequested, to_dict
from tlapp.features import FeatureCache
from tlapp.training import BACKBONE_LR_FACTOR, Classifier, predict_cached

from tlapp.distillation.compare import agreement
from tlapp.distillation.loss import DistillationLoss
from tlapp.distillation.students import StudentSpec
from tlapp.distillation.views import ViewSet

@dataclass
class TrainingData:
    """What every student of one teacher trains and validates on, computed once."""

    views: ViewSet
    labels: torch.Tensor
    val_cache: FeatureCache
    val_labels: torch.Tensor
    teacher_val_logits: torch.Tensor

    def first_views(self, count: int) -> TrainingData:
        """Return the same data restricted to the first ``count`` views of each training image."""
        if count >= self.views.num_views:
            return self
        views = ViewSet(
            teacher_logits=self.views.teacher_logits[:count],
            student=FeatureCache(views=self.views.student.views[:count], boundary=self.views.student.boundary),
        )
        return TrainingData(views, self.labels, self.val_cache, self.val_labels, self.teacher_val_logits)


def param_groups(model: Classifier, spec: StudentSpec, learning_rate: float) -> list[dict]:
    """Put pretrained stages that train at a tenth of the learning rate and new layers at the full rate."""
    pretrained, new = [], []
    for index, stage in enumerate(model.backbone.stages):
        params = [p for p in stage.parameters() if p.requires_grad]
        (new if index >= spec.pretrained_stages else pretrained).extend(params)
    new.extend(p for p in model.backbone.pool.parameters() if p.requires_grad)
    new.extend(model.head.parameters())
    groups = [{"params": new, "lr": learning_rate}]
    if pretrained:
        groups.append({"params": pretrained, "lr": learning_rate * BACKBONE_LR_FACTOR})
    return groups


class StudentTrainer:
    """One student with its loss, optimiser, history and best epoch so far."""

    def __init__(
        self,
        series: str,
        model: Classifier,
        spec: StudentSpec,
        loss: DistillationLoss,
        *,
        epochs: int,
        learning_rate: float,
        weight_decay: float,
        batch_size: int,
        seed: int,
        num_images: int,
    ):
        self.series = series
        self.model = model
        self.spec = spec
        self.loss = loss
        self.epochs = epochs
        self.batch_size = batch_size
        self.optimizer = torch.optim.AdamW(param_groups(model, spec, learning_rate), weight_decay=weight_decay)
        steps_per_epoch = -(-num_images // batch_size)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(1, steps_per_epoch * epochs))
        # Students built with the same seed draw the same batches and views.
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self.best_state: dict | None = None
        self.best_key: tuple | None = None
        self.best_epoch = 0

    def train_epoch(
        self, data: TrainingData, stop: threading.Event | None
    ) -> Generator[tuple[int, int], None, tuple[float, float]]:
        """Run one epoch; yield (images seen, images in the epoch) after each batch, return (loss, accuracy).

        Each image contributes one randomly drawn view per epoch. Raises StopRequested between
        batches once ``stop`` is set.
        """
        cache, teacher_logits = data.views.student, data.views.teacher_logits
        num_images = cache.num_images
        order = torch.randperm(num_images, generator=self.generator)
        view_choice = torch.randint(data.views.num_views, (num_images,), generator=self.generator)
        # A batch of one image breaks BatchNorm in train mode, so a lone last image waits for the next epoch.
        usable = num_images - 1 if num_images % self.batch_size == 1 and num_images > 1 else num_images

        self.model.train()
        bb.set_train_mode(self.model.backbone, self.spec.frozen)
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, usable, self.batch_size):
            if stop is not None and stop.is_set():
                raise StopRequested
            index = order[start : min(start + self.batch_size, usable)]
            views = view_choice[index]
            batch = torch.stack([cache.views[v][i] for v, i in zip(views.tolist(), index.tolist())])
            target = data.labels[index]
            logits = self.model.forward_from(batch, cache.boundary)
            loss = self.loss(logits, target, teacher_logits[views, index])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            total_loss += loss.item() * len(index)
            correct += (logits.argmax(1) == target).sum().item()
            seen += len(index)
            yield seen, usable
        return total_loss / max(seen, 1), correct / max(seen, 1)

    def end_epoch(
        self, epoch: int, train_loss: float, train_accuracy: float, data: TrainingData, elapsed: float, eta: float
    ) -> EpochEnd:
        """Validate, keep the state when it is the best so far, and return the epoch's event."""
        val_logits = predict_cached(self.model, data.val_cache)
        val_loss = F.cross_entropy(val_logits, data.val_labels).item()
        val_accuracy = (val_logits.argmax(1) == data.val_labels).float().mean().item()
        # Best = highest validation accuracy; ties go to the lower validation loss, as in classification training.
        key = (val_accuracy, -val_loss)
        is_best = self.best_key is None or key > self.best_key
        if is_best:
            self.best_state, self.best_key, self.best_epoch = copy.deepcopy(self.model.state_dict()), key, epoch
        event = EpochEnd(
            epoch=epoch, epochs=self.epochs,
            train_loss=train_loss, train_accuracy=train_accuracy,
            val_loss=val_loss, val_accuracy=val_accuracy,
            learning_rate=self.optimizer.param_groups[0]["lr"],
            elapsed=elapsed, eta=eta, best=is_best, series=self.series,
            extra={"agreement": agreement(val_logits, data.teacher_val_logits)},
        )
        self.history.append(to_dict(event))
        return event

    def evaluate_best(self, data: TrainingData, collection: ImageCollection) -> tuple[dict, torch.Tensor]:
        """Load the best epoch's state; return its evaluation dict and validation logits."""
        self.model.load_state_dict(self.best_state)
        val_logits = predict_cached(self.model, data.val_cache)
        return evaluate_predictions(val_logits, data.val_labels, collection.classes, collection.val), val_logits


def fit(
    trainers: list[StudentTrainer], data: TrainingData, epochs: int, clock: Clock, stop: threading.Event | None
) -> Generator[Event, None, bool]:
    """Run the epochs, alternating between the students; yield events and return whether the user stopped."""
    fit_started = clock.elapsed
    total_epochs = epochs * len(trainers)
    finished_epochs = 0
    for epoch in range(1, epochs + 1):
        for trainer in trainers:
            epoch_started = clock.elapsed
            epoch_run = trainer.train_epoch(data, stop)
            message = f"{trainer.series} student: epoch {epoch} of {epochs}"
            try:
                while True:
                    seen, count = next(epoch_run)
                    # At least one report per epoch, so short epochs show up too.
                    if clock.due() or seen == count:
                        per_epoch = (clock.elapsed - epoch_started) / seen * count
                        remaining = per_epoch * (total_epochs - finished_epochs - seen / count)
                        yield Progress("train", seen, count, clock.elapsed, eta=remaining, epoch=epoch, message=message)
            except StopIteration as finished:
                train_loss, train_accuracy = finished.value
            except StopRequested:
                return True
            finished_epochs += 1
            eta = (clock.elapsed - fit_started) / finished_epochs * (total_epochs - finished_epochs)
            yield trainer.end_epoch(epoch, train_loss, train_accuracy, data, clock.elapsed, eta)
        if stop is not None and stop.is_set():
            return True
    return False
