"""Decode any image a user gives tlapp into an RGB picture.

Training, preview and prediction all go through :func:`load_rgb`, so an image looks the same
to the model wherever it comes from. Every failure becomes an :class:`ImageError` whose
``reason`` is short enough for a report table.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError, features

from tlapp.errors import TlappError

logger = logging.getLogger(__name__)

try:
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # the plugin is optional; HEIC files then get a clear "export as JPEG" reason
    HEIF_SUPPORTED = False

# Pillow decodes AVIF natively when it was built with libavif.
AVIF_SUPPORTED = features.check("avif")

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]

# tlapp rejects images above this many pixels before decoding them. 100 MP admits full-resolution
# photos of 48-64 MP phone cameras, while a decoded 100 MP RGB image still fits in 300 MB.
# Pillow's own limit (error above 2 x 89.5 MP) stays in force as well.
MAX_IMAGE_PIXELS = 100_000_000

# Transparent pixels are composited over this colour, for training and prediction alike.
BACKGROUND_RGB = (255, 255, 255)

# Images whose shorter side is below this many pixels are upscaled heavily by the model
# preprocessing; datasets.py warns about them.
TINY_SIDE = 32

# Key in ``Image.info`` where load_rgb stores the size before any downscaling.
ORIGINAL_SIZE_KEY = "tlapp_original_size"

# Pillow registers these formats but cannot decode them here: stubs that need an external
# handler (BUFR, GRIB, HDF5, WMF outside Windows), MPEG (identification only) and EPS
# (needs Ghostscript).
_NOT_DECODABLE_FORMATS = {"BUFR", "GRIB", "HDF5", "MPEG", "EPS", "WMF"}


def _image_extensions() -> frozenset[str]:
    Image.init()
    extensions = {
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _NOT_DECODABLE_FORMATS
    }
    extensions |= {".heic", ".heif", ".jfif", ".jpe", ".jpg", ".jpeg"}
    return frozenset(extensions)


IMAGE_EXTENSIONS = _image_extensions()

# Pillow's header parsing happens under this lock because warnings.catch_warnings is not
# thread-safe before Python 3.14; decoding itself runs outside it, in parallel.
_OPEN_LOCK = threading.Lock()

_REASON_EMPTY = "empty file (0 bytes)"
_REASON_HTML = "not an image: looks like an HTML page"
_REASON_TEXT = "not an image: looks like text"
_REASON_CORRUPT = "truncated or corrupt image data"
_REASON_HEIC = "unsupported format (HEIC): export as JPEG"
_REASON_UNSUPPORTED = "unsupported format"

# Leading bytes of formats users commonly upload; a file that starts like one of these but fails
# to decode is corrupt, not "unsupported".
_KNOWN_MAGIC = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"heif")
_AVIF_BRANDS = (b"avif", b"avis")


class ImageError(TlappError):
    """An image that cannot be used, with a short ``reason`` for report tables."""

    def __init__(self, name: str, reason: str, message: str | None = None, hint: str = ""):
        super().__init__(message or f"Cannot read {name}: {reason}.", hint)
        self.file = name
        self.reason = reason


def load_rgb(
    source: ImageSource, *, name: str | None = None, max_side: int | None = 1024
) -> Image.Image:
    """Decode ``source`` fully and return it as an RGB image.

    ``source`` is a path, the file's bytes or a binary file object (Streamlit's UploadedFile is
    one). ``name`` is what messages call the file; it defaults to the path's name. The result
    is upright (EXIF orientation applied), uses the first frame of an animation, has
    transparency composited over :data:`BACKGROUND_RGB` and, when ``max_side`` is set, is
    shrunk so that its longer side is at most ``max_side``. Small images are never upscaled.
    ``info[ORIGINAL_SIZE_KEY]`` is the stored size before any downscaling.

    Raises ImageError for anything that is not a decodable image of acceptable size.
    """
    display_name = name or _default_name(source)
    data = _read_source(source, display_name)
    if not data:
        raise ImageError(display_name, _REASON_EMPTY, hint="Replace it with a non-empty image file.")

    image = _open(data, display_name)
    try:
        original_size = image.size
        wide_samples = image.mode == "RGB" and _has_16bit_samples(image.tile)
        if max_side and image.format == "JPEG":
            # JPEG can decode at 1/2, 1/4 or 1/8 scale directly, so a 24 MP photo never
            # occupies full-size memory.
            image.draft(None, (max_side, max_side))
        _decode(image, display_name)
        # Read after decoding: PNG keeps EXIF after the pixel data, so reading it earlier would
        # decode the image a second time.
        orientation = _orientation(image, display_name)
        if max_side and not wide_samples and _can_shrink_before_conversion(image, max_side):
            # Shrinking first keeps a 90 MP grayscale scan at 90 MB instead of 360 MB.
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        rgb = _rgb48_to_rgb(image, data, display_name) if wide_samples else _to_rgb(image)
    except BaseException:
        image.close()
        raise
    if rgb is not image:
        image.close()

    if orientation in _ORIENTATION_TRANSPOSE:
        rgb = rgb.transpose(_ORIENTATION_TRANSPOSE[orientation])
    if max_side and max(rgb.size) > max_side:
        rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    rgb.info[ORIGINAL_SIZE_KEY] = original_size
    return rgb


def is_tiny(image: Image.Image) -> bool:
    """Return whether the image, as stored on disk, has a side under :data:`TINY_SIDE` pixels."""
    width, height = image.info.get(ORIGINAL_SIZE_KEY, image.size)
    return min(width, height) < TINY_SIDE


def has_image_extension(path: str | os.PathLike) -> bool:
    """Return whether the file name ends in an extension of :data:`IMAGE_EXTENSIONS` (any case)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _default_name(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name
    uploaded_name = getattr(source, "name", None)
    if isinstance(uploaded_name, str) and uploaded_name:
        return Path(uploaded_name).name
    return "image"


def _read_source(source: ImageSource, name: str) -> bytes:
    """Return the file's bytes. Images are read whole once because decoding retries need them."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(name, "file not found", hint="Check the path.") from None
        except IsADirectoryError:
            raise ImageError(name, "is a folder, not a file", hint="Pass an image file.") from None
        except OSError as exc:
            raise ImageError(name, f"cannot be read ({exc.strerror})") from None
    if hasattr(source, "read"):
        if hasattr(source, "seek"):
            source.seek(0)
        return source.read()
    raise TypeError(f"load_rgb expects a path, bytes or a binary file object, not {type(source).__name__}")


def _open(data: bytes, name: str) -> ImageFile.ImageFile:
    """Parse the header, refusing images over MAX_IMAGE_PIXELS before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            # tlapp applies its own pixel limit below; Pillow's warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise _too_large_error(name, _probe_size(data)) from None
    except UnidentifiedImageError:
        raise _unidentified_error(data, name) from None
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError):
        raise ImageError(name, _REASON_CORRUPT, hint=_HINT_REEXPORT) from None

    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        image.close()
        raise _too_large_error(name, image.size)
    return image


