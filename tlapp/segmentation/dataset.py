"""A segmentation dataset: checked image/mask pairs, their mask convention, a split and a report."""

from __future__ import annotations

import logging
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tlapp import images
from tlapp.errors import TlappError
from tlapp.segmentation.masks import OUTLINE_SCORE, MaskConvention, outline_score, scan_masks
from tlapp.segmentation.pairs import Pair, find_pairs

log = logging.getLogger(__name__)

TRIMAP_BORDERS = ("object", "ignore")
# Images are decoded this small to check that they are readable; JPEG decodes at reduced scale.
CHECK_MAX_SIDE = 256
# Outline-like masks are reported only when at most this share of the masks look so: when most
# do, the objects of the dataset are thin by nature (cracks, vessels, cables).
OUTLINE_MAX_SHARE = 0.5


@dataclass
class SegmentationReport:
    """Findings of loading a segmentation dataset, for the user to read before training."""

    num_pairs: int = 0
    classes: list[str] = field(default_factory=list)
    convention: str = ""  # how mask values were read, in words
    mask_kind: str = ""  # "binary", "trimap", "index", "grey levels" or "colour"
    class_colours: list[list[int]] = field(default_factory=list)  # display colour per class
    mask_colours: list[list[int]] | None = None  # colour-coded masks: the colour of each class in the files
    class_pixels: dict[str, int] = field(default_factory=dict)  # over every readable mask, before any is left out
    problems: list[dict] = field(default_factory=list)  # [{"file": relpath, "reason": str}]
    warnings: list[str] = field(default_factory=list)
    ignored_system_files: int = 0
    layout: str = ""  # e.g. "images/ + masks/" or "pairs.csv"
    trimap_border: str | None = None  # "object" or "ignore" when the masks are trimaps
    outline_masks: list[str] = field(default_factory=list)  # masks that look like outlines, not filled regions
    split_counts: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SegmentationReport:
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass
class SegmentationData:
    """Usable pairs split into training and validation, with the dataset's mask convention."""

    root: Path
    pairs: list[Pair]
    train: list[Pair]
    val: list[Pair]
    convention: MaskConvention
    report: SegmentationReport

    @property
    def classes(self) -> list[str]:
        return list(self.convention.class_names)

    def rename_classes(self, names: list[str]) -> None:
        """Give the classes new display names (one per class, in class-index order)."""
        if len(names) != self.convention.num_classes:
            raise TlappError(
                f"{len(names)} class names given for {self.convention.num_classes} classes ({', '.join(self.classes)}).",
                "Give exactly one name per class, background first.",
            )
        if len(set(names)) != len(names) or not all(name.strip() for name in names):
            raise TlappError(f"Class names must be unique and not empty: {names}.", "Rename the duplicates.")
        self.convention.class_names = list(names)
        self.report.classes = list(names)
        self.report.class_pixels = dict(zip(names, self.report.class_pixels.values()))


def _check_image(pair: Pair) -> str | None:
    """Decode the image at reduced size; return why it is unusable, or None."""
    try:
        images.load_rgb(pair.image, name=pair.image_relpath, max_side=CHECK_MAX_SIDE)
    except images.ImageError as error:
        return error.reason
    return None


def _drop_unreadable_images(pairs: list[Pair], problems: list[dict]) -> list[Pair]:
    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlapp-seg-check") as pool:
        reasons = list(pool.map(_check_image, pairs))
    kept = []
    for pair, reason in zip(pairs, reasons):
        if reason is None:
            kept.append(pair)
        else:
            problems.append({"file": pair.image_relpath, "reason": f"unreadable image: {reason}"})
    return kept


def _outline_masks(pairs: list[Pair], convention: MaskConvention) -> list[Pair]:
    """Return the pairs whose binary mask looks like an outline, unless most masks look so."""
    if convention.kind not in ("binary", "trimap"):
        return []

    def score(pair: Pair) -> float | None:
        return outline_score(convention.read_target(pair.mask, pair.mask_relpath))

    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlapp-seg-outline") as pool:
        scores = list(pool.map(score, pairs))
    outlines = [pair for pair, value in zip(pairs, scores) if value is not None and value < OUTLINE_SCORE]
    return outlines if len(outlines) <= OUTLINE_MAX_SHARE * len(pairs) else []


