"""Find image/mask pairs in a folder, a zip or a CSV file, and list every file that has no partner.

Supported layouts, found at the top level or under wrapper folders:
- an image folder (``images/``, ``image/``, ``imgs/``, ``JPEGImages/`` ...) beside a mask folder
  (``masks/``, ``mask/``, ``labels/``, ``label/``, ``annotations/``, ``SegmentationClass/`` ...),
  each searched recursively, so ``images/<class>/x.jpg`` pairs with ``masks/x.png``;
- a CSV file with ``image`` and ``mask`` columns holding paths relative to the CSV's folder.

Files pair by a normalised name key (see :func:`pair_key`), never by position in a sorted list:
one missing mask would otherwise shift every later mask onto the wrong image.
"""

from __future__ import annotations

import atexit
import csv
import logging
import os
import shutil
import struct
import tempfile
import unicodedata
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import ExifTags, Image, UnidentifiedImageError

from tlapp import datasets, images
from tlapp.errors import TlappError

log = logging.getLogger(__name__)

IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "jpegimages")
MASK_FOLDER_NAMES = (
    "masks", "mask", "labels", "label", "annotations", "annotation",
    "segmentationclass", "trimaps", "gt", "ground_truth", "groundtruth",
)

# Suffixes that mask files commonly add to the image's name ("cat_01_mask.png" for "cat_01.jpg").
# Longer suffixes come first so that "_labels" is not cut as "_label" + "s".
NAME_SUFFIXES = (
    "_segmentation", "_labels", "-labels", "_label", "-label", "_masks", "_mask", "-mask", ".mask",
    "_seg", "-seg", "_gt", "-gt",
)

_IMAGE_EXTENSIONS = frozenset(ext.lower() for ext in images.IMAGE_EXTENSIONS)

# EXIF orientations that swap width and height (the 90 and 270 degree rotations).
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass
class Pair:
    """One image and its mask."""

    key: str  # the normalised name both files share
    image: Path
    mask: Path
    image_relpath: str  # paths as the user knows them, relative to the dataset root
    mask_relpath: str


@dataclass
class PairScan:
    """Every pair found, and every file that could not be paired, with the reason."""

    root: Path
    layout: str  # e.g. "images/ + masks/" or "pairs.csv"
    pairs: list[Pair] = field(default_factory=list)
    problems: list[dict] = field(default_factory=list)  # [{"file": relpath, "reason": str}]
    ignored_system_files: int = 0


def pair_key(name: str) -> str:
    """Return the key a file pairs by: lower case, image extensions and one mask suffix removed.

    ``IMG_007.JPG`` and ``img_007.png`` give ``img_007``; so do ``img_007.png.png`` (a double
    extension) and ``img_007_mask.png``. Extensions that are not image extensions stay, so
    ``scan.v2.png`` keeps ``scan.v2``.
    """
    key = unicodedata.normalize("NFC", name).lower()
    while True:
        root, extension = os.path.splitext(key)
        if not root or extension not in _IMAGE_EXTENSIONS:
            break
        key = root
    for suffix in NAME_SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)]
    return key


# --- materialising the source ----------------------------------------------------------------

_TEMP_FOLDERS: list[Path] = []


def _remove_temp_folders() -> None:
    for folder in _TEMP_FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_temp_folders)


def _count_system_entries(zip_path: Path) -> int:
    """Count the top-most system entries in a zip (a skipped ``__MACOSX`` tree counts once)."""
    roots = set()
    with zipfile.ZipFile(zip_path) as archive:
        for name in archive.namelist():
            parts = [part for part in name.replace("\\", "/").split("/") if part]
            for index, part in enumerate(parts):
                if datasets.is_system_file(part):
                    roots.add("/".join(parts[: index + 1]))
                    break
    return len(roots)


def materialise(source: Path, extract_dir: Path | None) -> tuple[Path, int]:
    """Return (a folder or CSV file holding the data, system entries skipped in a zip)."""
    if not source.exists():
        raise TlappError(
            f"{source} does not exist.",
            "Give a folder with images/ and masks/ folders, a .zip of one, or a CSV file of pairs.",
        )
    if source.is_dir() or source.suffix.lower() == ".csv":
        return source.resolve(), 0
    if not zipfile.is_zipfile(source):
        raise TlappError(
            f"{source.name} is neither a folder, a zip file nor a CSV file.",
            "Give a folder with images/ and masks/ folders, a .zip of one, or a CSV file of pairs.",
        )
    if extract_dir is None:
        extract_dir = Path(tempfile.mkdtemp(prefix="tlapp-seg-"))
        _TEMP_FOLDERS.append(extract_dir)
    datasets.extract_zip(source, extract_dir)
    return extract_dir.resolve(), _count_system_entries(source)


