"""Turn a folder or zip of class folders into a labelled image collection and a report.

Layout: one folder per class, the folder name is the label. Wrapper folders around the class
folders are unwrapped, and a level holding ``train/`` and ``val/`` (or ``valid/``,
``validation/``, ``test/``) folders is used as the given split. Every file is decoded once here,
so broken files are listed in the report before training starts instead of failing mid-epoch.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import random
import re
import shutil
import stat
import tempfile
import time
import unicodedata
import zipfile
import zlib
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlapp import images
from tlapp.errors import TlappError

logger = logging.getLogger(__name__)

MIN_IMAGES_PER_CLASS = 2  # one for training, one for validation
FEW_IMAGES_WARNING = 5  # classes with fewer usable images get a warning
IMBALANCE_RATIO_WARNING = 5  # largest / smallest class size that triggers a warning
# Decode size for the ingestion check. JPEG then decodes at 1/8 scale, which still reads every
# byte of the data (so truncation is found) and is about 3x faster than 256 px on ants/bees photos.
INGEST_MAX_SIDE = 64

TRAIN_FOLDER_NAMES = ("train", "training")
VAL_FOLDER_NAMES = ("val", "valid", "validation")
TEST_FOLDER_NAMES = ("test", "testing")

# Files and folders that operating systems and tools create next to user files. They are
# skipped without a message and only counted. Names starting with "." (.DS_Store, ._* AppleDouble
# files, .ipynb_checkpoints, .git) are covered by the hidden-name rule.
_SYSTEM_NAMES = {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "$recycle.bin", "system volume information"}


@dataclass
class Sample:
    """One image of the collection."""

    path: Path  # absolute path on disk (inside the extraction folder for a zip)
    label: int
    relpath: str  # path inside the source as the user knows it, e.g. "train/ants/123.jpg"


@dataclass
class DatasetReport:
    """Ingestion summary: class sizes, the split, skipped files and warnings."""

    classes: dict[str, int] = field(default_factory=dict)  # label -> usable images, class-index order
    num_images: int = 0
    skipped: list[dict] = field(default_factory=list)  # [{"file": relpath, "reason": str}]
    warnings: list[str] = field(default_factory=list)
    ignored_system_files: int = 0  # a skipped system folder counts once, whatever it contains
    split: str = "random"  # "given" (train/ and val/ folders) or "random"
    split_counts: dict[str, dict[str, int]] = field(default_factory=lambda: {"train": {}, "val": {}})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ImageCollection:
    """Labelled images split into training and validation samples."""

    root: Path  # folder that contains the class folders, or the train/ and val/ folders
    classes: list[str]  # sorted label names; the index is the label int
    train: list[Sample]
    val: list[Sample]
    report: DatasetReport
    source: Path | None = None
    """The folder or zip that was loaded. Sample relpaths are relative to it, and loading it again gives the same split."""


class DatasetError(TlappError):
    """A collection that cannot be used for training, with the report built so far (or None)."""

    def __init__(self, message: str, hint: str = "", report: DatasetReport | None = None):
        super().__init__(message, hint)
        self.report = report


def is_system_file(name: str) -> bool:
    """Return whether a file or folder name is OS or tool clutter rather than user data."""
    return name.startswith((".", "~$")) or name.lower() in _SYSTEM_NAMES


def load_collection(
    source: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    extract_dir: Path | None = None,
) -> ImageCollection:
    """Load a folder or ``.zip`` of class folders, check every image and split it.

    A zip is extracted into ``extract_dir``. When that is None, it goes into a new
    ``tempfile.mkdtemp(prefix="tlapp-")`` folder that lives until the process exits, because
    the samples' paths point into it. Without a given split, each class is split on its own
    (stratified): ``val_fraction`` of its images, at least one, go to validation. The split
    depends only on ``seed`` and the file names.

    Raises DatasetError when the collection cannot train a classifier; its ``report`` then
    lists what was found.
    """
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(
            f"The validation fraction must be between 0 and 1; got {val_fraction}.",
            "Use a value such as 0.2 (20 % of each class for validation).",
        )
    started = time.perf_counter()
    report = DatasetReport()
    base = _materialise(Path(source).expanduser(), extract_dir, report)
    scan = _scan(base, report)
    decoded = _decode_all(scan.candidates)
    collection = _assemble(scan, decoded, report, val_fraction, seed)
    collection.source = Path(source).expanduser().resolve()
    logger.info(
        "Loaded %d images in %d classes from %s in %.2f s (%d skipped, %d system files ignored)",
        report.num_images,
        len(collection.classes),
        source,
        time.perf_counter() - started,
        len(report.skipped),
        report.ignored_system_files,
    )
    return collection


def inspect(
    source: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    extract_dir: Path | None = None,
) -> DatasetReport:
    """Return the report of :func:`load_collection` for ``source``."""
    return load_collection(source, val_fraction=val_fraction, seed=seed, extract_dir=extract_dir).report


# --- zip extraction -------------------------------------------------------------------------


def extract_zip(zip_path: Path, dest: Path) -> Path:
    """Extract ``zip_path`` into ``dest`` safely and return ``dest``.

    Entries with absolute paths, ``..`` components or symbolic links are not extracted, and
    neither are system files (see :func:`is_system_file`). Raises DatasetError for a file that
    is not a valid zip, a password-protected zip, or one larger than the free disk space.
    """
    _extract_zip(Path(zip_path), Path(dest), DatasetReport())
    return Path(dest)


_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")


def _extract_zip(zip_path: Path, dest: Path, report: DatasetReport) -> None:
    """Extract like :func:`extract_zip`, recording skipped entries and system files in ``report``."""
    dest.mkdir(parents=True, exist_ok=True)
    dest_resolved = dest.resolve()
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _invalid_zip_error(zip_path, exc) from None

    with archive:
        entries = archive.infolist()
        _check_disk_space(zip_path, entries, dest)
        ignored_roots: set[str] = set()
        for info in entries:
            # Zips made on Windows sometimes use backslashes as separators.
            name = info.filename.replace("\\", "/")
            parts = [part for part in name.split("/") if part not in ("", ".")]
            if not parts:
                continue
            if name.startswith("/") or _DRIVE_PREFIX.match(name) or ".." in parts:
                report.skipped.append({"file": name, "reason": "unsafe path in zip (not extracted)"})
                continue
            junk_index = next((i for i, part in enumerate(parts) if is_system_file(part)), None)
            if junk_index is not None:
                ignored_roots.add("/".join(parts[: junk_index + 1]))
                continue
            if stat.S_ISLNK(info.external_attr >> 16):
                report.skipped.append({"file": name, "reason": "symbolic link in zip (not extracted)"})
                continue

            target = dest.joinpath(*parts)
            if not target.resolve().is_relative_to(dest_resolved):
                report.skipped.append({"file": name, "reason": "unsafe path in zip (not extracted)"})
                continue
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            reason = _extract_entry(archive, info, target, zip_path)
            if reason:
                report.skipped.append({"file": "/".join(parts), "reason": reason})
        report.ignored_system_files += len(ignored_roots)


def _extract_entry(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path) -> str | None:
    """Write one entry to ``target``; return a skip reason, or None on success."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    except RuntimeError as exc:
        if "encrypted" in str(exc) or "password" in str(exc):
            raise DatasetError(
                f"{zip_path.name} is password-protected.",
                "Create the zip again without a password.",
            ) from None
        raise
    except NotImplementedError as exc:
        _remove_partial_file(target)
        return f"unsupported zip compression ({exc})"
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        _remove_partial_file(target)
        logger.warning("Corrupt entry %s in %s: %s", info.filename, zip_path, exc)
        return "corrupt entry in zip"
    except OSError as exc:
        _remove_partial_file(target)
        return f"cannot be extracted ({exc.strerror or exc})"
    return None


