"""A run is a folder: weights, labels, preprocessing, configuration, report, history and metrics.

Files of a classification run:
- ``model.pt``: the state dict of the whole classifier (loads with ``torch.load(weights_only=True)``);
- ``run.json``: task, configuration, class names, preprocessing, backbone, frozen stages, dataset;
- ``report.json``: the dataset report; ``history.json``: one dict per epoch;
- ``metrics.json``: the summary numbers; ``evaluation.json``: per-class scores, confusion matrix and
  every validation image with its probabilities; ``events.jsonl``: every event, appended live.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from tlapp.errors import TlappError
from tlapp.events import from_dict
from tlapp.features import frozen_forward
from tlapp.images import load_rgb

log = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
INFO_FILE = "run.json"
# The settings a run started with, written before it trains, because run.json only exists once a model does.
CONFIG_FILE = "config.json"
FINAL_EVENT_KINDS = {"done", "stopped", "failed"}


def _write_json(path: Path, data) -> None:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def _read_json(path: Path, default=None):
    if not path.is_file():
        return default
    return json.loads(path.read_text(encoding="utf-8"))


def save_run_files(
    run_dir: Path,
    *,
    model: nn.Module,
    info: dict,
    report: dict,
    history: list[dict],
    metrics: dict,
    evaluation: dict | None = None,
) -> None:
    """Write every file of a finished (or stopped) run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), run_dir / MODEL_FILE)
    info = {"name": run_dir.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info}
    _write_json(run_dir / INFO_FILE, info)
    _write_json(run_dir / "report.json", report)
    _write_json(run_dir / "history.json", history)
    _write_json(run_dir / "metrics.json", metrics)
    if evaluation is not None:
        _write_json(run_dir / "evaluation.json", evaluation)


@dataclass
class Run:
    """A run folder read back from disk. ``info`` is ``run.json``; missing files read as empty."""

    path: Path
    info: dict
    metrics: dict = field(default_factory=dict)
    history: list = field(default_factory=list)
    evaluation: dict = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> str:
        return self.info.get("task", "classification")

    @property
    def classes(self) -> list[str]:
        return list(self.info.get("classes", []))

    @property
    def finished(self) -> bool:
        """True when the run wrote its model, i.e. it can predict."""
        return (self.path / MODEL_FILE).is_file()


def load_run(path: str | Path) -> Run:
    """Read a run folder; raise TlappError when it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise TlappError(f"There is no run folder {path}.", "Pass the folder given to --out when training.")
    info = _read_json(path / INFO_FILE)
    if info is None:
        raise TlappError(
            f"{path} is not a finished run: {INFO_FILE} is missing.",
            "Pass the folder given to --out when training, after training has finished.",
        )
    return Run(
        path=path,
        info=info,
        metrics=_read_json(path / "metrics.json", {}),
        history=_read_json(path / "history.json", []),
        evaluation=_read_json(path / "evaluation.json", {}),
        report=_read_json(path / "report.json", {}),
    )


def check_new_run_dir(run_dir: str | Path) -> None:
    """Raise TlappError when ``run_dir`` exists and is not empty, so a new run never overwrites an old one."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise TlappError(f"The run folder {run_dir} is a file.", "Choose a folder name for --out.")
    if run_dir.is_dir() and any(run_dir.iterdir()):
        raise TlappError(
            f"The run folder {run_dir} already contains files, perhaps an earlier run.",
            "Choose a new folder for --out, or delete this one first.",
        )