# --- finding the layout ----------------------------------------------------------------------


def _visible_folders(folder: Path) -> list[Path]:
    return sorted(
        (child for child in folder.iterdir() if child.is_dir() and not datasets.is_system_file(child.name)),
        key=lambda path: path.name,
    )


def _named(folders: list[Path], names: tuple[str, ...]) -> Path | None:
    by_name = {folder.name.lower(): folder for folder in folders}
    return next((by_name[name] for name in names if name in by_name), None)


def _pair_csv(folder: Path) -> Path | None:
    """Return the one CSV file in ``folder`` that has image and mask columns, if there is one."""
    found = [
        path for path in sorted(folder.glob("*.csv"))
        if not datasets.is_system_file(path.name) and _csv_columns(path) is not None
    ]
    return found[0] if len(found) == 1 else None


def _find_layout(base: Path) -> tuple[Path, Path, Path] | Path | None:
    """Return (root, image folder, mask folder), a CSV path, or None; searches 3 levels deep."""
    level = [base]
    for _ in range(4):
        next_level = []
        for folder in level:
            children = _visible_folders(folder)
            image_folder = _named(children, IMAGE_FOLDER_NAMES)
            mask_folder = _named(children, MASK_FOLDER_NAMES)
            if image_folder and mask_folder:
                return folder, image_folder, mask_folder
            csv_path = _pair_csv(folder)
            if csv_path is not None:
                return csv_path
            next_level.extend(children)
        level = next_level
    return None


def _layout_error(base: Path) -> TlappError:
    found = [child.name + ("/" if child.is_dir() else "") for child in sorted(base.iterdir())][:10]
    return TlappError(
        f"No image and mask folders found in {base.name} (it contains: {', '.join(found) or 'nothing'}).",
        "Put the images in an images/ folder and the masks, with the same file names, in a masks/ "
        "folder beside it (image/ + label/ works too), or give a CSV file with image and mask columns.",
    )


# --- scanning files --------------------------------------------------------------------------


def _walk(folder: Path, scan: PairScan) -> list[Path]:
    """Return every file under ``folder``, sorted, counting and skipping system files."""
    files: list[Path] = []
    for child in sorted(folder.iterdir(), key=lambda path: path.name):
        if datasets.is_system_file(child.name):
            scan.ignored_system_files += 1
        elif child.is_dir():
            files.extend(_walk(child, scan))
        elif child.is_file():
            files.append(child)
    return files


def _image_files(folder: Path, scan: PairScan, what: str) -> list[Path]:
    """Return the image files under ``folder``; list other files as problems."""
    found = []
    for path in _walk(folder, scan):
        if images.has_image_extension(path) or images.looks_like_image(path):
            found.append(path)
        else:
            relpath = path.relative_to(scan.root).as_posix()
            suffix = path.suffix.lower() or "no extension"
            scan.problems.append({"file": relpath, "reason": f"not an image file ({suffix}) in the {what} folder"})
    return found