def _remove_partial_file(target: Path) -> None:
    # The target may be a folder when the zip names one path both as a file and as a folder.
    if target.is_file():
        target.unlink()


def _check_disk_space(zip_path: Path, entries: list[zipfile.ZipInfo], dest: Path) -> None:
    needed = sum(info.file_size for info in entries)
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DatasetError(
            f"{zip_path.name} unpacks to {needed / 1e9:.1f} GB, more than the {free / 1e9:.1f} GB of free disk space.",
            "Free disk space or upload a smaller dataset.",
        )


def _invalid_zip_error(zip_path: Path, exc: Exception) -> DatasetError:
    logger.info("Cannot open %s as a zip: %s", zip_path, exc)
    return DatasetError(
        f"{zip_path.name} is not a valid zip file.",
        "Create the zip again (for example with your file manager's 'Compress' command) and upload it again.",
    )


_TEMP_FOLDERS: list[Path] = []


def _remove_temp_folders() -> None:
    for folder in _TEMP_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_temp_folders)


def _materialise(source: Path, extract_dir: Path | None, report: DatasetReport) -> Path:
    """Return a folder holding the source's files, extracting a zip first."""
    if source.is_dir():
        return source.resolve()
    if not source.exists():
        raise DatasetError(f"{source} does not exist.", "Give the path of a folder or a .zip file.")
    if not zipfile.is_zipfile(source):
        if source.suffix.lower() == ".zip":
            raise _invalid_zip_error(source, ValueError("no zip directory found"))
        raise DatasetError(
            f"{source.name} is neither a folder nor a zip file.",
            "Give a folder with one subfolder per class, or a .zip of such a folder.",
        )
    if extract_dir is None:
        extract_dir = Path(tempfile.mkdtemp(prefix="tlapp-"))
        _TEMP_FOLDERS.append(extract_dir)
    _extract_zip(source, extract_dir, report)
    return extract_dir.resolve()


