"""The classification hard cases beside the repository, each with the outcome its README expects.

The data lives in ``shared/hardcases/`` next to the repository and is read-only; zips are
extracted into tmp_path. A missing data folder fails these tests instead of skipping them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import HARDCASES
from PIL import Image

from tlapp import images
from tlapp.datasets import DatasetError, load_collection
from tlapp.images import ImageError, load_rgb

CORRUPT = "truncated or corrupt image data"


def case_path(relative: str) -> Path:
    path = HARDCASES / relative
    assert path.exists(), f"missing test data {path}: place the shared/ folder beside the repository"
    return path


def load(relative: str, tmp_path: Path, **kwargs):
    return load_collection(case_path(relative), extract_dir=tmp_path / "extracted", **kwargs)


def reddish_share(image: Image.Image) -> float:
    pixels = np.asarray(image).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(((red > 150) & (green < 100) & (blue < 100)).mean())


def greenish_share(image: Image.Image) -> float:
    pixels = np.asarray(image).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(((green > 120) & (red < 100) & (blue < 120)).mean())


def test_shared_hardcases_present():
    assert HARDCASES.is_dir(), f"missing {HARDCASES}: place the shared/ folder beside the repository"


# --- datasets -------------------------------------------------------------------------------


def test_c01_control_no_warnings(tmp_path):
    collection = load("C01_control_3class/control_3class.zip", tmp_path)
    report = collection.report

    assert collection.classes == ["circle", "square", "triangle"]
    assert report.classes == {"circle": 20, "square": 20, "triangle": 20}
    assert report.warnings == []
    assert report.skipped == []
    assert report.ignored_system_files == 0
    assert len(collection.train) == 48
    assert len(collection.val) == 12


@pytest.mark.parametrize(
    ("zip_name", "per_class"),
    [
        ("H01_grayscale/dataset_with_grayscale.zip", 10),
        ("H02_rgba_4channel/dataset_with_rgba.zip", 9),
        ("H04_cmyk/dataset_with_cmyk.zip", 8),
        ("H05_palette_with_transparency/dataset_with_palette.zip", 9),
    ],
)
def test_colour_mode_datasets_fully_used(tmp_path, zip_name, per_class):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = load(zip_name, tmp_path).report

    assert report.classes == {"circle": per_class, "square": per_class}
    assert report.skipped == []
    assert [str(w.message) for w in caught] == []


def test_h08_corrupt_files_listed(tmp_path):
    report = load("H08_truncated_corrupt/dataset_with_corrupt_files.zip", tmp_path).report
    reasons = {item["file"]: item["reason"] for item in report.skipped}

    assert reasons["circle/truncated_60pct.jpg"] == CORRUPT
    assert reasons["circle/zero_bytes.jpg"] == "empty file (0 bytes)"
    assert reasons["square/truncated_50pct.png"] == CORRUPT
    assert reasons["square/not_an_image.png"] == "not an image: looks like text"
    assert reasons["square/corrupt_header.jpg"] == CORRUPT
    # A JPEG missing only its end marker may be used or skipped, but is never lost silently.
    eoi_skipped = "circle/missing_eoi_marker.jpg" in reasons
    assert report.classes == {"circle": 6 if eoi_skipped else 7, "square": 6}
    assert len(report.skipped) == (6 if eoi_skipped else 5)


def test_h09_html_file_named(tmp_path):
    report = load("H09_one_poison_file_reporting/dataset_one_html_saved_as_jpg.zip", tmp_path).report

    assert report.skipped == [
        {"file": "square/square_10_download.jpg", "reason": "not an image: looks like an HTML page"}
    ]
    assert report.classes == {"circle": 10, "square": 10, "triangle": 10}
    assert report.num_images == 30


@pytest.mark.parametrize(
    "zip_name",
    [
        "H10_ds_store/dataset_with_ds_store.zip",
        "H10_ds_store/dataset_with_ds_store_dir.zip",
        "H11_macosx_appledouble/dataset_finder_compressed.zip",
        "H12_windows_junk/dataset_with_thumbs_db.zip",
        "H13_ipynb_checkpoints/dataset_with_ipynb_checkpoints.zip",
    ],
)
def test_system_files_ignored_silently(tmp_path, zip_name):
    collection = load(zip_name, tmp_path)
    report = collection.report

    assert collection.classes == ["circle", "square"]
    assert report.num_images == 12
    assert report.skipped == []
    assert report.ignored_system_files >= 1
    assert not any("DS_Store" in w or "MACOSX" in w or "Thumbs" in w or "ipynb" in w for w in report.warnings)
    assert all(".ipynb_checkpoints" not in s.relpath for s in collection.train + collection.val)


def test_h14_uppercase_extensions(tmp_path):
    collection = load("H14_uppercase_ext_in_zip/iphone_style_uppercase.zip", tmp_path)

    assert collection.report.classes == {"circle": 5, "square": 5}
    extensions = {Path(s.relpath).suffix for s in collection.train + collection.val}
    assert {".JPG", ".JPEG", ".Jpg", ".PNG", ".jpeg"} <= extensions


def test_h16_all_formats_decoded(tmp_path):
    report = load("H16_other_formats/dataset_mixed_formats.zip", tmp_path).report

    # The .jfif and .jpe files of each class are byte-identical, so each pair counts once and
    # the copy is listed as a duplicate. Every other format is used.
    assert report.skipped == [
        {"file": "circle/circle_windows_download.jfif", "reason": "duplicate of circle/circle_ext_jpe.jpe"},
        {"file": "square/square_windows_download.jfif", "reason": "duplicate of square/square_ext_jpe.jpe"},
    ]
    assert report.classes == {"circle": 7, "square": 7}


def test_h17_heic(tmp_path):
    report = load("H17_heic/dataset_with_heic.zip", tmp_path).report

    if images.HEIF_SUPPORTED:
        assert report.classes == {"circle": 8, "square": 8}
        assert report.skipped == []
    else:
        assert report.classes == {"circle": 6, "square": 6}
        assert len(report.skipped) == 4
        assert all("HEIC" in item["reason"] for item in report.skipped)


def test_h21_tiny_images_kept(tmp_path):
    report = load("H21_tiny_and_extreme_aspect/dataset_tiny_images.zip", tmp_path).report

    assert report.classes == {"circle": 12, "square": 12}
    assert report.skipped == []
    assert any("smaller than 32 pixels" in w for w in report.warnings)


def test_h22_class_with_one_image_rejected(tmp_path):
    with pytest.raises(DatasetError) as error:
        load("H22_class_with_one_image/dataset_triangle_has_1_image.zip", tmp_path)

    assert "'triangle'" in error.value.message
    assert "has 1 image" in error.value.message
    assert "at least 2" in error.value.message
    assert error.value.report.classes == {"circle": 10, "square": 10, "triangle": 1}


def test_h22_class_with_two_images_warned(tmp_path):
    report = load("H22_class_with_one_image/dataset_triangle_has_2_images.zip", tmp_path).report

    assert report.classes == {"circle": 10, "square": 10, "triangle": 2}
    assert report.split_counts["train"]["triangle"] == 1
    assert report.split_counts["val"]["triangle"] == 1
    assert any("'triangle'" in w and "1 validation image" in w for w in report.warnings)


@pytest.mark.parametrize(
    ("zip_name", "warning"),
    [
        ("H23_empty_class_folder/dataset_empty_bird_folder.zip", "Folder 'bird' has no images and was ignored."),
        (
            "H23_empty_class_folder/dataset_folder_only_junk.zip",
            "Folder 'bird' has no usable images (1 file skipped) and was ignored.",
        ),
    ],
)
def test_h23_bird_folder_ignored(tmp_path, zip_name, warning):
    collection = load(zip_name, tmp_path)

    assert collection.classes == ["circle", "square"]
    assert collection.report.num_images == 12
    assert warning in collection.report.warnings


def test_h23_notes_file_listed(tmp_path):
    report = load("H23_empty_class_folder/dataset_folder_only_junk.zip", tmp_path).report

    assert report.skipped == [{"file": "bird/notes.txt", "reason": "not an image file (.txt)"}]
    assert report.ignored_system_files == 2


def test_h24_single_class_rejected(tmp_path):
    with pytest.raises(DatasetError) as error:
        load("H24_only_one_class/dataset_single_class.zip", tmp_path)

    assert error.value.message == "Classification needs at least 2 classes; found 1 (circle)."
    assert error.value.hint == "Add a folder per class, each with its images."


@pytest.mark.parametrize("zip_name", ["wrapped_in_top_folder.zip", "double_nested.zip", "wrapped_plus_macosx.zip"])
def test_h25_wrappers_unwrapped(tmp_path, zip_name):
    collection = load(f"H25_zip_wrapped_or_nested/{zip_name}", tmp_path)

    assert collection.classes == ["circle", "square", "triangle"]
    assert collection.report.classes == {"circle": 5, "square": 5, "triangle": 5}
    assert collection.report.skipped == []


def test_h25_presplit_uses_given_split(tmp_path):
    collection = load("H25_zip_wrapped_or_nested/presplit_train_val.zip", tmp_path)
    report = collection.report

    assert collection.classes == ["circle", "square", "triangle"]
    assert report.split == "given"
    assert report.classes == {"circle": 6, "square": 6, "triangle": 6}
    assert report.split_counts["train"] == {"circle": 4, "square": 4, "triangle": 4}
    assert report.split_counts["val"] == {"circle": 2, "square": 2, "triangle": 2}
    assert all(s.relpath.startswith("my_shapes/val/") for s in collection.val)


def test_h26_flat_zip_rejected(tmp_path):
    with pytest.raises(DatasetError) as error:
        load("H26_flat_zip_no_class_folders/flat_images_at_root.zip", tmp_path)

    assert error.value.message == "Found 12 images at the top level and 0 class folders."
    assert "named after the class" in error.value.hint


@pytest.mark.parametrize(
    ("zip_name", "classes", "train_size"),
    [
        ("dataset_17_images.zip", {"circle": 9, "square": 8}, 13),
        ("dataset_33_images.zip", {"circle": 17, "square": 16}, 27),
    ],
)
def test_h29_counts(tmp_path, zip_name, classes, train_size):
    collection = load(f"H29_last_batch_of_one/{zip_name}", tmp_path)

    assert collection.report.classes == classes
    assert len(collection.train) == train_size
    assert collection.report.skipped == []


def test_h31_imbalance_warned_and_stratified(tmp_path):
    report = load("H31_class_imbalance/dataset_150_15_3.zip", tmp_path).report

    assert report.classes == {"circle": 150, "square": 15, "triangle": 3}
    assert (
        "Classes are imbalanced (circle: 150 images, triangle: 3, ratio 50:1). "
        "Accuracy alone will be misleading; look at per-class recall."
    ) in report.warnings
    assert report.split_counts["val"] == {"circle": 30, "square": 3, "triangle": 1}
    assert report.split_counts["train"] == {"circle": 120, "square": 12, "triangle": 2}


# --- single files ---------------------------------------------------------------------------

# Files that load_rgb must reject, with the reason. Every other file in a files/ folder must load.
EXPECTED_FAILURES = {
    "H08_truncated_corrupt/files/truncated_60pct.jpg": CORRUPT,
    "H08_truncated_corrupt/files/zero_bytes.jpg": "empty file (0 bytes)",
    "H08_truncated_corrupt/files/truncated_50pct.png": CORRUPT,
    "H08_truncated_corrupt/files/not_an_image.png": "not an image: looks like text",
    "H08_truncated_corrupt/files/corrupt_header.jpg": CORRUPT,
    "H09_one_poison_file_reporting/files/square_10_download.jpg": "not an image: looks like an HTML page",
    "H20_huge_and_decompression_bomb/files/bomb_error_13500x13500.png": (
        "too large: 13500x13500 (182 MP) over the limit of 100 MP"
    ),
}
# Either outcome is correct for these files.
EITHER_OUTCOME = {"H08_truncated_corrupt/files/missing_eoi_marker.jpg"}
CLASSIFICATION_CASES = [
    "H01_grayscale",
    "H02_rgba_4channel",
    "H04_cmyk",
    "H05_palette_with_transparency",
    "H08_truncated_corrupt",
    "H09_one_poison_file_reporting",
    "H16_other_formats",
    "H17_heic",
    "H20_huge_and_decompression_bomb",
    "H21_tiny_and_extreme_aspect",
]


def case_files() -> list[str]:
    found = [
        path.relative_to(HARDCASES).as_posix()
        for case in CLASSIFICATION_CASES
        for path in sorted((HARDCASES / case / "files").glob("*"))
    ]
    # Without the data the list is empty; test_every_case_file_listed then fails.
    return found or ["missing shared data"]


def test_every_case_file_listed():
    files = case_files()

    for case in CLASSIFICATION_CASES:
        assert any(f.startswith(case + "/") for f in files), f"no files found for {case}"
    for relative in EXPECTED_FAILURES:
        assert relative in files


@pytest.mark.parametrize("relative", case_files())
def test_load_rgb_case_file(relative):
    path = case_path(relative)
    heic_unsupported = path.suffix.lower() == ".heic" and not images.HEIF_SUPPORTED
    avif_unsupported = path.suffix.lower() == ".avif" and not images.AVIF_SUPPORTED

    if relative in EITHER_OUTCOME:
        try:
            image = load_rgb(path)
        except ImageError as error:
            assert error.reason == CORRUPT
        else:
            assert image.mode == "RGB"
    elif relative in EXPECTED_FAILURES or heic_unsupported or avif_unsupported:
        with pytest.raises(ImageError) as error:
            load_rgb(path)
        assert error.value.file == path.name
        assert path.name in error.value.message
        if relative in EXPECTED_FAILURES:
            assert error.value.reason == EXPECTED_FAILURES[relative]
        else:
            assert error.value.reason.startswith("unsupported format")
    else:
        image = load_rgb(path)
        assert image.mode == "RGB"
        assert max(image.size) <= 1024
        assert min(image.size) >= 1


def test_h01_grayscale_files_gray():
    for path in sorted(case_path("H01_grayscale/files").glob("*")):
        pixels = np.asarray(load_rgb(path)).astype(int)

        assert pixels.shape[2] == 3
        assert (pixels[..., 0] == pixels[..., 1]).all(), path.name
        assert (pixels[..., 1] == pixels[..., 2]).all(), path.name


@pytest.mark.parametrize(
    "folder", ["H02_rgba_4channel", "H04_cmyk", "H05_palette_with_transparency", "H16_other_formats"]
)
def test_circles_red_squares_green(folder):
    for path in sorted(case_path(f"{folder}/files").glob("*")):
        if path.suffix.lower() == ".avif" and not images.AVIF_SUPPORTED:
            continue
        image = load_rgb(path)
        if path.name.startswith("circle"):
            assert reddish_share(image) > 0.03, path.name
            assert greenish_share(image) < 0.01, path.name
        else:
            assert greenish_share(image) > 0.03, path.name
            assert reddish_share(image) < 0.01, path.name


def test_h20_phone_photo_downscaled():
    image = load_rgb(case_path("H20_huge_and_decompression_bomb/files/circle_phone_24mp_6000x4000.jpg"))

    assert image.size == (1024, 683)
    assert image.info[images.ORIGINAL_SIZE_KEY] == (6000, 4000)


def test_h20_bomb_message_names_file_and_size():
    with pytest.raises(ImageError) as error:
        load_rgb(case_path("H20_huge_and_decompression_bomb/files/bomb_error_13500x13500.png"))

    assert error.value.message == (
        "bomb_error_13500x13500.png is 13500x13500 (182 MP), over tlapp's limit of 100 MP per image."
    )
    assert Image.MAX_IMAGE_PIXELS is not None


def test_h20_90mp_accepted_below_limit():
    # 90.25 MP is under tlapp's 100 MP limit, so it loads (downscaled) despite Pillow's warning limit.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_rgb(case_path("H20_huge_and_decompression_bomb/files/bomb_warning_9500x9500.png"))

    assert image.size == (1024, 1024)
    assert image.info[images.ORIGINAL_SIZE_KEY] == (9500, 9500)
    assert caught == []


def test_h21_tiny_files_keep_size():
    for path in sorted(case_path("H21_tiny_and_extreme_aspect/files").glob("*.png")):
        width, height = (int(n) for n in path.stem.split("_")[-1].split("x"))

        image = load_rgb(path)

        assert image.size == (width, height), path.name