_HINT_REEXPORT = "Open it in an image editor and save it again as JPEG or PNG, or remove it."


def _decode(image: ImageFile.ImageFile, name: str) -> None:
    """Decode the first frame now, so that truncated data fails here and not in a training epoch."""
    try:
        image.seek(0)
        image.load()
    except Image.DecompressionBombError:
        # A GIF frame can be larger than the logical screen declared in its header.
        raise _too_large_error(name, None) from None
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, EOFError, ZeroDivisionError):
        raise ImageError(name, _REASON_CORRUPT, hint=_HINT_REEXPORT) from None


def _too_large_error(name: str, size: tuple[int, int] | None) -> ImageError:
    limit_mp = MAX_IMAGE_PIXELS // 1_000_000
    hint = f"Downscale it below {limit_mp} megapixels (for example to 4000x3000) and add it again."
    if size is None:
        return ImageError(
            name,
            f"too large: over the limit of {limit_mp} MP",
            message=f"{name} is over tlapp's limit of {limit_mp} MP per image.",
            hint=hint,
        )
    width, height = size
    megapixels = round(width * height / 1_000_000)
    return ImageError(
        name,
        f"too large: {width}x{height} ({megapixels} MP) over the limit of {limit_mp} MP",
        message=f"{name} is {width}x{height} ({megapixels} MP), over tlapp's limit of {limit_mp} MP per image.",
        hint=hint,
    )