# --- scanning -------------------------------------------------------------------------------


@dataclass
class _Candidate:
    """A file that may be an image of a class."""

    path: Path
    relpath: str
    folder: str  # class folder name as found on disk
    split: str  # "train", "val", or "" for a random split
    image_extension: bool


@dataclass
class _Scan:
    """Files found under the class level, before decoding."""

    root: Path
    given_split: bool
    candidates: list[_Candidate]
    class_folders: list[tuple[str, str]]  # (split, folder name), in scan order
    loose_images: list[str]  # relpaths of images outside any class folder


def _relpath(path: Path, base: Path) -> str:
    return path.relative_to(base).as_posix()


def _visible_children(folder: Path, report: DatasetReport) -> tuple[list[Path], list[Path]]:
    """Return (folders, files) of ``folder`` sorted by name, counting and dropping system files."""
    folders: list[Path] = []
    files: list[Path] = []
    for child in sorted(folder.iterdir(), key=lambda p: p.name):
        if is_system_file(child.name):
            report.ignored_system_files += 1
        elif child.is_dir():
            folders.append(child)
        elif child.is_file():
            files.append(child)
    return folders, files


def _walk_files(folder: Path, report: DatasetReport) -> list[Path]:
    """Return every non-system file under ``folder``, depth first, sorted."""
    folders, files = _visible_children(folder, report)
    for sub in folders:
        files.extend(_walk_files(sub, report))
    return files


