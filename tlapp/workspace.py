"""The app's state on disk: one workspace per participant, holding datasets and runs.

Layout under the root (``TLAPP_WORKSPACE``, default ``./workspace``)::

    <workspace id>/datasets/<name>/<class>/<image>   uploaded or built datasets
    <workspace id>/uploads/                          zips while they are being extracted
    <workspace id>/runs/<name>/                      one folder per training run (see tlapp.runs)
    <workspace id>/state.json                        the chosen dataset

The workspace id travels in the page address, so a reload finds the same data. Server-side
library datasets live in ``TLAPP_DATASETS``, one subfolder per dataset, and are read, never
written. Every name that comes from a user (file, class, dataset) is sanitised before it touches
the disk, and nothing is deleted or overwritten when an upload is rejected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

from tlapp.datasets import TRAIN_FOLDER_NAMES, VAL_FOLDER_NAMES, extract_zip, is_system_file
from tlapp.errors import TlappError
from tlapp.images import ImageError, has_image_extension, load_rgb

log = logging.getLogger(__name__)

ROOT_ENV = "TLAPP_WORKSPACE"
LIBRARY_ENV = "TLAPP_DATASETS"
DEFAULT_ROOT = "workspace"

MAX_NAME_LENGTH = 80
# Longer side, in pixels, of the copy add_images decodes to check an upload. Decoding is the
# only reliable check, and a small target lets JPEG decode at reduced scale.
UPLOAD_CHECK_SIDE = 64
_WORKSPACE_ID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
# Characters that are unsafe in file names on at least one of Linux, macOS and Windows.
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}

LIBRARY, WORKSPACE = "library", "workspace"


def workspace_root() -> Path:
    """Return the folder that contains every workspace (``TLAPP_WORKSPACE`` or ``./workspace``)."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def library_root() -> Path | None:
    """Return the instructor's dataset folder (``TLAPP_DATASETS``), or None when it is not set."""
    value = os.environ.get(LIBRARY_ENV)
    return Path(value).expanduser() if value else None


def new_workspace_id() -> str:
    """Return a fresh random workspace id, hard to guess so participants don't see each other's data."""
    return secrets.token_hex(6)


def is_valid_workspace_id(value: str | None) -> bool:
    return bool(value) and bool(_WORKSPACE_ID.match(value))


def safe_name(text: str, what: str = "name") -> str:
    """Turn user text into a safe file or folder name, or raise TlappError when nothing usable is left.

    Keeps letters of any script, digits, spaces and punctuation, but not path separators or the
    characters Windows forbids. Drops leading dots, because dataset loading ignores hidden names,
    and trailing dots and spaces, because Windows strips them.
    """
    name = unicodedata.normalize("NFC", str(text))
    name = _UNSAFE_CHARACTERS.sub("_", name)
    name = re.sub(r"\s+", " ", name).strip()
    name = name.lstrip(".").rstrip(". ").strip()
    name = name[:MAX_NAME_LENGTH].rstrip(". ")
    if not name or name.strip("_") == "" or name.lower() in _WINDOWS_RESERVED or is_system_file(name):
        raise TlappError(
            f"'{text}' cannot be used as a {what}.",
            f"Choose a {what} made of letters or digits, for example 'cats'.",
        )
    return name


def _new_run_dir(runs_dir: Path, label: str) -> Path:
    """Create and return an empty run folder in ``runs_dir`` named by date, time and ``label``."""
    stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
    path = _unique_path(runs_dir, f"{stamp}_{safe_name(label, 'run name')}")
    path.mkdir(parents=True)
    return path


def _run_dirs(runs_dir: Path) -> list[Path]:
    """Return the run folders in ``runs_dir``, newest first (their names start with date and time)."""
    folders = [p for p in runs_dir.iterdir() if p.is_dir() and not is_system_file(p.name)]
    return sorted(folders, key=lambda p: p.name, reverse=True)


def _find_run(runs_dir: Path, name: str, kind: str) -> Path:
    """Return the run folder ``name`` in ``runs_dir``; ``kind`` ("run", "segmentation run") is for the error."""
    path = runs_dir / safe_name(name, "run name")
    if not path.is_dir():
        raise TlappError(f"There is no {kind} '{name}' in this workspace.", "Choose a run from the list.")
    return path


