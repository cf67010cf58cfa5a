"""Read segmentation masks of every common convention as class-index targets.

A target is a uint8 array (height, width) holding a class index per pixel, or ``IGNORE_INDEX``
for pixels that count neither in the loss nor in the metrics. The convention is decided once for
the whole dataset from the values of every mask (:func:`detect_convention`), so that the same
value means the same class in every file: a 0/1 mask beside 0/255 masks still reads as binary,
and a colour gets the same class id in every file.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tlapp.errors import TlappError

log = logging.getLogger(__name__)

IGNORE_INDEX = 255

# Index masks (palette or grey values 0, 1, 2 ...) may use class ids up to this bound.
MAX_INDEX_CLASSES = 32
# Colour-coded and grey-level-coded masks may use at most this many distinct values. More
# usually means anti-aliased edges or lossy compression rather than classes.
MAX_COLOURS = 20
# Lossy masks (JPEG) are thresholded here: values >= 128 are the object.
LOSSY_THRESHOLD = 128
# A lossy RGB mask whose channels differ by at most this much is a grey mask with colour noise.
LOSSY_GREY_TOLERANCE = 48
LOSSY_FORMATS = {"JPEG", "MPO"}
# At least this many in-between grey levels, covering at most this share of the pixels, are the
# smoothed edges of a binary mask rather than classes.
SOFT_EDGE_MIN_LEVELS = 3
SOFT_EDGE_MAX_SHARE = 0.05
# A grey level covering less than this share of all pixels is suspicious as a class of its own.
TINY_CLASS_SHARE = 0.001

# Masks whose object pixels form thin bands (an outline drawn instead of a filled region) score
# below this; see outline_score. Filled disks score 0.56, squares 0.5 and 4:1 rectangles 0.25,
# while outlines of 5-15 pixels around pets in 500-pixel photos scored 0.05-0.25.
OUTLINE_SCORE = 0.25

# The PASCAL VOC colour map: class i is drawn in VOC_COLOURS[i]; (224, 224, 192) marks void pixels.
VOC_VOID = (224, 224, 192)


def _voc_colours(count: int = 256) -> list[tuple[int, int, int]]:
    """Return the PASCAL VOC palette (the bit-interleaving scheme of the VOC development kit)."""
    colours = []
    for index in range(count):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= ((value >> 0) & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        colours.append((red, green, blue))
    return colours


VOC_COLOURS = _voc_colours()

# Display colours for classes whose masks carry no colour of their own (binary, grey, index
# masks without a palette): background black, then clearly distinct hues.
DISPLAY_COLOURS = [
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128),
    (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0),
    (255, 215, 180), (0, 0, 128), (128, 128, 128),
]


def display_colour(index: int) -> tuple[int, int, int]:
    if index < len(DISPLAY_COLOURS):
        return DISPLAY_COLOURS[index]
    return VOC_COLOURS[index % 256]


def _pack(red: int, green: int, blue: int) -> int:
    return (red << 16) | (green << 8) | blue


def _unpack(packed: int) -> tuple[int, int, int]:
    return (packed >> 16) & 255, (packed >> 8) & 255, packed & 255


class MaskError(TlappError):
    """A mask file that cannot be read, with a short ``reason`` for report tables."""

    def __init__(self, name: str, reason: str, hint: str = ""):
        super().__init__(f"Cannot read the mask {name}: {reason}.", hint)
        self.file = name
        self.reason = reason


@dataclass
class RawMask:
    """A mask's pixel values before any convention is applied."""

    kind: str  # "grey" (any single-band value), "palette" (indices of a mode P image) or "colour"
    values: np.ndarray  # (height, width) integers; packed 0xRRGGBB for "colour"
    lossy: bool  # stored in a lossy format (JPEG), so values near edges are noise
    palette: list[int] | None = None  # flat RGB list of a palette mask


def _grey_from_rgb(rgb: np.ndarray, lossy: bool) -> np.ndarray | None:
    """Return the single band of an RGB mask whose channels agree, or None for a colour mask."""
    red, green, blue = (rgb[..., channel].astype(np.int16) for channel in range(3))
    if lossy:
        spread = np.maximum(np.abs(red - green), np.abs(green - blue)).max(initial=0)
        if spread <= LOSSY_GREY_TOLERANCE:
            return np.rint((red + green + blue) / 3).astype(np.uint8)
        return None
    if np.array_equal(red, green) and np.array_equal(green, blue):
        return rgb[..., 0].copy()
    return None