def _scan(base: Path, report: DatasetReport) -> _Scan:
    level = base
    while True:
        folders, files = _visible_children(level, report)
        image_files = [f for f in files if images.has_image_extension(f)]
        # A single folder with no images beside it is a wrapper ("my_shapes/" or
        # "Downloads/my_shapes/"), unless it has no subfolders: then it is the only class.
        if len(folders) == 1 and not image_files and _has_subfolders(folders[0]):
            _skip_loose_files(files, base, report)
            level = folders[0]
            continue
        break

    split_folders = _find_split_folders(folders, report)
    if split_folders:
        train_folder, val_folder = split_folders
        _skip_loose_files(files, base, report)
        candidates: list[_Candidate] = []
        class_folders: list[tuple[str, str]] = []
        for split, split_folder in (("train", train_folder), ("val", val_folder)):
            sub_folders, sub_files = _visible_children(split_folder, report)
            _skip_loose_files(sub_files, base, report)
            for class_folder in sub_folders:
                class_folders.append((split, class_folder.name))
                candidates.extend(_class_candidates(class_folder, base, split, report))
        return _Scan(level, True, candidates, class_folders, [])

    loose = [_relpath(f, base) for f in image_files]
    _skip_loose_files(files, base, report)
    candidates = []
    for class_folder in folders:
        candidates.extend(_class_candidates(class_folder, base, "", report))
    return _Scan(level, False, candidates, [("", f.name) for f in folders], loose)


def _has_subfolders(folder: Path) -> bool:
    return any(child.is_dir() and not is_system_file(child.name) for child in folder.iterdir())


def _skip_loose_files(files: list[Path], base: Path, report: DatasetReport) -> None:
    """List files that sit beside the class folders (a README, stray images) as skipped."""
    for file in files:
        if images.has_image_extension(file):
            reason = "not in a class folder"
        else:
            reason = f"not an image file ({file.suffix.lower() or 'no extension'})"
        report.skipped.append({"file": _relpath(file, base), "reason": reason})


def _find_split_folders(folders: list[Path], report: DatasetReport) -> tuple[Path, Path] | None:
    """Return (train, validation) folders when this level contains a given split, else None."""
    by_name = {folder.name.lower(): folder for folder in folders}
    train = next((by_name[n] for n in TRAIN_FOLDER_NAMES if n in by_name), None)
    val = next((by_name[n] for n in VAL_FOLDER_NAMES if n in by_name), None)
    test = next((by_name[n] for n in TEST_FOLDER_NAMES if n in by_name), None)
    if train is None or (val is None and test is None):
        return None
    if val is None:
        val = test
    elif test is not None:
        report.warnings.append(
            f"Folder '{test.name}' was ignored: '{val.name}' is used for validation and tlapp keeps no test set."
        )
    for folder in folders:
        if folder not in (train, val, test):
            report.warnings.append(
                f"Folder '{folder.name}' was ignored because the dataset is split into "
                f"'{train.name}' and '{val.name}' folders."
            )
    return train, val


def _class_candidates(class_folder: Path, base: Path, split: str, report: DatasetReport) -> list[_Candidate]:
    return [
        _Candidate(
            path=file,
            relpath=_relpath(file, base),
            folder=class_folder.name,
            split=split,
            image_extension=images.has_image_extension(file),
        )
        for file in _walk_files(class_folder, report)
    ]


# --- decoding -------------------------------------------------------------------------------


@dataclass
class _Decoded:
    digest: str | None = None  # SHA-1 of the file bytes, for finding exact duplicates
    reason: str | None = None  # skip reason, or None for a usable image
    tiny: bool = False


def _decode_one(candidate: _Candidate) -> _Decoded:
    suffix = candidate.path.suffix.lower()
    if not candidate.image_extension and not images.looks_like_image(candidate.path):
        return _Decoded(reason=f"not an image file ({suffix or 'no extension'})")
    try:
        data = candidate.path.read_bytes()
    except OSError as exc:
        return _Decoded(reason=f"cannot be read ({exc.strerror or exc})")
    try:
        image = images.load_rgb(data, name=candidate.relpath, max_side=INGEST_MAX_SIDE)
    except images.ImageError as exc:
        return _Decoded(reason=exc.reason)
    return _Decoded(digest=hashlib.sha1(data).hexdigest(), tiny=images.is_tiny(image))