def _probe_size(data: bytes) -> tuple[int, int] | None:
    """Read the pixel size from the header without Pillow's bomb check, which raised before it.

    Mirrors the format probing of ``PIL.Image.open`` (Pillow 13) minus the size check. Returns
    None when no plugin accepts the header.
    """
    prefix = data[:16]
    for fmt in Image.ID:
        factory, accept = Image.OPEN[fmt]
        if accept and not accept(prefix):
            continue
        try:
            probe = factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error, OSError, ValueError):
            continue
        size = probe.size
        probe.close()
        return size
    return None


def _unidentified_error(data: bytes, name: str) -> ImageError:
    """Explain why Pillow found no image, from the file's leading bytes."""
    head = data[:1024]
    brand = head[8:12] if head[4:8] == b"ftyp" else b""
    if brand in _HEIF_BRANDS and HEIF_SUPPORTED or brand in _AVIF_BRANDS and AVIF_SUPPORTED:
        return ImageError(name, _REASON_CORRUPT, hint=_HINT_REEXPORT)
    if brand in _HEIF_BRANDS:
        return ImageError(
            name,
            _REASON_HEIC,
            hint="HEIC is not supported here - export the photo as JPEG (on iPhone: Settings > "
            "Camera > Formats > Most Compatible).",
        )
    if brand in _AVIF_BRANDS:
        return ImageError(name, "unsupported format (AVIF)", hint="Export it as JPEG or PNG.")
    if head.startswith(_KNOWN_MAGIC):
        return ImageError(name, _REASON_CORRUPT, hint=_HINT_REEXPORT)

    text = _as_text(head)
    if text is not None:
        lowered = text.lstrip().lower()
        if lowered.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lowered:
            return ImageError(
                name,
                _REASON_HTML,
                hint="The download probably failed (an error or login page was saved instead). "
                "Download the image again or remove it.",
            )
        return ImageError(name, _REASON_TEXT, hint="Use an image file (JPEG, PNG or another photo format) instead.")
    return ImageError(name, _REASON_UNSUPPORTED, hint="Convert it to JPEG or PNG.")


def _as_text(head: bytes) -> str | None:
    """Return the leading bytes as text, or None unless they read as UTF-8 or BOM-marked UTF-16 text."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8"
    # errors="ignore" only tolerates a multi-byte character cut at the end of the 1024 bytes.
    text = head.decode(encoding, errors="ignore")
    if len(text.encode(encoding)) < len(head) - 4 or not text:
        return None
    control = sum(1 for ch in text if ord(ch) < 32 and ch not in "\t\n\r\f")
    return text if control <= len(text) // 100 else None


def _to_rgb(image: ImageFile.ImageFile) -> Image.Image:
    """Convert a decoded image of any Pillow mode to RGB."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image  # no copy, because a 100 MP image would need another 300 MB
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return _integer_to_rgb(np.asarray(image))
    if mode == "F":
        return _float_to_rgb(np.asarray(image, dtype=np.float64))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in image.info:
        # Converting P with byte transparency straight to RGB makes Pillow warn on every call;
        # going through RGBA keeps the alpha and raises no warning.
        return _composite(image.convert("RGBA"))
    if mode == "P" and image.palette is not None and image.palette.mode == "RGBA":
        return _composite(image.convert("RGBA"))
    # 1, L, P, CMYK (Pillow handles Adobe's inverted CMYK JPEGs), YCbCr, LAB, HSV.
    return image.convert("RGB")