def _unique_path(folder: Path, name: str) -> Path:
    """Return ``folder/name``, or ``folder/name-2``, ``-3``... when that already exists."""
    candidate = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    number = 2
    while candidate.exists():
        candidate = folder / f"{stem}-{number}{suffix}"
        number += 1
    return candidate


@dataclass(frozen=True)
class DatasetChoice:
    """A dataset the user can train on: a folder of their workspace or of the instructor's library."""

    source: str  # WORKSPACE or LIBRARY
    name: str
    path: Path

    @property
    def label(self) -> str:
        return f"{self.name} (library)" if self.source == LIBRARY else self.name

    def to_dict(self) -> dict:
        return {"source": self.source, "name": self.name}


@dataclass
class AddedImages:
    """Outcome of :meth:`Workspace.add_images` for each uploaded file."""

    saved: list[str] = field(default_factory=list)  # file names as stored in the class folder
    duplicates: list[str] = field(default_factory=list)  # identical to a file already there
    rejected: list[dict] = field(default_factory=list)  # [{"file", "reason"}]


class Workspace:
    """One participant's datasets, runs and chosen dataset, in ``root/<id>/``."""

    def __init__(self, workspace_id: str, root: Path | None = None):
        if not is_valid_workspace_id(workspace_id):
            raise TlappError(
                f"'{workspace_id}' is not a valid workspace id.",
                "Open the app without '?ws=' in the address to get a new workspace.",
            )
        self.id = workspace_id
        self.path = (root or workspace_root()) / workspace_id
        self.datasets_dir = self.path / "datasets"
        self.uploads_dir = self.path / "uploads"
        self.runs_dir = self.path / "runs"
        for folder in (self.datasets_dir, self.uploads_dir, self.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # --- datasets -------------------------------------------------------------------------

    def list_datasets(self) -> list[str]:
        """Return the names of this workspace's datasets, sorted."""
        return sorted(p.name for p in self.datasets_dir.iterdir() if p.is_dir() and not is_system_file(p.name))

    def dataset_dir(self, name: str) -> Path:
        """Return the folder of dataset ``name``; raise TlappError when there is none."""
        path = self.datasets_dir / safe_name(name, "dataset name")
        if not path.is_dir():
            raise TlappError(f"There is no dataset '{name}' in this workspace.", "Upload or create it on the Data page.")
        return path

    def save_zip(self, filename: str, data: bytes | BinaryIO) -> str:
        """Store an uploaded zip and extract it into a new dataset folder; return the dataset name.

        The name comes from the zip's file name, made unique. A file that is not a usable zip
        raises DatasetError and leaves the workspace as it was. The zip itself is deleted once
        extracted, so a large upload does not take its size twice on disk.
        """
        name = _unique_path(self.datasets_dir, safe_name(Path(filename).stem, "dataset name")).name
        upload = self.uploads_dir / f"{name}.zip"
        _write_upload(upload, data)
        dataset = self.datasets_dir / name
        try:
            extract_zip(upload, dataset)
        except Exception:
            shutil.rmtree(dataset, ignore_errors=True)
            raise
        finally:
            upload.unlink(missing_ok=True)
        log.info("workspace %s: extracted %s into dataset %s", self.id, filename, name)
        return name

    def class_root(self, dataset: str) -> Path | None:
        """Return the folder whose subfolders are the classes of ``dataset``.

        Wrapper folders (a folder whose only visible content is one folder, as zips made from a
        folder have) are stepped into. Returns None for a dataset with train/ and val/ folders,
        whose classes exist twice and cannot be extended class by class.
        """
        folder = self.dataset_dir(dataset)
        visible = _visible(folder)
        while len(visible) == 1 and _is_wrapper(visible[0]):
            folder = visible[0]
            visible = _visible(folder)
        split_names = {*TRAIN_FOLDER_NAMES, *VAL_FOLDER_NAMES}
        if any(p.is_dir() and p.name.lower() in split_names for p in visible):
            return None
        return folder

    def create_class(self, dataset: str, class_name: str) -> str:
        """Create the folder of class ``class_name`` (and the dataset when new); return the stored name."""
        label = safe_name(class_name, "class name")
        dataset_path = self.datasets_dir / safe_name(dataset, "dataset name")
        dataset_path.mkdir(parents=True, exist_ok=True)
        root = self.class_root(dataset)
        if root is None:
            raise TlappError(
                f"Dataset '{dataset}' has train/ and val/ folders, so classes cannot be added one by one.",
                "Add the images to both folders in your zip and upload it again, or build a new dataset.",
            )
        (root / label).mkdir(exist_ok=True)
        return label

    def list_classes(self, dataset: str) -> dict[str, int]:
        """Return each class folder of a dataset with its number of image files (empty when pre-split)."""
        root = self.class_root(dataset)
        if root is None:
            return {}
        classes = {}
        for folder in sorted(root.iterdir()):
            if folder.is_dir() and not is_system_file(folder.name):
                classes[folder.name] = sum(1 for f in folder.iterdir() if f.is_file() and has_image_extension(f))
        return classes

    def add_images(self, dataset: str, class_name: str, files: list[tuple[str, bytes | BinaryIO]]) -> AddedImages:
        """Save uploaded images into a class folder, creating the class when needed.

        ``files`` contains (file name, content) pairs. A file without an image extension, or one
        that does not decode (empty, HTML saved as .jpg, truncated...), is rejected with the
        reason from :func:`tlapp.images.load_rgb` and not stored. A file identical to one already
        in the class is not stored twice; a different file with a taken name gets a numbered name.
        """
        label = self.create_class(dataset, class_name)
        folder = self.class_root(dataset) / label
        existing = {_file_digest(path): path.name for path in folder.iterdir() if path.is_file()}
        result = AddedImages()
        for filename, content in files:
            try:
                name = safe_name(Path(str(filename)).name, "file name")
            except TlappError as error:
                result.rejected.append({"file": str(filename), "reason": error.message})
                continue
            if not has_image_extension(name):
                result.rejected.append({"file": name, "reason": "not an image file name (expected .jpg, .png, ...)"})
                continue
            data = content if isinstance(content, bytes) else content.read()
            digest = hashlib.sha256(data).hexdigest()
            if digest in existing:
                result.duplicates.append(name)
                continue
            try:
                load_rgb(data, name=name, max_side=UPLOAD_CHECK_SIDE)
            except ImageError as error:
                result.rejected.append({"file": name, "reason": error.reason})
                continue
            target = _unique_path(folder, name)
            target.write_bytes(data)
            existing[digest] = target.name
            result.saved.append(target.name)
        log.info("workspace %s: added %d images to %s/%s", self.id, len(result.saved), dataset, label)
        return result

    def delete_dataset(self, name: str) -> None:
        path = self.dataset_dir(name)
        shutil.rmtree(path)
        (self.uploads_dir / f"{path.name}.zip").unlink(missing_ok=True)
        choice = self.selected_dataset()
        if choice is not None and choice.source == WORKSPACE and choice.name == path.name:
            self._write_state({**self._read_state(), "dataset": None})
        log.info("workspace %s: deleted dataset %s", self.id, path.name)

    def library(self) -> list[DatasetChoice]:
        """Return the instructor's datasets: each visible subfolder of ``TLAPP_DATASETS``."""
        root = library_root()
        if root is None or not root.is_dir():
            return []
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not is_system_file(p.name))
        return [DatasetChoice(LIBRARY, folder.name, folder) for folder in folders]

    def choices(self) -> list[DatasetChoice]:
        """Return every dataset the user can pick: their own first, then the library's."""
        own = [DatasetChoice(WORKSPACE, name, self.datasets_dir / name) for name in self.list_datasets()]
        return own + self.library()

    def select_dataset(self, choice: DatasetChoice) -> None:
        """Remember ``choice`` as the dataset the Train page uses."""
        self.remember_choice("dataset", choice)

    def selected_dataset(self) -> DatasetChoice | None:
        """Return the remembered dataset, or None when none was chosen or it no longer exists."""
        return self.remembered_choice("dataset", self.choices())

    def remember_choice(self, key: str, choice: DatasetChoice) -> None:
        """Store ``choice`` under ``key`` in the workspace state, which survives server restarts."""
        self._write_state({**self._read_state(), key: choice.to_dict()})

    def remembered_choice(self, key: str, choices: list[DatasetChoice]) -> DatasetChoice | None:
        """Return the choice stored under ``key`` if it is still among ``choices``, else None."""
        chosen = self._read_state().get(key)
        if not chosen:
            return None
        for choice in choices:
            if choice.source == chosen.get("source") and choice.name == chosen.get("name"):
                return choice
        return None

    # --- runs -----------------------------------------------------------------------------

    def new_run_dir(self, label: str) -> Path:
        """Create and return an empty run folder named by date, time and ``label`` (e.g. the backbone)."""
        return _new_run_dir(self.runs_dir, label)

    def run_dirs(self) -> list[Path]:
        """Return every run folder, finished or not, newest first."""
        return _run_dirs(self.runs_dir)

    def run_dir(self, name: str) -> Path:
        return _find_run(self.runs_dir, name, "run")

    def delete_run(self, name: str) -> None:
        shutil.rmtree(self.run_dir(name))
        log.info("workspace %s: deleted run %s", self.id, name)

    # --- state ----------------------------------------------------------------------------

    def _read_state(self) -> dict:
        try:
            return json.loads((self.path / "state.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("workspace %s: state.json is unreadable; starting from an empty state", self.id)
            return {}

    def _write_state(self, state: dict) -> None:
        # Write then rename, so a crash never leaves a half-written state file.
        temporary = self.path / "state.json.tmp"
        temporary.write_text(json.dumps(state, indent=2), encoding="utf-8")
        os.replace(temporary, self.path / "state.json")


def dataset_fingerprint(path: Path) -> tuple[int, int, float]:
    """Return (file count, total bytes, latest modification time) of a folder tree.

    Pages use it as a cache key: adding, removing or replacing a file changes it.
    """
    count, size, latest = 0, 0, 0.0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                info = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            count += 1
            size += info.st_size
            latest = max(latest, info.st_mtime)
    return count, size, latest


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not is_system_file(p.name)]


def _is_wrapper(path: Path) -> bool:
    """Return whether ``path`` is a folder that contains only folders, at least one (a class folder contains images)."""
    if not path.is_dir():
        return False
    children = _visible(path)
    return bool(children) and all(child.is_dir() for child in children)


def _write_upload(path: Path, data: bytes | BinaryIO) -> None:
    """Write bytes or a file object to ``path`` in chunks, so a large zip is never copied in memory."""
    with open(path, "wb") as out:
        if isinstance(data, (bytes, bytearray)):
            out.write(data)
        else:
            data.seek(0)
            shutil.copyfileobj(data, out, 1 << 20)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# --- segmentation ---------------------------------------------------------------------------

SEGMENTATION_FOLDER = "segmentation"
SEGMENTATION_IMAGES, SEGMENTATION_MASKS = "images", "masks"


@dataclass
class AddedPairFiles:
    """Outcome of :meth:`SegmentationStore.add_files` for each uploaded file."""

    images: list[str] = field(default_factory=list)  # names as stored in images/
    masks: list[str] = field(default_factory=list)  # names as stored in masks/
    replaced: list[str] = field(default_factory=list)  # "images/x.png" or "masks/x.png" overwritten by a new upload
    rejected: list[dict] = field(default_factory=list)  # [{"file", "reason"}]


class SegmentationStore:
    """A workspace's segmentation datasets and runs, kept apart from its classification data.

    Layout under the workspace::

        segmentation/datasets/<name>/images/...   uploaded images (or whatever layout a zip has)
        segmentation/datasets/<name>/masks/...    their masks, paired by file name
        segmentation/runs/<name>/                 one folder per segmentation run

    A folder with images/ and masks/ would read as a two-class classification dataset, and the
    classification pages expect classification runs, so neither goes into the classification
    folders. The chosen dataset is stored in the workspace's state.json under its own key.
    Library datasets are the same as for classification: each folder of ``TLAPP_DATASETS``.
    """

    STATE_KEY = "segmentation_dataset"

    def __init__(self, workspace: Workspace):
        self.workspace = workspace
        self.path = workspace.path / SEGMENTATION_FOLDER
        self.datasets_dir = self.path / "datasets"
        self.runs_dir = self.path / "runs"
        for folder in (self.datasets_dir, self.runs_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # --- datasets ---------------------------------------------------------------------------

    def list_datasets(self) -> list[str]:
        """Return the names of this workspace's segmentation datasets, sorted."""
        return sorted(p.name for p in self.datasets_dir.iterdir() if p.is_dir() and not is_system_file(p.name))

    def dataset_dir(self, name: str) -> Path:
        """Return the folder of segmentation dataset ``name``; raise TlappError when there is none."""
        path = self.datasets_dir / safe_name(name, "dataset name")
        if not path.is_dir():
            raise TlappError(
                f"There is no segmentation dataset '{name}' in this workspace.",
                "Upload its images and masks on the Segmentation page.",
            )
        return path

    def save_zip(self, filename: str, data: bytes | BinaryIO) -> str:
        """Extract an uploaded zip into a new segmentation dataset folder; return the dataset name.

        Works like :meth:`Workspace.save_zip`: the name comes from the zip's file name, made
        unique, an unusable zip raises DatasetError and leaves nothing behind, and the zip is
        deleted once extracted. Pairing the files is left to the segmentation engine.
        """
        name = _unique_path(self.datasets_dir, safe_name(Path(filename).stem, "dataset name")).name
        upload = self.workspace.uploads_dir / f"segmentation_{name}.zip"
        _write_upload(upload, data)
        dataset = self.datasets_dir / name
        try:
            extract_zip(upload, dataset)
        except Exception:
            shutil.rmtree(dataset, ignore_errors=True)
            raise
        finally:
            upload.unlink(missing_ok=True)
        log.info("workspace %s: extracted %s into segmentation dataset %s", self.workspace.id, filename, name)
        return name

    def add_files(
        self,
        dataset: str,
        images: list[tuple[str, bytes | BinaryIO]],
        masks: list[tuple[str, bytes | BinaryIO]],
    ) -> AddedPairFiles:
        """Save uploaded images into ``<dataset>/images/`` and masks into ``<dataset>/masks/``.

        Creates the dataset when it is new. Pairs are found later by file name, so a file whose
        name is taken replaces the stored one (that is how a corrected mask gets in). Files
        without an image extension, or whose name cannot be stored, are rejected with a reason.
        """
        root = self.datasets_dir / safe_name(dataset, "dataset name")
        result = AddedPairFiles()
        for folder_name, files, saved in ((SEGMENTATION_IMAGES, images, result.images), (SEGMENTATION_MASKS, masks, result.masks)):
            folder = root / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            for filename, content in files:
                try:
                    name = safe_name(Path(str(filename)).name, "file name")
                except TlappError as error:
                    result.rejected.append({"file": str(filename), "reason": error.message})
                    continue
                if not has_image_extension(name):
                    result.rejected.append({"file": name, "reason": "not an image file name (expected .png, .jpg, ...)"})
                    continue
                target = folder / name
                if target.exists():
                    result.replaced.append(f"{folder_name}/{name}")
                _write_upload(target, content)
                saved.append(name)
        log.info(
            "workspace %s: added %d images and %d masks to segmentation dataset %s",
            self.workspace.id, len(result.images), len(result.masks), root.name,
        )
        return result

    def delete_dataset(self, name: str) -> None:
        path = self.dataset_dir(name)
        chosen = self.workspace._read_state().get(self.STATE_KEY) or {}
        shutil.rmtree(path)
        if chosen.get("source") == WORKSPACE and chosen.get("name") == path.name:
            self.workspace._write_state({**self.workspace._read_state(), self.STATE_KEY: None})
        log.info("workspace %s: deleted segmentation dataset %s", self.workspace.id, path.name)

    def choices(self) -> list[DatasetChoice]:
        """Return every segmentation dataset the user can pick: their own first, then the library's."""
        own = [DatasetChoice(WORKSPACE, name, self.datasets_dir / name) for name in self.list_datasets()]
        return own + self.workspace.library()

    def select_dataset(self, choice: DatasetChoice) -> None:
        """Remember ``choice`` as the dataset segmentation trains on."""
        self.workspace.remember_choice(self.STATE_KEY, choice)

    def selected_dataset(self) -> DatasetChoice | None:
        """Return the remembered segmentation dataset, or None when none was chosen or it is gone."""
        return self.workspace.remembered_choice(self.STATE_KEY, self.choices())

    # --- runs -------------------------------------------------------------------------------

    def new_run_dir(self, label: str) -> Path:
        """Create and return an empty run folder named by date, time and ``label`` (e.g. the backbone)."""
        return _new_run_dir(self.runs_dir, label)

    def run_dirs(self) -> list[Path]:
        """Return every segmentation run folder, finished or not, newest first."""
        return _run_dirs(self.runs_dir)

    def run_dir(self, name: str) -> Path:
        return _find_run(self.runs_dir, name, "segmentation run")

    def delete_run(self, name: str) -> None:
        shutil.rmtree(self.run_dir(name))
        log.info("workspace %s: deleted segmentation run %s", self.workspace.id, name)