def _decode_all(candidates: list[_Candidate]) -> list[_Decoded]:
    """Decode every candidate once. Pillow releases the GIL while decoding, so threads help."""
    if len(candidates) < 8:
        return [_decode_one(c) for c in candidates]
    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlapp-decode") as pool:
        return list(pool.map(_decode_one, candidates))


# --- assembling the collection --------------------------------------------------------------


def _label_of(folder: str) -> str:
    # macOS writes names in decomposed Unicode (NFD); NFC makes "café" from any OS one label.
    return unicodedata.normalize("NFC", folder)


def _assemble(
    scan: _Scan,
    decoded: list[_Decoded],
    report: DatasetReport,
    val_fraction: float,
    seed: int,
) -> ImageCollection:
    report.split = "given" if scan.given_split else "random"
    usable = _drop_unusable(scan.candidates, decoded, report)
    usable = _drop_duplicates(usable, report)

    per_label: dict[str, list[tuple[_Candidate, _Decoded]]] = defaultdict(list)
    for candidate, info in usable:
        per_label[_label_of(candidate.folder)].append((candidate, info))
    _warn_folders_without_images(scan, per_label, decoded, report)
    _warn_similar_labels(scan, report)

    classes = sorted(per_label)
    report.classes = {label: len(per_label[label]) for label in classes}
    report.num_images = sum(report.classes.values())
    _raise_if_unusable(scan, classes, per_label, report)

    if scan.given_split:
        train_pairs, val_pairs = _given_split(classes, per_label)
    else:
        train_pairs, val_pairs = _random_split(classes, per_label, val_fraction, seed)
    index = {label: i for i, label in enumerate(classes)}
    train = [_sample(c, index) for c in train_pairs]
    val = [_sample(c, index) for c in val_pairs]
    report.split_counts = {
        "train": {label: sum(1 for c in train_pairs if _label_of(c.folder) == label) for label in classes},
        "val": {label: sum(1 for c in val_pairs if _label_of(c.folder) == label) for label in classes},
    }
    if scan.given_split:
        _raise_if_class_lacks_training_images(report)
    _add_quality_warnings(report, per_label)
    return ImageCollection(root=scan.root, classes=classes, train=train, val=val, report=report)


def _sample(candidate: _Candidate, index: dict[str, int]) -> Sample:
    return Sample(path=candidate.path.resolve(), label=index[_label_of(candidate.folder)], relpath=candidate.relpath)


def _drop_unusable(
    candidates: list[_Candidate], decoded: list[_Decoded], report: DatasetReport
) -> list[tuple[_Candidate, _Decoded]]:
    usable = []
    for candidate, info in zip(candidates, decoded):
        if info.reason is None:
            usable.append((candidate, info))
        else:
            report.skipped.append({"file": candidate.relpath, "reason": info.reason})
    return usable


def _drop_duplicates(
    usable: list[tuple[_Candidate, _Decoded]], report: DatasetReport
) -> list[tuple[_Candidate, _Decoded]]:
    """Keep one file of each group of byte-identical files, so a copy cannot sit in both splits.

    Copies under one label keep the first file (training files come first). Copies under
    different labels leave no correct label, so all of them are skipped.
    """
    groups: dict[str, list[tuple[_Candidate, _Decoded]]] = defaultdict(list)
    for pair in usable:
        groups[pair[1].digest].append(pair)

    dropped: set[int] = set()
    copies: list[str] = []
    for group in groups.values():
        if len(group) < 2:
            continue
        labels = sorted({_label_of(c.folder) for c, _ in group})
        if len(labels) > 1:
            names = ", ".join(f"{c.relpath} ({_label_of(c.folder)})" for c, _ in group)
            report.warnings.append(
                f"The same image is in more than one class: {names}. These files were skipped; "
                "keep each image in one class folder."
            )
            for candidate, _ in group:
                others = [c for c, _ in group if c is not candidate]
                report.skipped.append(
                    {
                        "file": candidate.relpath,
                        "reason": f"same image as {others[0].relpath} in class '{_label_of(others[0].folder)}'",
                    }
                )
                dropped.add(id(candidate))
            continue
        first = group[0][0]
        for candidate, _ in group[1:]:
            report.skipped.append({"file": candidate.relpath, "reason": f"duplicate of {first.relpath}"})
            dropped.add(id(candidate))
            copies.append(f"{candidate.relpath} = {first.relpath}")
    if copies:
        report.warnings.append(
            f"{len(copies)} files are exact copies of other files and were counted once: "
            f"{_shorten(copies)}."
        )
    return [pair for pair in usable if id(pair[0]) not in dropped]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _classes_phrase(labels: list[str]) -> str:
    """Return "Class 'a' has" or "Classes 'a' and 'b' have" as the subject of a warning."""
    quoted = [f"'{label}'" for label in labels]
    if len(quoted) == 1:
        return f"Class {quoted[0]} has"
    return f"Classes {', '.join(quoted[:-1])} and {quoted[-1]} have"