def _group_by_key(paths: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in paths:
        groups[pair_key(path.name)].append(path)
    return groups


def _pair_folders(scan: PairScan, image_folder: Path, mask_folder: Path) -> None:
    def relpath(path: Path) -> str:
        return path.relative_to(scan.root).as_posix()

    image_groups = _group_by_key(_image_files(image_folder, scan, "image"))
    mask_groups = _group_by_key(_image_files(mask_folder, scan, "mask"))

    for key in sorted(image_groups):
        image_paths = image_groups[key]
        mask_paths = mask_groups.get(key, [])
        if len(image_paths) > 1:
            names = ", ".join(relpath(path) for path in image_paths)
            for path in image_paths:
                scan.problems.append({"file": relpath(path), "reason": f"ambiguous: {len(image_paths)} images share the name ({names})"})
            continue
        image = image_paths[0]
        if not mask_paths:
            scan.problems.append({"file": relpath(image), "reason": "no mask (no file with the same name in the mask folder)"})
        elif len(mask_paths) > 1:
            names = ", ".join(relpath(path) for path in mask_paths)
            scan.problems.append({"file": relpath(image), "reason": f"ambiguous: {len(mask_paths)} masks ({names})"})
        else:
            mask = mask_paths[0]
            scan.pairs.append(Pair(key, image, mask, relpath(image), relpath(mask)))

    for key in sorted(set(mask_groups) - set(image_groups)):
        for mask in mask_groups[key]:
            scan.problems.append({"file": relpath(mask), "reason": "no image (no file with the same name in the image folder)"})


def _csv_columns(path: Path) -> tuple[str, str] | None:
    """Return the (image, mask) column names of a CSV file, matched case-insensitively."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    lowered = {name.strip().lower(): name for name in header}
    if "image" in lowered and "mask" in lowered:
        return lowered["image"], lowered["mask"]
    return None


def _pair_csv_rows(scan: PairScan, csv_path: Path) -> None:
    columns = _csv_columns(csv_path)
    if columns is None:
        raise TlappError(
            f"{csv_path.name} has no 'image' and 'mask' columns.",
            "Name the columns image and mask; each row holds the paths of one image and its mask, "
            "relative to the CSV file's folder.",
        )
    image_column, mask_column = columns
    masks_by_image: dict[str, list[str]] = defaultdict(list)
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        for row in csv.DictReader(handle):
            image_text = (row.get(image_column) or "").strip()
            mask_text = (row.get(mask_column) or "").strip()
            if not image_text:
                continue
            if not mask_text:
                scan.problems.append({"file": image_text, "reason": f"no mask given in {csv_path.name}"})
                continue
            if mask_text not in masks_by_image[image_text]:
                masks_by_image[image_text].append(mask_text)

    for image_text, mask_texts in masks_by_image.items():
        if len(mask_texts) > 1:
            scan.problems.append(
                {"file": image_text, "reason": f"ambiguous: {len(mask_texts)} masks in {csv_path.name} ({', '.join(mask_texts)})"}
            )
            continue
        image, mask = scan.root / image_text, scan.root / mask_texts[0]
        missing = [text for text, path in ((image_text, image), (mask_texts[0], mask)) if not path.is_file()]
        if missing:
            scan.problems.append({"file": image_text, "reason": f"listed in {csv_path.name} but not found: {', '.join(missing)}"})
            continue
        scan.pairs.append(Pair(pair_key(Path(image_text).name), image, mask, image_text, mask_texts[0]))


# --- size check ------------------------------------------------------------------------------


def upright_size(path: Path) -> tuple[int, int]:
    """Return (width, height) after EXIF orientation, reading only the header.

    Raises OSError (or a Pillow parsing error) when the file is not a readable image.
    """
    with Image.open(path) as image:
        width, height = image.size
        try:
            orientation = int(image.getexif().get(ExifTags.Base.Orientation, 1))
        except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError):
            orientation = 1
    return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def _check_sizes(scan: PairScan) -> None:
    """Drop pairs whose image and mask differ in size (after EXIF orientation), or cannot be read."""
    kept = []
    for pair in scan.pairs:
        sizes = []
        for path, relpath, what in ((pair.image, pair.image_relpath, "image"), (pair.mask, pair.mask_relpath, "mask")):
            try:
                sizes.append(upright_size(path))
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error) as error:
                log.info("cannot read the header of %s: %s", path, error)
                scan.problems.append({"file": relpath, "reason": f"unreadable {what} file"})
                break
        if len(sizes) < 2:
            continue
        (image_w, image_h), (mask_w, mask_h) = sizes
        if (image_w, image_h) != (mask_w, mask_h):
            scan.problems.append(
                {
                    "file": pair.image_relpath,
                    "reason": f"size mismatch: image is {image_w}x{image_h}, mask {pair.mask_relpath} is {mask_w}x{mask_h}",
                }
            )
            continue
        kept.append(pair)
    scan.pairs = kept


def find_pairs(source: str | Path, extract_dir: Path | None = None) -> PairScan:
    """Find the image/mask pairs of a folder, zip or CSV file, checking that each pair's sizes agree.

    A zip is extracted into ``extract_dir``, or into a temporary folder removed when the process
    exits. Files that cannot be paired are listed in ``problems`` by name; the pairs found are
    kept. Raises TlappError when no layout is recognised.
    """
    base, system_entries = materialise(Path(source).expanduser(), extract_dir)
    if base.is_file():
        scan = PairScan(root=base.parent, layout=base.name, ignored_system_files=system_entries)
        _pair_csv_rows(scan, base)
    else:
        layout = _find_layout(base)
        if layout is None:
            raise _layout_error(base)
        if isinstance(layout, Path):
            scan = PairScan(root=layout.parent, layout=layout.name, ignored_system_files=system_entries)
            _pair_csv_rows(scan, layout)
        else:
            root, image_folder, mask_folder = layout
            scan = PairScan(
                root=root, layout=f"{image_folder.name}/ + {mask_folder.name}/", ignored_system_files=system_entries
            )
            _pair_folders(scan, image_folder, mask_folder)
    _check_sizes(scan)
    log.info("found %d pairs in %s (%d problems)", len(scan.pairs), source, len(scan.problems))
    return scan