def write_config(run_dir: str | Path, config: dict) -> None:
    """Write the settings a run starts with, so a run stopped before its first epoch still shows them."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / CONFIG_FILE, config)


def read_config(run_dir: str | Path) -> dict:
    """Return the settings a run started with, or an empty dict when they were not recorded."""
    try:
        config = _read_json(Path(run_dir) / CONFIG_FILE, {})
    except ValueError as error:
        log.warning("invalid %s in %s, showing no settings: %s", CONFIG_FILE, run_dir, error)
        return {}
    return config if isinstance(config, dict) else {}


def read_events(path: str | Path) -> list:
    """Return the events a run logged so far (empty when it logged none)."""
    events_file = Path(path) / "events.jsonl"
    if not events_file.is_file():
        return []
    events = []
    for line in events_file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                events.append(from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable event line in %s", events_file)
    return events


def list_runs(runs_dir: str | Path) -> list[Run]:
    """Return the finished runs under ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    runs = [load_run(folder) for folder in runs_dir.iterdir() if (folder / INFO_FILE).is_file()]
    return sorted(runs, key=lambda run: run.info.get("created", ""), reverse=True)


def _build_backbone_classifier(info: dict) -> nn.Module:
    # Imported here because training imports this module.
    from tlapp.backbones import create_backbone
    from tlapp.training import Classifier

    backbone = create_backbone(info["backbone"], pretrained=False)
    return Classifier(backbone, len(info["classes"]), info.get("config", {}).get("dropout", 0.2))


# How to rebuild a run's network before loading model.pt, keyed by run.json's "model_type".
# Other modules register their own types (the distillation students, for example).
MODEL_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {"classifier": _build_backbone_classifier}


def build_model(info: dict) -> nn.Module:
    """Rebuild the untrained network described by a run.json dict."""
    model_type = info.get("model_type", "classifier")
    if model_type not in MODEL_BUILDERS:
        # The registering module may not be imported yet.
        import tlapp.distillation  # noqa: F401
    return MODEL_BUILDERS[model_type](info)


class Predictor:
    """A trained classifier loaded from a run folder, with the preprocessing it was trained with."""

    def __init__(self, run: Run):
        from tlapp.backbones import Preprocessing

        self.run = run
        self.classes = run.classes
        self.preprocessing = Preprocessing.from_dict(run.info["preprocessing"])
        self.model = build_model(run.info)
        state = torch.load(run.path / MODEL_FILE, map_location="cpu", weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().to(memory_format=torch.channels_last)
        self.frozen = run.info.get("frozen_stages", 0)
        self.transform = self.preprocessing.eval_transform()
        self._lock = threading.Lock()

    def _tensor(self, image: str | Path | bytes | Image.Image, name: str | None) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = load_rgb(image, name=name, max_side=1024)
        return self.transform(image)

    def predict_probs(self, images: Sequence, names: Sequence[str] | None = None) -> np.ndarray:
        """Return class probabilities, one row per image (rows follow ``self.classes``)."""
        names = names or [None] * len(images)
        batch = torch.stack([self._tensor(image, name) for image, name in zip(images, names)])
        return self.logits(batch).softmax(1).numpy()

    def logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the logits of a preprocessed batch."""
        # One model instance serves every page session; inference on it is serialised.
        with self._lock, torch.inference_mode():
            # The frozen stages run as they did when training cached their activations.
            activations = frozen_forward(self.model.backbone, self.frozen, batch)
            return self.model.forward_from(activations, self.frozen).float()

    def predict(self, images: Sequence, names: Sequence[str] | None = None, top: int = 5) -> list[list[tuple[str, float]]]:
        """Return the ``top`` classes with their probabilities for each image, most likely first."""
        results = []
        for row in self.predict_probs(images, names):
            order = np.argsort(row)[::-1][:top]
            results.append([(self.classes[i], float(row[i])) for i in order])
        return results


_PREDICTORS: dict[tuple[str, float], Predictor] = {}


def load_predictor(run_dir: str | Path) -> Predictor:
    """Return the Predictor for a run, reusing a loaded one while ``model.pt`` is unchanged."""
    run = load_run(run_dir)
    if run.task != "classification" or not run.finished:
        raise TlappError(
            f"Run '{run.name}' cannot classify images (task {run.task}, model saved: {run.finished}).",
            "Choose a finished classification run.",
        )
    key = (str(run.path.resolve()), (run.path / MODEL_FILE).stat().st_mtime)
    if key not in _PREDICTORS:
        _PREDICTORS[key] = Predictor(run)
    return _PREDICTORS[key]