def _from_bands(image: Image.Image, lossy: bool) -> RawMask:
    """Read an RGB(A), LA or other multi-band mask as grey when its bands agree, else as colour."""
    if image.mode == "LA":
        bands = np.asarray(image)
        grey, alpha = bands[..., 0], bands[..., 1]
        # A mask drawn only in the alpha band: the grey band is one flat value.
        if grey.min() == grey.max() and alpha.min() != alpha.max():
            return RawMask("grey", alpha.copy(), lossy)
        return RawMask("grey", grey.copy(), lossy)

    has_alpha = image.mode in ("RGBA", "RGBa", "PA") or "transparency" in image.info
    bands = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    rgb = bands[..., :3]
    if has_alpha:
        alpha = bands[..., 3]
        flat_rgb = (rgb == rgb[:1, :1]).all()
        if flat_rgb and alpha.min() != alpha.max():
            return RawMask("grey", alpha.copy(), lossy)
    grey = _grey_from_rgb(rgb, lossy)
    if grey is not None:
        return RawMask("grey", grey, lossy)
    packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    return RawMask("colour", packed, lossy)


def _from_image(image: Image.Image, lossy: bool) -> RawMask:
    mode = image.mode
    if mode == "1":
        return RawMask("grey", np.asarray(image).astype(np.uint8), lossy)
    if mode == "L":
        return RawMask("grey", np.asarray(image).copy(), lossy)
    if mode == "P":
        # The indices are the labels. Converting to L or RGB would replace them by palette
        # colours (index 1 of the VOC palette becomes grey level 38).
        return RawMask("palette", np.asarray(image).copy(), lossy, image.getpalette() or [])
    if mode.startswith("I"):
        return RawMask("grey", np.asarray(image).astype(np.int64), lossy)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.max() <= 1.0:
            return RawMask("grey", (values >= 0.5).astype(np.uint8), lossy)
        return RawMask("grey", np.rint(values).astype(np.int64), lossy)
    return _from_bands(image, lossy)


def read_raw_mask(path: Path, name: str | None = None, as_colour: bool = False) -> RawMask:
    """Decode a mask file without changing its values (EXIF orientation applied).

    With ``as_colour``, grey and palette masks are returned as packed colours too, for datasets
    whose other masks are colour-coded. Raises MaskError when the file cannot be decoded.
    """
    name = name or Path(path).name
    try:
        with Image.open(path) as opened:
            opened.load()
            lossy = opened.format in LOSSY_FORMATS
            image = ImageOps.exif_transpose(opened)
            raw = _from_image(image, lossy)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, struct.error, EOFError) as error:
        log.info("cannot decode mask %s: %s", path, error)
        raise MaskError(name, "not a readable image file", "Save the mask again as PNG, or remove the pair.") from None
    if as_colour and raw.kind != "colour":
        raw = _as_colour(raw)
    return raw


def _as_colour(raw: RawMask) -> RawMask:
    if raw.kind == "palette":
        palette = np.zeros(256 * 3, np.int32)
        palette[: len(raw.palette or [])] = raw.palette or []
        table = (palette[0::3] << 16) | (palette[1::3] << 8) | palette[2::3]
        return RawMask("colour", table[raw.values], raw.lossy)
    grey = np.clip(raw.values, 0, 255).astype(np.int32)
    return RawMask("colour", grey * 0x010101, raw.lossy)


@dataclass
class MaskSummary:
    """The values one mask uses, with their pixel counts."""

    relpath: str
    kind: str
    lossy: bool
    counts: dict[int, int]
    palette: list[int] | None = None

    @property
    def values(self) -> set[int]:
        return set(self.counts)


