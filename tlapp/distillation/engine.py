"""Distilling a finished classification run (the teacher) into a small student, and a labels-only twin.

``distill`` is a generator of ``tlapp.events`` like ``tlapp.training.train_classifier``. It
labels several views of every training image with the teacher once, then trains the same
student twice on the same cached views, batches and seed: once with the distillation loss and
once on the labels alone. The epochs of the two alternate, so a page can draw both curves live
(``EpochEnd.series`` is "distilled" or "labels only"). The distilled student is written as a run
folder that ``tlapp.runs.load_predictor`` loads; the labels-only student goes to its
``without_teacher/`` subfolder.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from PIL import Image

from tlapp import backbones as bb
from tlapp.datasets import ImageCollection, load_collection
from tlapp.errors import TlappError
from tlapp.evaluation import evaluate_predictions
from tlapp.events import Clock, Done, Event, Message, Progress, StopRequested, Stopped, to_dict
from tlapp.features import MAX_CACHE_BYTES, boundary_shape, cache_bytes, iter_decode, iter_features
from tlapp.runs import MODEL_FILE, Run, build_model, load_run, save_run_files
from tlapp.training import Classifier

from tlapp.distillation.compare import agreement, measure_latency, model_summary
from tlapp.distillation.loss import DistillationLoss
from tlapp.distillation.students import DEFAULT_STUDENT, STUDENTS, StudentSpec, get_student
from tlapp.distillation.trainer import StudentTrainer, TrainingData, fit
from tlapp.distillation.views import CACHE_BATCH_SIZE, iter_teacher_logits, iter_view_set

log = logging.getLogger(__name__)

DISTILLED, LABELS_ONLY = "distilled", "labels only"
# The metrics.json key of each student series.
ROLES = {DISTILLED: "student", LABELS_ONLY: "student_without_teacher"}
WITHOUT_TEACHER_DIR = "without_teacher"


@dataclass
class DistillConfig:
    """Settings of one distillation run."""

    teacher: str = ""
    """Folder of the finished classification run to imitate; ``distill``'s argument fills it in."""
    student: str = DEFAULT_STUDENT
    """Name in ``tlapp.distillation.STUDENTS``."""
    temperature: float = 4.0
    """Softmax temperature T of the teacher-matching term; higher T shows more of how the teacher ranks wrong classes."""
    alpha: float = 0.5
    """Weight of the label loss; the teacher-matching term gets 1 - alpha."""
    epochs: int = 100
    learning_rate: float = 1e-3
    """Learning rate of the new layers; pretrained stages that train use a tenth of it."""
    batch_size: int = 32
    views: int = 8
    """Views cached per training image: the centre crop plus views - 1 random crops; each epoch draws one per image."""
    seed: int = 0
    baseline: bool = True
    """Also train the same student on the labels alone, for comparison."""
    data: str = ""
    """Dataset folder or zip; empty uses the dataset recorded in the teacher's run.json."""
    weight_decay: float = 1e-4
    dropout: float = 0.2
    latency_runs: int = 5
    """Timed passes per CPU latency measurement (their median is reported); 0 skips the measurement."""

    def validate(self) -> None:
        """Raise one TlappError that lists every invalid setting."""
        problems = []
        if self.student not in STUDENTS:
            problems.append(f"unknown student '{self.student}' (choose one of {', '.join(STUDENTS)})")
        if not 0 < self.temperature <= 100:
            problems.append(f"temperature must be above 0 and at most 100, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            problems.append(f"alpha must be between 0 and 1, got {self.alpha}")
        if not 1 <= self.epochs <= 1000:
            problems.append(f"epochs must be between 1 and 1000, got {self.epochs}")
        if not 0 < self.learning_rate < 1:
            problems.append(f"learning rate must be between 0 and 1, got {self.learning_rate}")
        if not 1 <= self.batch_size <= 1024:
            problems.append(f"batch size must be between 1 and 1024, got {self.batch_size}")
        if not 1 <= self.views <= 32:
            problems.append(f"views must be between 1 and 32, got {self.views}")
        if not 0 <= self.latency_runs <= 100:
            problems.append(f"latency runs must be between 0 and 100, got {self.latency_runs}")
        if problems:
            raise TlappError(
                "Invalid distillation settings: " + "; ".join(problems) + ".", "Fix them and start again."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DistillConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


# --- the teacher and its data ---------------------------------------------------------------


def check_teacher(teacher: str | Path | Run) -> Run:
    """Return the teacher's run, or raise a TlappError when it is not a finished classification run."""
    run = teacher if isinstance(teacher, Run) else load_run(teacher)
    if run.task != "classification":
        raise TlappError(f"Run '{run.name}' cannot be a teacher: it is a {run.task} run.", "Choose a finished classification run.")
    if not run.finished:
        raise TlappError(
            f"Run '{run.name}' cannot be a teacher: it has no saved model (it was stopped or failed before one was saved).",
            "Choose a finished classification run.",
        )
    return run


def load_teacher(teacher: str | Path | Run) -> tuple[Run, Classifier]:
    """Load a finished classification run and its network in eval mode."""
    run = check_teacher(teacher)
    model = build_model(run.info)
    model.load_state_dict(torch.load(run.path / MODEL_FILE, map_location="cpu", weights_only=True))
    return run, model.eval()


def teacher_gain_note(num_classes: int) -> str | None:
    """Return what to expect from the teacher when it has too few classes to teach more than the labels, else None.

    With two classes a softened prediction is one number per view, and a teacher that fits its
    training images gives back little more than their labels. bench/bench_distillation.py
    measured it: the students tied in accuracy on ants vs bees and distillation added 7.7 points on 37 pet breeds.
    """
    if num_classes > 2:
        return None
    return (
        "With 2 classes the teacher's softened probabilities add little to the labels: on ants vs bees the "
        "distilled student was no more accurate than the one trained on the labels alone (only its probabilities "
        "were better: validation loss 0.24 against 0.33), while on 37 pet breeds distillation added 7.7 points. "
        "The comparison still shows how much smaller and faster the student is."
    )


def split_settings(run: Run) -> tuple[int, float]:
    """Return the (seed, validation fraction) that drew a run's train/validation split."""
    split = run.info.get("split") or run.info.get("config", {})
    return split.get("seed", 0), split.get("val_fraction", 0.2)


def teacher_collection(teacher: Run, data: str | Path | None = None) -> ImageCollection:
    """Load the teacher's dataset with the teacher's seed and validation fraction, so the split is the same.

    Raises TlappError when the classes differ from the teacher's, or when the validation images
    differ from those in the teacher's evaluation.json.
    """
    source = Path(data) if data else Path(teacher.info.get("dataset", ""))
    if not data and not source.exists():
        raise TlappError(
            f"The teacher's dataset {source} was not found: it was moved, renamed or deleted after training.",
            "Upload the teacher's dataset again on the Data page under the same name, or pass its folder or zip "
            "with --data on the command line.",
        )
    seed, val_fraction = split_settings(teacher)
    collection = load_collection(source, val_fraction=val_fraction, seed=seed)
    if collection.classes != teacher.classes:
        raise TlappError(
            f"The classes of {source} ({', '.join(collection.classes)}) differ from the teacher's "
            f"({', '.join(teacher.classes)}).",
            "Pass the dataset the teacher was trained on.",
        )
    expected = [sample["relpath"] for sample in teacher.evaluation.get("samples", [])]
    found = [sample.relpath for sample in collection.val]
    if expected and sorted(expected) != sorted(found):
        missing = sorted(set(expected) - set(found))
        raise TlappError(
            f"The validation images of {source.name} differ from those the teacher was evaluated on "
            f"({len(found)} here, {len(expected)} in its evaluation; not found here: {', '.join(missing[:3]) or 'none'}).",
            "Pass the dataset the teacher was trained on, unchanged.",
        )
    return collection


def _progress(steps: Generator, clock: Clock, message: str) -> Generator[Progress, None, object]:
    """Turn ``(stage, done, total)`` steps into Progress events at most every second; return the result."""
    started = clock.elapsed
    while True:
        try:
            stage, done, total = next(steps)
        except StopIteration as finished:
            return finished.value
        if clock.due() or done == total:
            rate = (clock.elapsed - started) / max(done, 1)
            yield Progress(stage, done, total, clock.elapsed, eta=rate * (total - done), message=message)


def _stage(steps: Generator[int, None, object], stage: str, total: int) -> Generator:
    """Label the done counts of ``steps`` with ``stage`` and ``total``; return its result."""
    while True:
        try:
            done = next(steps)
        except StopIteration as finished:
            return finished.value
        yield stage, done, total


# --- preparing: the teacher labels every view once ----------------------------------------------


@dataclass
class Prepared:
    """A teacher, its data and the cached views, ready to train any number of students of one kind."""

    teacher: Run
    teacher_model: Classifier
    spec: StudentSpec
    collection: ImageCollection
    data: TrainingData


def prepare(
    teacher_run: str | Path | Run, config: DistillConfig, stop: threading.Event | None = None, clock: Clock | None = None
) -> Generator[Event, None, Prepared]:
    """Load the teacher and its split, then cache the teacher's logits and the student's activations per view.

    Yields Message and Progress events (stages "decode", "teacher", "features") and returns the
    Prepared data. Raises TlappError for user problems and StopRequested once ``stop`` is set.
    """
    clock = clock or Clock()
    config.validate()
    spec = get_student(config.student)
    spec.check_available()
    teacher, teacher_model = load_teacher(teacher_run)
    collection = teacher_collection(teacher, config.data or None)
    yield Message(
        f"Teacher {teacher.name}: {len(collection.classes)} classes, {len(collection.train)} training and "
        f"{len(collection.val)} validation images (the teacher's split)."
    )
    if note := teacher_gain_note(len(collection.classes)):
        yield Message(note, "warning")

    # The frozen stages are the same in every student built from the spec, so one cache serves all.
    student = spec.build(len(collection.classes), dropout=config.dropout)
    trainable, total = bb.count_params(student)
    yield Message(
        f"Student {spec.name}: {total:,} parameters ({trainable:,} trained), {spec.input_size} px input; "
        f"{config.views} view(s) of each training image."
    )
    _check_cache_size(student, spec, len(collection.train), len(collection.val), config.views)
    teacher_preprocessing = bb.Preprocessing.from_dict(teacher.info["preprocessing"])
    data = yield from _cache_data(teacher_model, teacher_preprocessing, student, spec, collection, config, clock, stop)
    yield from _teacher_changes(teacher, collection, data.teacher_val_logits)
    return Prepared(teacher, teacher_model, spec, collection, data)


def _check_cache_size(student: Classifier, spec: StudentSpec, num_train: int, num_val: int, views: int) -> None:
    shape = boundary_shape(student.backbone, spec.frozen, spec.input_size)
    needed = cache_bytes(shape, num_train, views) + cache_bytes(shape, num_val, 1)
    if needed > MAX_CACHE_BYTES:
        raise TlappError(
            f"The cached views of student {spec.name} would need {needed / 1024**3:.1f} GB of memory "
            f"(limit {MAX_CACHE_BYTES / 1024**3:.0f} GB).",
            "Use fewer views per image, or a student with more frozen stages or a smaller input.",
        )


def _cache_data(
    teacher_model: Classifier,
    teacher_preprocessing: bb.Preprocessing,
    student: Classifier,
    spec: StudentSpec,
    collection: ImageCollection,
    config: DistillConfig,
    clock: Clock,
    stop: threading.Event | None,
) -> Generator[Progress, None, TrainingData]:
    """Decode every image once, then compute the teacher's logits and the student's activations once per view."""
    paths = [s.path for s in collection.train] + [s.path for s in collection.val]
    names = [s.relpath for s in collection.train] + [s.relpath for s in collection.val]
    images: list[Image.Image] = yield from _progress(
        _stage(iter_decode(paths, names), "decode", len(paths)), clock, "decoding images"
    )
    train_images, val_images = images[: len(collection.train)], images[len(collection.train) :]

    student_preprocessing = spec.preprocessing()
    views = yield from _progress(
        iter_view_set(
            teacher_model, teacher_preprocessing, student, spec.frozen, student_preprocessing,
            train_images, config.views, seed=config.seed, stop=stop,
        ),
        clock, f"labelling {config.views} view(s) of each training image with the teacher",
    )
    teacher_val = iter_teacher_logits(teacher_model, val_images, teacher_preprocessing.eval_transform(), stop)
    teacher_val_logits = yield from _progress(
        _stage(teacher_val, "teacher", len(val_images)), clock, "teacher predictions on the validation images"
    )
    student_val = iter_features(
        student.backbone, spec.frozen, val_images, [student_preprocessing.eval_transform()],
        batch_size=CACHE_BATCH_SIZE, stop=stop,
    )
    val_cache = yield from _progress(
        _stage(student_val, "features", len(val_images)), clock, "student features of the validation images"
    )
    return TrainingData(
        views=views,
        labels=torch.tensor([s.label for s in collection.train]),
        val_cache=val_cache,
        val_labels=torch.tensor([s.label for s in collection.val]),
        teacher_val_logits=teacher_val_logits,
    )


def _teacher_changes(teacher: Run, collection: ImageCollection, val_logits: torch.Tensor) -> Iterator[Message]:
    """Warn when the recomputed teacher predictions differ from those in its evaluation.json."""
    stored = {sample["relpath"]: sample["predicted"] for sample in teacher.evaluation.get("samples", [])}
    if not stored:
        return
    predicted = val_logits.argmax(1).tolist()
    differing = sum(stored.get(sample.relpath) != label for sample, label in zip(collection.val, predicted))
    if differing:
        log.warning("%d of %d teacher predictions differ from %s/evaluation.json", differing, len(predicted), teacher.path)
        yield Message(
            f"The teacher now predicts {differing} of {len(predicted)} validation images differently than in its "
            "evaluation; the comparison uses the predictions computed now.",
            "warning",
        )


# --- training and saving the students -----------------------------------------------------------


def train_students(
    prepared: Prepared,
    config: DistillConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
    clock: Clock | None = None,
) -> Iterator[Event]:
    """Train the distilled student (and the labels-only one when ``config.baseline``), then save and compare them.

    Uses the first ``config.views`` cached views and ``config.seed`` for the new layers' initial
    weights, the batches and the view draws; ``config.student`` must be the prepared one. Yields
    EpochEnd and Progress events, then Done, or Stopped when ``stop`` was set.
    """
    clock = clock or Clock()
    run_dir = Path(run_dir)
    config.validate()
    if config.student != prepared.spec.name:
        raise ValueError(f"the views were cached for student {prepared.spec.name}, not {config.student}")
    data = prepared.data.first_views(config.views)
    config = replace(config, views=data.views.num_views)
    spec = prepared.spec

    # Both students start from the same weights: build once, copy before either trains.
    torch.manual_seed(config.seed)
    student = spec.build(len(prepared.collection.classes), dropout=config.dropout)
    losses = [(DISTILLED, DistillationLoss(config.temperature, config.alpha))]
    if config.baseline:
        losses.append((LABELS_ONLY, DistillationLoss(config.temperature, 1.0)))
    trainers = [
        StudentTrainer(
            series, copy.deepcopy(student), spec, loss,
            epochs=config.epochs, learning_rate=config.learning_rate, weight_decay=config.weight_decay,
            batch_size=config.batch_size, seed=config.seed, num_images=data.views.student.num_images,
        )
        for series, loss in losses
    ]

    stopped = yield from fit(trainers, data, config.epochs, clock, stop)
    if trainers[0].best_state is None:
        yield Stopped(str(run_dir), None)
        return
    yield Progress("evaluate", 0, 1, clock.elapsed, message="evaluating the best epochs and timing the models on the CPU")
    metrics = _compare_and_save(prepared, trainers, data, config, run_dir, clock, stopped)
    yield Progress("evaluate", 1, 1, clock.elapsed, message="evaluating the best epochs and timing the models on the CPU")
    yield (Stopped if stopped else Done)(str(run_dir), metrics)


def _compare_and_save(
    prepared: Prepared,
    trainers: list[StudentTrainer],
    data: TrainingData,
    config: DistillConfig,
    run_dir: Path,
    clock: Clock,
    stopped: bool,
) -> dict:
    """Evaluate the best epochs, measure every model, write the run folders and return metrics.json's dict."""
    teacher, collection = prepared.teacher, prepared.collection
    trained = [trainer for trainer in trainers if trainer.best_state is not None]
    teacher_preprocessing = bb.Preprocessing.from_dict(teacher.info["preprocessing"])
    teacher_evaluation = evaluate_predictions(data.teacher_val_logits, data.val_labels, collection.classes, collection.val)

    rows = {"teacher": {"name": teacher.name, "run": str(teacher.path), **model_summary(prepared.teacher_model, teacher_evaluation)}}
    models = {"teacher": (prepared.teacher_model, teacher_preprocessing.input_size)}
    evaluations, agreements = {}, {}
    for trainer in trained:
        role = ROLES[trainer.series]
        evaluation, val_logits = trainer.evaluate_best(data, collection)
        evaluations[role] = evaluation
        agreements[role] = agreement(val_logits, data.teacher_val_logits)
        rows[role] = {"name": trainer.spec.name, "best_epoch": trainer.best_epoch, **model_summary(trainer.model, evaluation)}
        models[role] = (trainer.model, trainer.spec.input_size)
    for batch_size in (1, 32):
        key = f"latency_ms_batch{batch_size}"
        if config.latency_runs == 0:
            for row in rows.values():
                row[key] = None
            continue
        for role, milliseconds in measure_latency(models, batch_size, runs=config.latency_runs).items():
            rows[role][key] = round(milliseconds, 3)

    metrics = _metrics(rows, agreements, evaluations, trained, collection, config, clock, stopped)
    for trainer in trained:
        role = ROLES[trainer.series]
        if trainer.series == DISTILLED:
            folder, own_metrics = run_dir, metrics
        else:
            folder = run_dir / WITHOUT_TEACHER_DIR
            own_metrics = {**rows[role], "agreement": agreements[role], "epochs_run": len(trainer.history), "stopped_early": stopped}
        save_run_files(
            folder,
            model=trainer.model,
            info=_student_info(trainer, teacher, collection, config, run_dir),
            report=collection.report.to_dict(),
            history=trainer.history,
            metrics=own_metrics,
            evaluation=evaluations[role],
        )
    return metrics


def _metrics(rows, agreements, evaluations, trained, collection, config, clock, stopped) -> dict:
    """Return metrics.json of the distilled run: its own numbers at the top, then one dict per model."""
    student = rows["student"]
    metrics = {
        "val_accuracy": student["val_accuracy"],
        "balanced_accuracy": student["balanced_accuracy"],
        "val_loss": evaluations["student"]["loss"],
        "best_epoch": student["best_epoch"],
        "epochs_run": len(trained[0].history),
        "train_seconds": round(clock.elapsed, 2),
        "student_name": student["name"],
        "total_params": student["params"],
        "num_classes": len(collection.classes),
        "num_train_images": len(collection.train),
        "num_val_images": len(collection.val),
        "views": config.views,
        "temperature": config.temperature,
        "alpha": config.alpha,
        "stopped_early": stopped,
        **rows,
        "agreement": agreements["student"],
        "compression": rows["teacher"]["params"] / student["params"],
    }
    for batch_size in (1, 32):
        key = f"latency_ms_batch{batch_size}"
        measured = student[key] is not None
        metrics[f"speedup_batch{batch_size}"] = rows["teacher"][key] / student[key] if measured else None
    if "student_without_teacher" in agreements:
        metrics["agreement_without_teacher"] = agreements["student_without_teacher"]
    return metrics


def _student_info(trainer: StudentTrainer, teacher: Run, collection: ImageCollection, config: DistillConfig, run_dir: Path) -> dict:
    """Return the run.json dict of one student; ``tlapp.runs.build_model`` rebuilds it from "student_spec"."""
    spec = trainer.spec
    trainable, total = bb.count_params(trainer.model)
    distilled = trainer.series == DISTILLED
    return {
        "task": "classification",
        "model_type": "student",
        "name": run_dir.name if distilled else f"{run_dir.name} (labels only)",
        "series": trainer.series,
        "student": spec.name,
        "student_spec": spec.to_dict(),
        "teacher": str(teacher.path.resolve()) if distilled else None,
        "config": config.to_dict(),
        "classes": collection.classes,
        "preprocessing": spec.preprocessing().to_dict(),
        "backbone": spec.backbone,
        "frozen_stages": spec.frozen,
        "trainable_params": trainable,
        "total_params": total,
        "dataset": str(collection.source or collection.root),
        # A student can teach in turn; its own config does not hold the split settings, so record them.
        "split": dict(zip(("seed", "val_fraction"), split_settings(teacher))),
    }


# --- the whole job --------------------------------------------------------------------------------


def distill(
    teacher_run: str | Path | Run | None,
    config: DistillConfig,
    run_dir: str | Path,
    stop: threading.Event | None = None,
) -> Iterator[Event]:
    """Distil a teacher run into ``config.student``, yielding events; each is also appended to ``run_dir/events.jsonl``.

    ``teacher_run``, when given, replaces ``config.teacher``. Raises TlappError for problems the
    user can fix: invalid settings, a run that cannot be a teacher, a changed dataset, or a
    student whose weights are not here.
    """
    run_dir = Path(run_dir)
    if teacher_run:
        config = replace(config, teacher=str(teacher_run.path if isinstance(teacher_run, Run) else teacher_run))
    if not config.teacher:
        raise TlappError("No teacher run was given.", "Choose a finished classification run as the teacher.")
    # Problems in the settings fail before the run folder exists, so a corrected rerun can use the same folder.
    config.validate()
    check_teacher(config.teacher)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "events.jsonl", "a", encoding="utf-8") as log_file:
        for event in _distill_steps(config, run_dir, stop):
            log_file.write(json.dumps(to_dict(event)) + "\n")
            log_file.flush()
            yield event


def _distill_steps(config: DistillConfig, run_dir: Path, stop: threading.Event | None) -> Iterator[Event]:
    clock = Clock()
    try:
        prepared = yield from prepare(config.teacher, config, stop, clock)
    except StopRequested:
        yield Stopped(str(run_dir), None)
        return
    yield from train_students(prepared, config, run_dir, stop, clock)


def run_distillation(
    teacher_run: str | Path | Run | None, config: DistillConfig, run_dir: str | Path, stop=None, on_event=None
) -> dict:
    """Run ``distill`` to the end and return the metrics (``{}`` when stopped before any epoch)."""
    metrics: dict = {}
    for event in distill(teacher_run, config, run_dir, stop):
        if on_event:
            on_event(event)
        if isinstance(event, (Done, Stopped)):
            metrics = event.metrics or {}
    return metrics