def _shorten(items: list[str], limit: int = 3) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _warn_folders_without_images(
    scan: _Scan,
    per_label: dict[str, list],
    decoded: list[_Decoded],
    report: DatasetReport,
) -> None:
    skipped_per_folder = Counter(
        (c.split, c.folder) for c, info in zip(scan.candidates, decoded) if info.reason is not None
    )
    warned: set[str] = set()
    for split, folder in scan.class_folders:
        if _label_of(folder) in per_label or folder in warned:
            continue
        warned.add(folder)
        shown = f"{split}/{folder}" if split else folder
        skipped = sum(n for (s, f), n in skipped_per_folder.items() if f == folder)
        if skipped:
            report.warnings.append(
                f"Folder '{shown}' has no usable images ({_count(skipped, 'file')} skipped) and was ignored."
            )
        else:
            report.warnings.append(f"Folder '{shown}' has no images and was ignored.")


def _warn_similar_labels(scan: _Scan, report: DatasetReport) -> None:
    """Warn about folder names that differ only in case, spacing or Unicode form.

    Names that differ only in Unicode form are already one label (see _label_of). Names that
    differ in case or spacing stay separate classes, because merging could hide a real
    distinction; the warning lets the user rename them.
    """
    folders = sorted({folder for _, folder in scan.class_folders})
    by_key: dict[str, list[str]] = defaultdict(list)
    for folder in folders:
        key = " ".join(_label_of(folder).casefold().split())
        by_key[key].append(folder)
    for names in by_key.values():
        labels = sorted({_label_of(n) for n in names})
        if len(labels) > 1:
            quoted = " and ".join(f"'{label}'" for label in labels)
            report.warnings.append(
                f"Classes {quoted} differ only in upper/lower case or spaces and are kept as separate "
                "classes. Rename the folders if they are the same class."
            )
        elif len(names) > 1:
            report.warnings.append(
                f"Folders {' and '.join(repr(n) for n in names)} differ only in Unicode normalisation "
                f"and were merged into class '{labels[0]}'."
            )


def _raise_if_unusable(
    scan: _Scan,
    classes: list[str],
    per_label: dict[str, list],
    report: DatasetReport,
) -> None:
    if scan.loose_images and not classes:
        raise DatasetError(
            f"Found {len(scan.loose_images)} images at the top level and 0 class folders.",
            "Put the images of each class into their own folder, named after the class "
            "(for example cat/001.jpg, dog/001.jpg), and zip or upload the folder that contains "
            "the class folders.",
            report,
        )
    if not classes:
        skipped = f" ({len(report.skipped)} files skipped, see the report)" if report.skipped else ""
        raise DatasetError(
            f"No usable images found{skipped}.",
            "Upload a folder or zip with one folder per class, each with its images.",
            report,
        )
    if len(classes) < 2:
        found = ", ".join(classes)
        raise DatasetError(
            f"Classification needs at least 2 classes; found {len(classes)} ({found}).",
            "Add a folder per class, each with its images.",
            report,
        )
    too_small = [label for label in classes if len(per_label[label]) < MIN_IMAGES_PER_CLASS]
    if too_small:
        if len(too_small) == 1:
            message = f"Class '{too_small[0]}' has 1 image;"
        else:
            names = ", ".join(f"'{label}'" for label in too_small)
            message = f"Classes {names} have 1 image each;"
        raise DatasetError(
            f"{message} each class needs at least {MIN_IMAGES_PER_CLASS} "
            "(one for training, one for validation).",
            "Add more images to the class, or remove its folder.",
            report,
        )