def summarise(raw: RawMask, relpath: str) -> MaskSummary:
    values = raw.values.ravel()
    if values.dtype == np.uint8:
        bins = np.bincount(values, minlength=256)
        counts = {int(value): int(bins[value]) for value in np.flatnonzero(bins)}
    else:
        unique, frequency = np.unique(values, return_counts=True)
        counts = {int(value): int(count) for value, count in zip(unique, frequency)}
    return MaskSummary(relpath, raw.kind, raw.lossy, counts, raw.palette)


@dataclass
class MaskConvention:
    """How mask values become class ids, decided once for a whole dataset.

    ``kind`` is "binary" (values at or above ``threshold`` are the object), or "trimap",
    "index", "grey levels", "colour", which look every value up in ``mapping``; values missing
    from ``mapping`` become IGNORE_INDEX.
    """

    kind: str
    description: str
    class_names: list[str]
    class_colours: list[tuple[int, int, int]]  # display colour of each class
    mapping: dict[int, int] = field(default_factory=dict)
    threshold: int = 1  # binary only: exact masks use 1 (any non-zero value is the object)
    soft_edges: bool = False  # binary only: exact masks are thresholded like lossy ones
    mask_colours: list[tuple[int, int, int]] | None = None  # colour masks: each class's colour in the files

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decode(self, raw: RawMask) -> np.ndarray:
        """Return the uint8 class-index target of a mask read by :func:`read_raw_mask`."""
        if self.kind == "binary":
            threshold = LOSSY_THRESHOLD if raw.lossy or self.soft_edges else self.threshold
            return (raw.values >= threshold).astype(np.uint8)
        unique, inverse = np.unique(raw.values, return_inverse=True)
        table = np.array([self.mapping.get(int(value), IGNORE_INDEX) for value in unique], np.uint8)
        return table[inverse].reshape(raw.values.shape)

    def read_target(self, path: Path, name: str | None = None) -> np.ndarray:
        """Decode a mask file into its class-index target."""
        return self.decode(read_raw_mask(path, name, as_colour=self.kind == "colour"))

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "description": self.description,
            "class_names": list(self.class_names),
            "class_colours": [list(colour) for colour in self.class_colours],
            "mapping": [[value, index] for value, index in sorted(self.mapping.items())],
            "threshold": self.threshold,
            "soft_edges": self.soft_edges,
            "mask_colours": [list(colour) for colour in self.mask_colours] if self.mask_colours else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> MaskConvention:
        return cls(
            kind=data["kind"],
            description=data["description"],
            class_names=list(data["class_names"]),
            class_colours=[tuple(colour) for colour in data["class_colours"]],
            mapping={int(value): int(index) for value, index in data.get("mapping", [])},
            threshold=int(data.get("threshold", 1)),
            soft_edges=bool(data.get("soft_edges", False)),
            mask_colours=[tuple(colour) for colour in data["mask_colours"]] if data.get("mask_colours") else None,
        )


def _default_names(count: int) -> list[str]:
    return ["background", *(f"class {index}" for index in range(1, count))]


