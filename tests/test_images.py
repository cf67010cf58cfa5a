"""Unit tests of tlapp.images on small images generated per test."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tlapp import images
from tlapp.errors import TlappError
from tlapp.images import BACKGROUND_RGB, ImageError, load_rgb

RED = (220, 30, 30)
GREEN = (30, 180, 60)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_rgb48(samples: np.ndarray) -> bytes:
    """Encode an (h, w, 3) array as a 16-bit-per-channel RGB PNG (Pillow cannot write one)."""
    height, width, _ = samples.shape
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def is_reddish(pixel: tuple[int, int, int]) -> bool:
    red, green, blue = pixel
    return red > 150 and green < 100 and blue < 100


# --- sources --------------------------------------------------------------------------------


def test_load_rgb_from_path_bytes_and_file(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (30, 20), RED).save(path)
    upload = io.BytesIO(path.read_bytes())
    upload.name = "upload.png"
    upload.read()  # an upload that was read once must still decode from the start

    for source in (path, str(path), path.read_bytes(), upload):
        image = load_rgb(source)
        assert image.mode == "RGB"
        assert image.size == (30, 20)
        assert image.getpixel((5, 5)) == RED


def test_error_names_the_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")

    with pytest.raises(ImageError) as by_path:
        load_rgb(path)
    with pytest.raises(ImageError) as by_name:
        load_rgb(b"", name="square/x.jpg")

    assert by_path.value.file == "empty.jpg"
    assert "empty.jpg" in by_path.value.message
    assert by_name.value.file == "square/x.jpg"
    assert "square/x.jpg" in str(by_name.value)
    assert isinstance(by_name.value, TlappError)
    assert by_name.value.hint


# --- modes ----------------------------------------------------------------------------------


def test_grayscale_l_becomes_gray_rgb():
    image = load_rgb(encode(Image.new("L", (8, 8), 90), "PNG"))

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (90, 90, 90)


def test_bilevel_mode_1():
    bilevel = Image.new("1", (8, 8), 0)
    bilevel.putpixel((1, 1), 1)

    image = load_rgb(encode(bilevel, "PNG"))

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (0, 0, 0)
    assert image.getpixel((1, 1)) == (255, 255, 255)


def test_16bit_gray_12bit_data_is_midrange():
    values = np.full((8, 8), 2048, dtype=np.uint16)
    values[0, 0] = 4095
    data = encode(Image.fromarray(values), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"

    image = load_rgb(data)

    assert image.mode == "RGB"
    assert 110 <= image.getpixel((4, 4))[0] <= 145
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_16bit_gray_full_range_not_white():
    values = np.full((8, 8), 32768, dtype=np.uint16)
    values[0, 0] = 65535
    values[0, 1] = 0

    image = load_rgb(encode(Image.fromarray(values), "PNG"))

    assert 110 <= image.getpixel((4, 4))[0] <= 145
    assert image.getpixel((0, 0))[0] == 255
    assert image.getpixel((1, 0))[0] == 0


def test_32bit_integer_gray():
    values = np.full((8, 8), 2000, dtype=np.int32)
    values[0, 0] = 4000
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"

    image = load_rgb(data)

    assert 110 <= image.getpixel((4, 4))[0] <= 145


def test_48bit_rgb_is_scaled_by_its_range():
    samples = np.zeros((8, 8, 3), dtype=np.uint16)
    samples[..., 0] = 2048  # a 12-bit red channel, half intensity
    samples[0, 0] = (4095, 4095, 4095)

    image = load_rgb(png_rgb48(samples))

    red, green, blue = image.getpixel((4, 4))
    assert 110 <= red <= 145
    assert green == 0
    assert blue == 0
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_48bit_rgb_full_range_tiff():
    tifffile = pytest.importorskip("tifffile")
    samples = np.full((8, 8, 3), 32768, dtype=np.uint16)
    samples[0, 0] = (65535, 0, 65535)
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, samples, photometric="rgb")

    image = load_rgb(buffer.getvalue())

    assert all(110 <= channel <= 145 for channel in image.getpixel((4, 4)))
    assert image.getpixel((0, 0)) == (255, 0, 255)


@pytest.mark.parametrize(
    ("low", "high", "middle", "expected"),
    [(0.0, 1.0, 0.5, 128), (-10.0, 1000.0, 495.0, 128)],
)
def test_float_tiff(low, high, middle, expected):
    values = np.full((8, 8), middle, dtype=np.float32)
    values[0, 0] = low
    values[0, 1] = high
    data = encode(Image.fromarray(values, "F"), "TIFF")

    image = load_rgb(data)

    assert image.mode == "RGB"
    assert abs(image.getpixel((4, 4))[0] - expected) <= 2
    assert image.getpixel((0, 0))[0] == 0
    assert image.getpixel((1, 0))[0] == 255


def test_rgba_transparent_pixel_gets_background():
    rgba = Image.new("RGBA", (8, 8), (*RED, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))

    image = load_rgb(encode(rgba, "PNG"))

    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == BACKGROUND_RGB
    assert image.getpixel((4, 4)) == RED


def test_la_half_transparent_blends():
    gray_alpha = Image.new("LA", (8, 8), (0, 128))

    image = load_rgb(encode(gray_alpha, "PNG"))

    assert all(120 <= channel <= 135 for channel in image.getpixel((0, 0)))


def test_palette_opaque():
    palette_image = Image.new("RGB", (8, 8), GREEN).convert("P", palette=Image.Palette.ADAPTIVE)

    image = load_rgb(encode(palette_image, "PNG"))

    assert image.getpixel((0, 0)) == GREEN


def test_palette_transparent_index_gif_without_warning():
    palette_image = Image.new("P", (8, 8), 1)
    palette_image.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette_image.putpixel((0, 0), 0)
    data = encode(palette_image, "GIF", transparency=0)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_rgb(data)

    assert image.getpixel((0, 0)) == BACKGROUND_RGB
    assert image.getpixel((4, 4)) == RED
    assert caught == []


def test_palette_trns_bytes_png_without_warning():
    palette_image = Image.new("P", (8, 8), 1)
    palette_image.putpalette([0, 0, 0, *RED, *GREEN] + [0] * 759)
    palette_image.putpixel((0, 0), 0)
    palette_image.putpixel((1, 0), 2)
    data = encode(palette_image, "PNG", transparency=bytes([0, 255, 128]))
    assert isinstance(Image.open(io.BytesIO(data)).info["transparency"], bytes)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_rgb(data)

    assert image.getpixel((0, 0)) == BACKGROUND_RGB
    assert image.getpixel((4, 4)) == RED
    half_green = image.getpixel((1, 0))
    assert half_green[1] > half_green[0]
    assert caught == []


def test_rgb_colour_key_transparency():
    rgb = Image.new("RGB", (8, 8), RED)
    rgb.putpixel((0, 0), (0, 0, 255))
    data = encode(rgb, "PNG", transparency=(0, 0, 255))

    image = load_rgb(data)

    assert image.getpixel((0, 0)) == BACKGROUND_RGB
    assert image.getpixel((4, 4)) == RED


def test_gray_colour_key_transparency():
    gray = Image.new("L", (8, 8), 60)
    gray.putpixel((0, 0), 0)
    data = encode(gray, "PNG", transparency=0)

    image = load_rgb(data)

    assert image.getpixel((0, 0)) == BACKGROUND_RGB
    assert image.getpixel((4, 4)) == (60, 60, 60)


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk_red_stays_red(fmt):
    cmyk = Image.new("RGB", (16, 16), RED).convert("CMYK")

    image = load_rgb(encode(cmyk, fmt))

    assert image.mode == "RGB"
    assert is_reddish(image.getpixel((8, 8)))


@pytest.mark.parametrize("mode", ["YCbCr", "LAB"])
def test_ycbcr_and_lab_tiff(mode):
    converted = Image.new("RGB", (8, 8), GREEN).convert(mode)

    image = load_rgb(encode(converted, "TIFF"))

    red, green, blue = image.getpixel((4, 4))
    assert image.mode == "RGB"
    assert green > red + 60
    assert green > blue + 60


@pytest.mark.parametrize("mode", ["HSV", "PA"])
def test_modes_without_file_format(mode):
    # No common file format stores these modes, so the conversion is tested directly.
    source = Image.new("RGB", (8, 8), GREEN).convert(mode)

    image = images._to_rgb(source)

    assert image.mode == "RGB"
    assert image.getpixel((0, 0))[1] > 150


# --- geometry -------------------------------------------------------------------------------


def test_exif_orientation_6_rotates():
    landscape = Image.new("RGB", (40, 20), GREEN)
    landscape.paste(RED, (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; display turns it 90 degrees clockwise

    image = load_rgb(encode(landscape, "JPEG", exif=exif.tobytes(), quality=95))

    assert image.size == (20, 40)
    assert is_reddish(image.getpixel((10, 5)))
    assert not is_reddish(image.getpixel((10, 35)))


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert Image.open(io.BytesIO(data)).n_frames == 2

    image = load_rgb(data)

    assert is_reddish(image.getpixel((4, 4)))


def test_big_jpeg_downscaled_to_max_side():
    photo = Image.new("RGB", (4000, 3000), RED)

    image = load_rgb(encode(photo, "JPEG"), max_side=1024)

    assert image.size == (1024, 768)
    assert image.info[images.ORIGINAL_SIZE_KEY] == (4000, 3000)
    assert is_reddish(image.getpixel((500, 300)))


def test_big_grayscale_png_downscaled():
    scan = Image.new("L", (3000, 100), 200)

    image = load_rgb(encode(scan, "PNG"), max_side=1024)

    assert image.mode == "RGB"
    assert image.size == (1024, 34)
    assert image.getpixel((500, 17)) == (200, 200, 200)


def test_max_side_none_keeps_size():
    image = load_rgb(encode(Image.new("RGB", (1500, 10), RED), "PNG"), max_side=None)

    assert image.size == (1500, 10)


@pytest.mark.parametrize("size", [(1, 1), (10, 300), (300, 10)])
def test_tiny_images_load(size):
    image = load_rgb(encode(Image.new("RGB", size, RED), "PNG"))

    assert image.size == size
    assert images.is_tiny(image)


def test_normal_image_not_tiny():
    image = load_rgb(encode(Image.new("RGB", (64, 48), RED), "PNG"))

    assert not images.is_tiny(image)


# --- size limit -----------------------------------------------------------------------------


def test_over_pixel_limit_rejected_with_size(monkeypatch):
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 2_000_000)
    data = encode(Image.new("L", (2000, 1500)), "PNG")

    with pytest.raises(ImageError) as error:
        load_rgb(data, name="big.png")

    assert "big.png" in error.value.message
    assert "2000x1500 (3 MP)" in error.value.message
    assert "limit of 2 MP" in error.value.message
    assert error.value.reason == "too large: 2000x1500 (3 MP) over the limit of 2 MP"


def test_pillow_bomb_error_reports_size(monkeypatch):
    # Pillow raises DecompressionBombError above twice its own limit, before tlapp sees the size.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    data = encode(Image.new("L", (100, 50)), "PNG")

    with pytest.raises(ImageError) as error:
        load_rgb(data, name="bomb.png")

    assert "bomb.png is 100x50" in error.value.message
    assert error.value.reason.startswith("too large: 100x50")


def test_pillow_limit_left_enabled():
    assert Image.MAX_IMAGE_PIXELS is not None
    assert images.MAX_IMAGE_PIXELS >= 24_000_000


# --- broken files ---------------------------------------------------------------------------


def jpeg_bytes() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return encode(Image.fromarray(noise), "JPEG")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file (0 bytes)"),
        (b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head></html>", "not an image: looks like an HTML page"),
        (b"  <HTML><body>Access denied</body></HTML>", "not an image: looks like an HTML page"),
        (b"label,file\ncat,1.jpg\n", "not an image: looks like text"),
        ("caf\u00e9 notes\n".encode("utf-16"), "not an image: looks like text"),
        (bytes(range(7, 256)) * 4, "unsupported format"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), None),
    ],
)
def test_unreadable_content_reasons(data, reason):
    with pytest.raises(ImageError) as error:
        load_rgb(data, name="x.jpg")

    if reason is None:
        # A broken HEIC is corrupt when the plugin is installed, unsupported otherwise.
        expected = "truncated or corrupt image data" if images.HEIF_SUPPORTED else "unsupported format (HEIC): export as JPEG"
        assert error.value.reason == expected
    else:
        assert error.value.reason == reason


def test_truncated_jpeg_rejected():
    data = jpeg_bytes()

    with pytest.raises(ImageError) as error:
        load_rgb(data[: len(data) * 6 // 10])

    assert error.value.reason == "truncated or corrupt image data"


def test_truncated_png_rejected():
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")

    with pytest.raises(ImageError) as error:
        load_rgb(data[: len(data) // 2])

    assert error.value.reason == "truncated or corrupt image data"


def test_jpeg_header_then_garbage_rejected():
    data = jpeg_bytes()[:20] + np.random.default_rng(2).integers(0, 256, 2000, dtype=np.uint8).tobytes()

    with pytest.raises(ImageError) as error:
        load_rgb(data)

    assert error.value.reason == "truncated or corrupt image data"


def test_jpeg_missing_eoi_does_not_crash():
    data = jpeg_bytes()
    assert data.endswith(b"\xff\xd9")

    try:
        image = load_rgb(data[:-2])
    except ImageError as error:
        assert error.reason == "truncated or corrupt image data"
    else:
        assert image.size == (64, 64)


def test_missing_path_is_image_error(tmp_path):
    with pytest.raises(ImageError) as error:
        load_rgb(tmp_path / "nope.png")

    assert error.value.reason == "file not found"


def test_load_truncated_images_not_enabled():
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --- extensions -----------------------------------------------------------------------------


def test_image_extensions():
    for extension in (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".heif"):
        assert extension in images.IMAGE_EXTENSIONS
    assert ".txt" not in images.IMAGE_EXTENSIONS
    assert ".pdf" not in images.IMAGE_EXTENSIONS
    assert all(extension == extension.lower() for extension in images.IMAGE_EXTENSIONS)


def test_has_image_extension_any_case():
    assert images.has_image_extension(Path("IMG_1000.JPG"))
    assert images.has_image_extension("x.Jpeg")
    assert not images.has_image_extension("notes.TXT")
    assert not images.has_image_extension("README")


def test_looks_like_image(tmp_path):
    image_path = tmp_path / "photo_without_extension"
    image_path.write_bytes(encode(Image.new("RGB", (4, 4)), "PNG"))
    text_path = tmp_path / "notes.txt"
    text_path.write_text("hello")

    assert images.looks_like_image(image_path)
    assert not images.looks_like_image(text_path)