def _raise_if_class_lacks_training_images(report: DatasetReport) -> None:
    missing = [label for label, n in report.split_counts["train"].items() if n == 0]
    if missing:
        raise DatasetError(
            f"{_classes_phrase(missing)} images for validation but none for training.",
            "Add training images in a folder of that name under the training folder, or remove the class.",
            report,
        )


def _given_split(
    classes: list[str], per_label: dict[str, list[tuple[_Candidate, _Decoded]]]
) -> tuple[list[_Candidate], list[_Candidate]]:
    train: list[_Candidate] = []
    val: list[_Candidate] = []
    for label in classes:
        for candidate, _ in per_label[label]:
            (train if candidate.split == "train" else val).append(candidate)
    return train, val


def _random_split(
    classes: list[str],
    per_label: dict[str, list[tuple[_Candidate, _Decoded]]],
    val_fraction: float,
    seed: int,
) -> tuple[list[_Candidate], list[_Candidate]]:
    """Split each class on its own, keeping at least one image in each of train and validation."""
    train: list[_Candidate] = []
    val: list[_Candidate] = []
    for label in classes:
        members = sorted((c for c, _ in per_label[label]), key=lambda c: c.relpath)
        # A string seed is hashed with SHA-512 by random.Random, so the order does not depend
        # on PYTHONHASHSEED or on the other classes.
        random.Random(f"{seed}:{label}").shuffle(members)
        n_val = min(max(1, round(len(members) * val_fraction)), len(members) - 1)
        val.extend(members[:n_val])
        train.extend(members[n_val:])
    return train, val


def _add_quality_warnings(report: DatasetReport, per_label: dict[str, list[tuple[_Candidate, _Decoded]]]) -> None:
    counts = report.classes
    for label, n in counts.items():
        if n < FEW_IMAGES_WARNING:
            report.warnings.append(
                f"Class '{label}' has only {n} images; with fewer than {FEW_IMAGES_WARNING} per class "
                "the model and its validation score are unreliable."
            )

    largest = max(counts, key=lambda label: counts[label])
    smallest = min(counts, key=lambda label: counts[label])
    ratio = counts[largest] / counts[smallest]
    if ratio >= IMBALANCE_RATIO_WARNING:
        report.warnings.append(
            f"Classes are imbalanced ({largest}: {counts[largest]} images, {smallest}: "
            f"{counts[smallest]}, ratio {ratio:.0f}:1). Accuracy alone will be misleading; "
            "look at per-class recall."
        )

    val_counts = report.split_counts["val"]
    no_val = [label for label, n in val_counts.items() if n == 0]
    one_val = [label for label, n in val_counts.items() if n == 1]
    if no_val:
        report.warnings.append(
            f"{_classes_phrase(no_val)} no validation images, so {'its' if len(no_val) == 1 else 'their'} "
            "accuracy cannot be measured."
        )
    if one_val:
        report.warnings.append(
            f"{_classes_phrase(one_val)} only 1 validation image, so {'its' if len(one_val) == 1 else 'each'} "
            "validation recall is either 0 % or 100 %."
        )

    tiny = sorted(c.relpath for pairs in per_label.values() for c, info in pairs if info.tiny)
    if tiny:
        report.warnings.append(
            f"{len(tiny)} images are smaller than {images.TINY_SIDE} pixels on a side and will be "
            f"upscaled a lot: {_shorten(tiny)}."
        )