def _files_phrase(relpaths: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(relpaths[:limit])
    return shown if len(relpaths) <= limit else f"{shown} and {len(relpaths) - limit} more"


# --- choosing the convention -----------------------------------------------------------------


def _colour_convention(summaries: list[MaskSummary]) -> MaskConvention:
    void = _pack(*VOC_VOID)
    colours = sorted(set().union(*(s.values for s in summaries)) - {void})
    if len(colours) > MAX_COLOURS:
        worst = max(summaries, key=lambda s: len(s.counts))
        raise TlappError(
            f"The colour-coded masks use {len(colours)} different colours ({worst.relpath} alone uses "
            f"{len(worst.counts)}); at most {MAX_COLOURS} are supported.",
            "Give each class one exact colour and save the masks as PNG without anti-aliasing or resizing, "
            "or save them as palette (indexed) PNGs whose pixel values are the class numbers.",
        )
    black = _pack(0, 0, 0)
    others = [colour for colour in colours if colour != black]
    voc_index = {_pack(*colour): index for index, colour in enumerate(VOC_COLOURS[:MAX_INDEX_CLASSES]) if index}
    if others and all(colour in voc_index for colour in others):
        # Masks drawn with the VOC colour map keep their VOC class numbers.
        count = max(voc_index[colour] for colour in others) + 1
        mapping = {black: 0, **{colour: voc_index[colour] for colour in others}}
        mask_colours = [VOC_COLOURS[index] for index in range(count)]
    else:
        # A fixed order that does not depend on which file comes first: red before green before blue.
        ordered = sorted(others, key=_unpack, reverse=True)
        mapping = {black: 0, **{colour: index for index, colour in enumerate(ordered, start=1)}}
        mask_colours = [(0, 0, 0), *(_unpack(colour) for colour in ordered)]
        count = len(mask_colours)
    names = _default_names(count)
    shown = ", ".join(f"{names[index]} = RGB{mask_colours[index]}" for index in range(count))
    description = f"colour-coded masks: {shown}"
    if void in set().union(*(s.values for s in summaries)):
        description += f"; RGB{VOC_VOID} (VOC void) is ignored"
    return MaskConvention("colour", description, names, list(mask_colours), mapping, mask_colours=list(mask_colours))


def _binary_convention(summaries: list[MaskSummary], nonzero: set[int]) -> MaskConvention:
    exact = [s for s in summaries if not s.lossy]
    parts = []
    by_value: dict[int, list[str]] = {}
    for summary in exact:
        for value in summary.values - {0}:
            by_value.setdefault(value, []).append(summary.relpath)
    for value in sorted(by_value):
        parts.append(f"0/{value} in {len(by_value[value])} files")
    lossy = [s for s in summaries if s.lossy]
    if lossy:
        parts.append(f"JPEG thresholded at {LOSSY_THRESHOLD} in {len(lossy)} files")
    detail = f" ({'; '.join(parts)})" if parts else ""
    description = f"binary masks{detail}: 0 = background, any other value = object"
    if lossy and not exact:
        description = f"binary masks saved as JPEG, thresholded at {LOSSY_THRESHOLD}: darker = background, brighter = object"
    colours = [DISPLAY_COLOURS[0], DISPLAY_COLOURS[1]]
    return MaskConvention("binary", description, ["background", "object"], colours, threshold=1)


def _palette_colours(summaries: list[MaskSummary], count: int) -> list[tuple[int, int, int]]:
    """Return each class's colour from the first palette mask, or the display colours."""
    palette = next((s.palette for s in summaries if s.palette), None)
    colours = []
    for index in range(count):
        if palette and len(palette) >= 3 * index + 3 and index:
            colours.append(tuple(palette[3 * index : 3 * index + 3]))
        else:
            colours.append(display_colour(index))
    return colours


def _grey_convention(summaries: list[MaskSummary], trimap_border: str) -> tuple[MaskConvention, list[str]]:
    """Choose among binary, trimap, index and grey-level masks from the values all files use."""
    warnings: list[str] = []
    exact = [s for s in summaries if not s.lossy]
    values = set().union(*(s.values for s in exact)) if exact else set()
    nonzero = values - {0}
    mixed_binary = nonzero == {1, 255} and not any({1, 255} <= s.values for s in exact)
    if len(nonzero) <= 1 or mixed_binary:
        return _binary_convention(summaries, nonzero), warnings

    lossy = [s.relpath for s in summaries if s.lossy]
    if lossy:
        raise TlappError(
            f"Some masks are JPEG files ({_files_phrase(lossy)}) while the others use several class values; "
            "JPEG compression changes pixel values, so their classes cannot be read reliably.",
            "Save every mask as PNG.",
        )

    if values <= {1, 2, 3} and 2 in values:
        border = 1 if trimap_border == "object" else IGNORE_INDEX
        treated = "object" if trimap_border == "object" else "ignored (not trained on, not scored)"
        description = f"Oxford-style trimaps: 1 = object, 2 = background, 3 = border, treated as {treated}"
        convention = MaskConvention(
            "trimap", description, ["background", "object"], [DISPLAY_COLOURS[0], DISPLAY_COLOURS[1]],
            mapping={1: 1, 2: 0, 3: border},
        )
        return convention, warnings

    labels = nonzero - {IGNORE_INDEX}
    if labels and max(labels) < MAX_INDEX_CLASSES:
        count = max(labels) + 1
        kind = "palette (indexed) masks" if any(s.kind == "palette" for s in summaries) else "grey masks"
        description = f"{kind} holding class indices 0-{count - 1}, 0 = background"
        if IGNORE_INDEX in values:
            description += f", {IGNORE_INDEX} = ignored (not trained on, not scored)"
        mapping = {index: index for index in range(count)}
        only_ignore = [s.relpath for s in exact if s.values - {0} == {IGNORE_INDEX}]
        if only_ignore:
            warnings.append(
                f"{len(only_ignore)} masks contain only background (0) and ignored ({IGNORE_INDEX}) pixels: "
                f"{_files_phrase(only_ignore)}. If {IGNORE_INDEX} means the object there, save those masks with "
                "the class number instead."
            )
        convention = MaskConvention("index", description, _default_names(count), _palette_colours(summaries, count), mapping)
        return convention, warnings

    total = sum(sum(s.counts.values()) for s in exact)
    low, high = min(values), max(values)
    between = sum(count for s in exact for value, count in s.counts.items() if value not in (low, high))
    # Smoothed (anti-aliased or resized) binary masks have several rare in-between grey levels;
    # grey-level-coded classes have few levels, each covering whole regions.
    if len(values) - 2 >= SOFT_EDGE_MIN_LEVELS and between <= SOFT_EDGE_MAX_SHARE * total:
        convention = _binary_convention(summaries, {high})
        convention.soft_edges = True
        convention.description = (
            f"binary masks with smoothed edges, thresholded at {LOSSY_THRESHOLD}: darker = background, brighter = object"
        )
        warnings.append(
            f"The masks use {len(values)} grey levels, but {1 - between / total:.1%} of their pixels are {low} or "
            f"{high}: they were read as binary masks with smoothed edges and thresholded at {LOSSY_THRESHOLD}. "
            "Save masks without anti-aliasing to keep exact edges."
        )
        return convention, warnings

    if len(values) <= MAX_COLOURS:
        ordered = sorted(values)
        mapping = {value: index for index, value in enumerate(ordered)}
        names = _default_names(len(ordered)) if 0 in values else [f"class {index}" for index in range(len(ordered))]
        shown = ", ".join(f"{value} = {names[index]}" for index, value in enumerate(ordered))
        convention = MaskConvention(
            "grey levels", f"grey levels, one class each: {shown}", names,
            [display_colour(index) for index in range(len(ordered))], mapping,
        )
        tiny = [str(value) for value in ordered if sum(s.counts.get(value, 0) for s in exact) < TINY_CLASS_SHARE * total]
        if tiny:
            warnings.append(
                f"The grey levels {', '.join(tiny)} each cover under {TINY_CLASS_SHARE:.1%} of the mask pixels. "
                "If the masks are binary with smoothed edges, save them without anti-aliasing; each grey level "
                "is treated as a class."
            )
        return convention, warnings

    worst = max(exact, key=lambda s: len(s.counts))
    raise TlappError(
        f"The masks use {len(values)} different values ({worst.relpath} alone uses {len(worst.counts)}), "
        f"which is neither binary, class indices below {MAX_INDEX_CLASSES}, nor at most {MAX_COLOURS} grey levels.",
        "Save each mask as a PNG whose pixel values are class numbers (0 = background, 1, 2 ...), "
        "or as black and white for one object class.",
    )


def detect_convention(summaries: list[MaskSummary], trimap_border: str = "object") -> tuple[MaskConvention, list[str]]:
    """Decide how the dataset's masks encode classes; return the convention and warnings.

    ``summaries`` must all be colour summaries when any mask is colour-coded (see
    :func:`scan_masks`). Raises TlappError when the values fit no supported convention.
    """
    if any(s.kind == "colour" for s in summaries):
        lossy = [s.relpath for s in summaries if s.lossy]
        if lossy:
            raise TlappError(
                f"Colour-coded masks were saved as JPEG ({_files_phrase(lossy)}); compression changes their "
                "colours, so the classes cannot be read reliably.",
                "Save the masks as PNG.",
            )
        return _colour_convention(summaries), []

    convention, warnings = _grey_convention(summaries, trimap_border)
    lossy = [s.relpath for s in summaries if s.lossy]
    if lossy:
        warnings.insert(
            0,
            f"{len(lossy)} masks are JPEG files ({_files_phrase(lossy)}). JPEG compression adds grey levels "
            f"at the edges, so their values were thresholded at {LOSSY_THRESHOLD}. Save masks as PNG to keep "
            "exact labels.",
        )
    return convention, warnings


# --- scanning a dataset ----------------------------------------------------------------------


@dataclass
class MaskScan:
    """The convention of a dataset's masks and what reading them found."""

    convention: MaskConvention
    warnings: list[str]
    unreadable: dict[str, str]  # relpath -> reason
    class_pixels: list[int]  # pixels of each class over all readable masks


def _read_all(paths: Sequence[tuple[Path, str]], as_colour: bool) -> list[MaskSummary | MaskError]:
    def read_one(item: tuple[Path, str]) -> MaskSummary | MaskError:
        path, relpath = item
        try:
            return summarise(read_raw_mask(path, relpath, as_colour), relpath)
        except MaskError as error:
            return error

    if len(paths) < 8:
        return [read_one(item) for item in paths]
    workers = min(8, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlapp-masks") as pool:
        return list(pool.map(read_one, paths))


def _class_pixels(convention: MaskConvention, summaries: list[MaskSummary]) -> list[int]:
    pixels = [0] * convention.num_classes
    for summary in summaries:
        for value, count in summary.counts.items():
            if convention.kind == "binary":
                threshold = LOSSY_THRESHOLD if summary.lossy or convention.soft_edges else convention.threshold
                index = int(value >= threshold)
            else:
                index = convention.mapping.get(value, IGNORE_INDEX)
            if index != IGNORE_INDEX:
                pixels[index] += count
    return pixels


def scan_masks(paths: Sequence[tuple[Path, str]], trimap_border: str = "object") -> MaskScan:
    """Read every mask once and decide the dataset's convention.

    ``paths`` holds (file, name shown to the user). Unreadable masks are returned by name and
    left out of the decision. Raises TlappError when no mask is readable or no mask contains
    anything but background.
    """
    results = _read_all(paths, as_colour=False)
    unreadable = {r.file: r.reason for r in results if isinstance(r, MaskError)}
    summaries = [r for r in results if isinstance(r, MaskSummary)]
    if not summaries:
        raise TlappError("None of the masks could be read.", "Save the masks as PNG files.")
    if any(s.kind == "colour" for s in summaries):
        readable = [(path, relpath) for path, relpath in paths if relpath not in unreadable]
        summaries = [r for r in _read_all(readable, as_colour=True) if isinstance(r, MaskSummary)]

    convention, warnings = detect_convention(summaries, trimap_border)
    pixels = _class_pixels(convention, summaries)
    if not any(pixels[1:]):
        raise TlappError(
            f"All {len(summaries)} masks contain only background ({convention.description}).",
            "Check that the masks mark the objects: for one object class, draw the object white "
            "(255) or 1 on black (0).",
        )
    empty_classes = [convention.class_names[index] for index, count in enumerate(pixels) if index and not count]
    if empty_classes:
        warnings.append(
            f"No mask contains pixels of {', '.join(empty_classes)}; these classes cannot be learned."
        )
    log.info("masks: %s", convention.description)
    return MaskScan(convention, warnings, unreadable, pixels)


def outline_score(target: np.ndarray) -> float | None:
    """Return how filled the object pixels (class 1) of a target are, or None when there are none.

    For each connected region: the radius of the largest disk that fits inside it, divided by the
    square root of its area; then the area-weighted mean over the regions. A filled region scores
    about 0.5 whatever its size, while an outline of width w around an object of side s scores
    about w / (4 * sqrt(s * w)), under 0.1 for the usual few-pixel outlines.
    """
    # scipy is imported here because only this check needs it.
    from scipy import ndimage

    objects = target == 1
    if not objects.any():
        return None
    labels, count = ndimage.label(objects)
    indices = np.arange(1, count + 1)
    radius = ndimage.maximum(ndimage.distance_transform_edt(objects), labels, indices)
    area = ndimage.sum(objects, labels, indices)
    return float((radius * np.sqrt(area)).sum() / area.sum())