def split_pairs(pairs: list[Pair], val_fraction: float, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Split at random, reproducibly: the result depends only on ``seed`` and the pair names."""
    ordered = sorted(pairs, key=lambda pair: (pair.key, pair.image_relpath))
    random.Random(seed).shuffle(ordered)
    num_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
    return ordered[num_val:], ordered[:num_val]


def load_segmentation_data(
    source: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    trimap_border: str = "object",
    drop_outline_masks: bool = False,
    extract_dir: Path | None = None,
) -> SegmentationData:
    """Pair, check and split a segmentation dataset (folder, zip or CSV of pairs).

    Every image is decoded and every mask read once, so broken files are reported by name
    before training starts, and the mask convention is decided from all masks together.
    Pairs with problems are left out; the rest are kept. Binary masks that look like outlines
    rather than filled regions are listed in the report, and left out with ``drop_outline_masks``.
    Raises TlappError when fewer than two usable pairs remain or the masks fit no supported
    convention.
    """
    if trimap_border not in TRIMAP_BORDERS:
        raise TlappError(f"Invalid trimap border setting '{trimap_border}'.", "Use 'object' or 'ignore'.")
    if not 0.0 < val_fraction < 1.0:
        raise TlappError(
            f"The validation fraction must be between 0 and 1; got {val_fraction}.",
            "Use a value such as 0.2 (20 % of the pairs for validation).",
        )
    scan = find_pairs(source, extract_dir)
    problems = list(scan.problems)
    pairs = _drop_unreadable_images(scan.pairs, problems)
    if not pairs:
        raise _too_few_pairs(source, 0, problems)

    mask_scan = scan_masks([(pair.mask, pair.mask_relpath) for pair in pairs], trimap_border)
    for relpath, reason in mask_scan.unreadable.items():
        problems.append({"file": relpath, "reason": f"unreadable mask: {reason}"})
    pairs = [pair for pair in pairs if pair.mask_relpath not in mask_scan.unreadable]
    if len(pairs) < 2:
        raise _too_few_pairs(source, len(pairs), problems)

    convention = mask_scan.convention
    warnings = list(mask_scan.warnings)
    outlines = _outline_masks(pairs, convention)
    if outlines:
        names = ", ".join(pair.mask_relpath for pair in outlines[:3]) + (f" and {len(outlines) - 3} more" if len(outlines) > 3 else "")
        if drop_outline_masks:
            for pair in outlines:
                problems.append({"file": pair.mask_relpath, "reason": "the mask looks like an outline, not a filled region (left out by the drop outline masks setting)"})
            pairs = [pair for pair in pairs if pair not in outlines]
            if len(pairs) < 2:
                raise _too_few_pairs(source, len(pairs), problems)
        else:
            warnings.append(
                f"{len(outlines)} masks look like outlines rather than filled regions ({names}): their object "
                "pixels form thin bands. A model learns outlines from them, and its IoU on them stays low. "
                "Fill those masks, or leave them out (the drop outline masks setting)."
            )
    train, val = split_pairs(pairs, val_fraction, seed)
    if problems:
        warnings.insert(0, f"{len(problems)} files were left out of training; the problems list names each one with the reason.")
    report = SegmentationReport(
        num_pairs=len(pairs),
        classes=convention.class_names,
        convention=convention.description,
        mask_kind=convention.kind,
        class_colours=[list(colour) for colour in convention.class_colours],
        mask_colours=[list(colour) for colour in convention.mask_colours] if convention.mask_colours else None,
        class_pixels=dict(zip(convention.class_names, mask_scan.class_pixels)),
        problems=problems,
        warnings=warnings,
        ignored_system_files=scan.ignored_system_files,
        layout=scan.layout,
        trimap_border=trimap_border if convention.kind == "trimap" else None,
        outline_masks=[pair.mask_relpath for pair in outlines],
        split_counts={"train": len(train), "val": len(val)},
    )
    log.info("segmentation data %s: %d pairs, %d problems, %s", source, len(pairs), len(problems), convention.description)
    return SegmentationData(scan.root, pairs, train, val, convention, report)


def inspect_segmentation(source: str | Path, **options) -> SegmentationReport:
    """Return the report of :func:`load_segmentation_data` for ``source``."""
    return load_segmentation_data(source, **options).report


def _too_few_pairs(source: str | Path, count: int, problems: list[dict]) -> TlappError:
    shown = "; ".join(f"{p['file']}: {p['reason']}" for p in problems[:5])
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    detail = f" Problems: {shown}{more}." if problems else ""
    return TlappError(
        f"{Path(source).name} has {count} usable image/mask pairs; at least 2 are needed, one for training "
        f"and one for validation.{detail}",
        "Give each image a mask with the same file name (suffixes such as _mask are allowed) and the same size.",
    )