def _composite(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGB", rgba.size, BACKGROUND_RGB)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _integer_to_rgb(values: np.ndarray) -> Image.Image:
    """Map 16- or 32-bit gray to 8 bits, dividing by the smallest bit depth that fits the data.

    A 12-bit sensor image stored in 16 bits is divided by 4095, a full-range 16-bit image by
    65535, so neither saturates and a dark image stays dark. Data with negative values is
    stretched from its minimum to its maximum instead.
    """
    return Image.fromarray(_scale_to_uint8(values.astype(np.int64))).convert("RGB")


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    low = int(values.min()) if values.size else 0
    high = int(values.max()) if values.size else 0
    if low < 0:
        span = max(high - low, 1)
        return ((values - low) * 255 // span).astype(np.uint8)
    bits = max(8, high.bit_length())
    return (values * 255 // ((1 << bits) - 1)).astype(np.uint8)


def _float_to_rgb(values: np.ndarray) -> Image.Image:
    """Map float data to 8 bits: [0, 1] data is scaled by 255, anything else min-max stretched."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    low = float(values.min()) if values.size else 0.0
    high = float(values.max()) if values.size else 0.0
    if low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8)).convert("RGB")


# Pillow stores 48-bit RGB as 8-bit RGB by keeping each sample's high byte. Decoding a second
# time with the opposite byte order keeps the low byte instead, which recovers all 16 bits.
_SWAPPED_16BIT_RAWMODES = {
    "RGB;16B": "RGB;16L",
    "RGB;16L": "RGB;16B",
    "RGB;16N": "RGB;16B" if struct.pack("=H", 1) == b"\x01\x00" else "RGB;16L",
}


def _tile_rawmode(tile) -> str | None:
    args = tile.args
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _can_shrink_before_conversion(image: Image.Image, max_side: int) -> bool:
    # Pillow resamples these modes with full filters; palette, bilevel and colour-keyed images
    # would fall back to nearest-neighbour or lose their transparency key.
    return (
        max(image.size) > max_side
        and image.mode in ("L", "LA", "RGB", "RGBA")
        and "transparency" not in image.info
    )


def _has_16bit_samples(tiles) -> bool:
    """Return whether the undecoded tiles hold 16-bit RGB samples (read before load() clears them)."""
    return bool(tiles) and all(_tile_rawmode(tile) in _SWAPPED_16BIT_RAWMODES for tile in tiles)


def _rgb48_to_rgb(image: Image.Image, data: bytes, name: str) -> Image.Image:
    """Rescale 48-bit RGB by its real value range, as _integer_to_rgb does for gray."""
    high_bytes = np.asarray(image).astype(np.int64)
    try:
        low_image = Image.open(io.BytesIO(data))
        low_image.tile = [
            tile._replace(args=_swap_rawmode(tile.args)) for tile in low_image.tile
        ]
        low_image.load()
        low_bytes = np.asarray(low_image).astype(np.int64)
    except (OSError, ValueError, SyntaxError, struct.error) as exc:
        logger.warning("Keeping only the high byte of 48-bit %s because its second decode failed: %s", name, exc)
        return image.copy()
    if low_bytes.shape != high_bytes.shape:
        return image.copy()
    return Image.fromarray(_scale_to_uint8(high_bytes * 256 + low_bytes), "RGB")


def _swap_rawmode(args):
    if isinstance(args, str):
        return _SWAPPED_16BIT_RAWMODES[args]
    return (_SWAPPED_16BIT_RAWMODES[args[0]], *args[1:])


# EXIF orientation value -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image, name: str) -> int:
    """Return the EXIF orientation (1 = upright), read before conversion drops the metadata."""
    try:
        return int(image.getexif().get(ExifTags.Base.Orientation, 1))
    except (OSError, ValueError, SyntaxError, struct.error, KeyError, TypeError) as exc:
        # A broken EXIF block only costs the rotation; the pixels are fine.
        logger.warning("Ignoring unreadable EXIF orientation of %s: %s", name, exc)
        return 1


def looks_like_image(path: str | os.PathLike) -> bool:
    """Return whether Pillow recognises the file's header, without decoding pixels.

    Used for files whose extension is not an image extension, so that a large video or archive
    is never read whole just to find out it is not an image.
    """
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return True
    except Image.DecompressionBombError:
        return True
    except (OSError, SyntaxError, ValueError, struct.error, IndexError, TypeError):
        return False
