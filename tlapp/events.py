"""Events that long work yields: the CLI prints them, pages plot them, tests assert on them."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field


@dataclass
class Progress:
    """Progress inside one step, reported at least every couple of seconds during long steps.

    ``stage`` names the step: "download", "features", "train", "evaluate".
    """

    stage: str
    done: int
    total: int
    elapsed: float  # seconds since the job started
    # Estimated seconds until this step ends; for "train", until the last epoch ends.
    eta: float | None = None
    epoch: int | None = None
    message: str = ""
    kind: str = field(default="progress", init=False)


@dataclass
class EpochEnd:
    """Metrics at the end of one epoch. Extra task metrics (IoU, Dice...) go in ``extra``."""

    epoch: int  # 1-based
    epochs: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    elapsed: float
    eta: float | None
    best: bool  # this epoch's checkpoint is the best so far and was saved
    series: str = ""  # which model the curve belongs to when one job trains several (distillation)
    extra: dict = field(default_factory=dict)
    kind: str = field(default="epoch", init=False)


@dataclass
class Message:
    """A line for the user, e.g. a dataset warning or "starting from random weights"."""

    text: str
    level: str = "info"  # "info" or "warning"
    kind: str = field(default="message", init=False)


@dataclass
class Done:
    """The job finished; ``metrics`` is what was written to ``metrics.json``."""

    run_dir: str
    metrics: dict
    kind: str = field(default="done", init=False)


@dataclass
class Stopped:
    """The user stopped the job; the best checkpoint so far is kept when one exists."""

    run_dir: str
    metrics: dict | None
    kind: str = field(default="stopped", init=False)


@dataclass
class Failed:
    """The job ended with an error; ``message`` and ``hint`` are for the user."""

    message: str
    hint: str = ""
    kind: str = field(default="failed", init=False)


Event = Progress | EpochEnd | Message | Done | Stopped | Failed

_KINDS = {cls.__dataclass_fields__["kind"].default: cls for cls in (Progress, EpochEnd, Message, Done, Stopped, Failed)}


def to_dict(event: Event) -> dict:
    """Return a JSON-ready dict with a "kind" key."""
    return asdict(event)


def from_dict(data: dict) -> Event:
    """Rebuild an event written by ``to_dict``."""
    values = dict(data)
    cls = _KINDS[values.pop("kind")]
    return cls(**values)


class StopRequested(Exception):
    """Raised inside a loop when the user asked it to stop; the loop's owner turns it into ``Stopped``."""


# Progress events during a long step come at most this often (seconds). Pages redraw a running
# job every 1.5 s, so a shorter interval would add events that no page shows.
PROGRESS_INTERVAL = 1.0


class Clock:
    """Seconds since a job started, and a rate limiter for its progress events."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last_report = 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def due(self) -> bool:
        """Return whether PROGRESS_INTERVAL has passed since the last time this returned True."""
        now = time.perf_counter()
        if now - self.last_report >= PROGRESS_INTERVAL:
            self.last_report = now
            return True
        return False
