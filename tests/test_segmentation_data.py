"""Pairing images with masks, and reading every common mask convention as class-index targets."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.filters import threshold_otsu

from tlapp.errors import TlappError
from tlapp.images import load_rgb
from tlapp.segmentation.dataset import load_segmentation_data
from tlapp.segmentation.masks import IGNORE_INDEX, MAX_COLOURS, VOC_COLOURS, read_raw_mask, scan_masks
from tlapp.segmentation.pairs import find_pairs, pair_key

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HARDCASES = SHARED / "hardcases"

SIZE = (40, 32)  # width, height of generated images


def shape_target(seed: int, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Return a 0/1 array with one filled rectangle whose place depends on ``seed``."""
    width, height = size
    target = np.zeros((height, width), np.uint8)
    top, left = 4 + seed % 7, 5 + (3 * seed) % 11
    target[top : top + 14, left : left + 16] = 1
    return target


def write_pair(root: Path, image_name: str, mask_name: str | None, target: np.ndarray, mask: Image.Image | None = None) -> None:
    """Write an image whose bright rectangle is the target, and its mask (0/255 unless given)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    pixels = np.full((*target.shape, 3), 40, np.uint8)
    pixels[target == 1] = (230, 200, 60)
    Image.fromarray(pixels).save(root / "images" / image_name)
    if mask_name is not None:
        (mask if mask is not None else Image.fromarray(target * 255)).save(root / "masks" / mask_name)


def targets_of(root: Path, **options) -> dict[str, np.ndarray]:
    data = load_segmentation_data(root, **options)
    return {pair.key: data.convention.read_target(pair.mask, pair.mask_relpath) for pair in data.pairs}


# --- pairing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, key",
    [
        ("img_001.jpg", "img_001"),
        ("img_001_mask.png", "img_001"),
        ("img_001-mask.png", "img_001"),
        ("img_003.png.png", "img_003"),
        ("IMG_007.JPG", "img_007"),
        ("img_008_label.PNG", "img_008"),
        ("img_009_labels.png", "img_009"),
        ("img_010_seg.png", "img_010"),
        ("img_011_gt.tif", "img_011"),
        ("scan.v2.png", "scan.v2"),
        ("_mask.png", "_mask"),
    ],
)
def test_pair_key_normalises_names(name, key):
    assert pair_key(name) == key


def test_pairs_by_name_not_position(tmp_path):
    # A missing mask in the middle must not shift later masks onto the wrong images.
    for index in range(5):
        name = f"s{index}"
        write_pair(tmp_path, f"{name}.jpg", None if index == 1 else f"{name}_mask.png", shape_target(index))
    scan = find_pairs(tmp_path)

    assert sorted(pair.key for pair in scan.pairs) == ["s0", "s2", "s3", "s4"]
    for pair in scan.pairs:
        assert pair_key(pair.mask.name) == pair_key(pair.image.name)
    assert scan.problems == [{"file": "images/s1.jpg", "reason": "no mask (no file with the same name in the mask folder)"}]


def test_pairing_reports_each_problem_by_name(tmp_path):
    write_pair(tmp_path, "a.jpg", "a.png", shape_target(0))
    write_pair(tmp_path, "b.jpg", "b.png", shape_target(1))
    Image.fromarray(shape_target(1) * 255).save(tmp_path / "masks" / "b_mask.png")  # second mask for b
    write_pair(tmp_path, "c.jpg", None, shape_target(2))
    Image.fromarray(shape_target(3) * 255).save(tmp_path / "masks" / "orphan.png")
    write_pair(tmp_path, "d.jpg", "d.png", shape_target(4))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "masks" / "d.png")  # wrong size

    scan = find_pairs(tmp_path)
    problems = {problem["file"]: problem["reason"] for problem in scan.problems}

    assert [pair.key for pair in scan.pairs] == ["a"]
    assert problems["images/b.jpg"].startswith("ambiguous: 2 masks")
    assert "masks/b.png" in problems["images/b.jpg"]
    assert "masks/b_mask.png" in problems["images/b.jpg"]
    assert problems["images/c.jpg"].startswith("no mask")
    assert problems["masks/orphan.png"].startswith("no image")
    assert problems["images/d.jpg"] == "size mismatch: image is 40x32, mask masks/d.png is 10x10"


def test_size_check_applies_exif_orientation(tmp_path):
    target = shape_target(0)
    write_pair(tmp_path, "upright.jpg", "upright.png", target)
    # Stored 32x40 with orientation 6 (rotate 90): upright it is 40x32, the size of its mask.
    rotated = Image.open(tmp_path / "images" / "upright.jpg").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated.save(tmp_path / "images" / "rotated.jpg", exif=exif)
    Image.fromarray(target * 255).save(tmp_path / "masks" / "rotated.png")

    scan = find_pairs(tmp_path)

    assert sorted(pair.key for pair in scan.pairs) == ["rotated", "upright"]
    assert scan.problems == []


def test_nested_class_folders_and_label_folder_names(tmp_path):
    for index, breed in enumerate(["Beagle", "Pug", "Beagle"]):
        write_pair(tmp_path, f"{breed}_{index}.jpg", f"{breed}_{index}.png", shape_target(index))
        (tmp_path / "images" / breed).mkdir(exist_ok=True)
        (tmp_path / "images" / f"{breed}_{index}.jpg").rename(tmp_path / "images" / breed / f"{breed}_{index}.jpg")
    (tmp_path / "masks").rename(tmp_path / "label")
    (tmp_path / "test").mkdir()
    write_pair(tmp_path / "test", "unlabelled.jpg", None, shape_target(5))

    scan = find_pairs(tmp_path)

    assert scan.layout == "images/ + label/"
    assert sorted(pair.image_relpath for pair in scan.pairs) == [
        "images/Beagle/Beagle_0.jpg", "images/Beagle/Beagle_2.jpg", "images/Pug/Pug_1.jpg"
    ]
    assert scan.problems == []


def test_system_files_are_ignored(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index))
    (tmp_path / "images" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "masks" / "._s0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(100))
    (tmp_path / "masks" / "Thumbs.db").write_bytes(bytes(64))
    (tmp_path / "masks" / "desktop.ini").write_text("[.ShellClassInfo]")
    (tmp_path / "__MACOSX" / "images").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "images" / "._s1.jpg").write_bytes(bytes(64))

    scan = find_pairs(tmp_path)

    assert len(scan.pairs) == 3
    assert scan.problems == []
    assert scan.ignored_system_files == 4


def test_csv_of_pairs(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}.jpg", f"other_{index}.png", shape_target(index))
    with open(tmp_path / "pairs.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Image", "Mask"])
        for index in range(3):
            writer.writerow([f"images/s{index}.jpg", f"masks/other_{index}.png"])
        writer.writerow(["images/missing.jpg", "masks/missing.png"])

    scan = find_pairs(tmp_path / "pairs.csv")

    assert sorted(pair.mask_relpath for pair in scan.pairs) == ["masks/other_0.png", "masks/other_1.png", "masks/other_2.png"]
    assert [problem["file"] for problem in scan.problems] == ["images/missing.jpg"]
    assert "not found" in scan.problems[0]["reason"]


def test_folder_without_layout_is_rejected(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(TlappError, match="No image and mask folders"):
        find_pairs(tmp_path)


def test_too_few_pairs_names_the_problems(tmp_path):
    write_pair(tmp_path, "a.jpg", "a.png", shape_target(0))
    write_pair(tmp_path, "b.jpg", None, shape_target(1))
    with pytest.raises(TlappError, match="1 usable image/mask pairs") as error:
        load_segmentation_data(tmp_path)
    assert "images/b.jpg" in str(error.value)


# --- mask conventions on generated masks -----------------------------------------------------


def binary_mask_variants(target: np.ndarray, index: int) -> dict[str, Image.Image]:
    rgba_alpha_only = np.zeros((*target.shape, 4), np.uint8)
    rgba_alpha_only[..., 3] = target * 255
    return {
        "0_255": Image.fromarray(target * 255),
        "0_1": Image.fromarray(target),
        "mixed": Image.fromarray(target * (255 if index % 2 else 1)),
        "mode_1": Image.fromarray(target * 255).convert("1"),
        "rgb_white": Image.fromarray(np.stack([target * 255] * 3, -1)),
        "rgba_all_bands": Image.fromarray(np.stack([target * 255] * 4, -1)),
        "rgba_alpha_only": Image.fromarray(rgba_alpha_only),
        "la": Image.fromarray(np.stack([target * 255, np.full_like(target, 255)], -1), "LA"),
    }


def test_binary_conventions_give_identical_targets(tmp_path):
    expected = {f"s{index}": shape_target(index) for index in range(4)}
    for variant in binary_mask_variants(expected["s0"], 0):
        root = tmp_path / variant
        for index in range(4):
            mask = binary_mask_variants(expected[f"s{index}"], index)[variant]
            write_pair(root, f"s{index}.jpg", f"s{index}.png", expected[f"s{index}"], mask)
        data = load_segmentation_data(root)
        assert data.convention.kind == "binary", variant
        assert data.classes == ["background", "object"], variant
        assert data.report.warnings == [], variant
        for key, target in targets_of(root).items():
            np.testing.assert_array_equal(target, expected[key], err_msg=variant)


def test_jpeg_masks_are_thresholded_with_a_warning(tmp_path):
    big = (96, 80)
    for index in range(3):
        target = shape_target(index, big)
        target[20:60, 30:80] = 1
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.jpg", target, Image.fromarray(target * 255))
    raw = read_raw_mask(tmp_path / "masks" / "s0.jpg")
    assert len(np.unique(raw.values)) > 2  # compression noise is really there

    data = load_segmentation_data(tmp_path)

    assert data.convention.kind == "binary"
    assert any("JPEG" in warning and "thresholded at 128" in warning for warning in data.report.warnings)
    for pair in data.pairs:
        target = data.convention.read_target(pair.mask)
        assert set(np.unique(target)) == {0, 1}


@pytest.mark.parametrize("border, expected_border", [("object", 1), ("ignore", IGNORE_INDEX)])
def test_trimaps(tmp_path, border, expected_border):
    for index in range(3):
        target = shape_target(index)
        trimap = np.where(target == 1, 1, 2).astype(np.uint8)
        trimap[target.shape[0] - 2 :, :] = 3  # a border band
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", target, Image.fromarray(trimap))

    data = load_segmentation_data(tmp_path, trimap_border=border)
    target = data.convention.read_target(tmp_path / "masks" / "s0.png")

    assert data.convention.kind == "trimap"
    assert data.report.trimap_border == border
    assert border in data.report.convention
    np.testing.assert_array_equal(target[:-2], shape_target(0)[:-2])
    assert set(np.unique(target[-2:])) == {expected_border}


def palette_mask(indices: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices, "P")
    image.putpalette([channel for colour in VOC_COLOURS for channel in colour])
    return image


def three_class_indices(index: int) -> np.ndarray:
    indices = shape_target(index).copy()
    indices[24:30, 2:10] = 2
    indices[3, :] = IGNORE_INDEX
    return indices


def test_palette_masks_use_indices_and_ignore_255(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index), palette_mask(three_class_indices(index)))

    data = load_segmentation_data(tmp_path)

    assert data.convention.kind == "index"
    assert data.classes == ["background", "class 1", "class 2"]
    assert data.convention.class_colours[1] == VOC_COLOURS[1]
    for index in range(3):
        target = data.convention.read_target(tmp_path / "masks" / f"s{index}.png")
        np.testing.assert_array_equal(target, three_class_indices(index))


def colour_mask(indices: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> Image.Image:
    rgb = np.zeros((*indices.shape, 3), np.uint8)
    for value, colour in colours.items():
        rgb[indices == value] = colour
    return Image.fromarray(rgb)


def test_colour_masks_map_colours_consistently(tmp_path):
    colours = {0: (0, 0, 0), 1: (0, 0, 255), 2: (255, 128, 0)}
    for index in range(4):
        indices = three_class_indices(index)
        indices[indices == IGNORE_INDEX] = 0
        if index == 0:
            indices[indices == 2] = 0  # the first file lacks one colour: ids must not depend on file order
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index), colour_mask(indices, colours))

    data = load_segmentation_data(tmp_path)
    by_colour = dict(zip(map(tuple, data.report.mask_colours), range(3)))

    assert data.convention.kind == "colour"
    assert len(data.classes) == 3
    assert by_colour[(0, 0, 0)] == 0
    for index in range(4):
        target = data.convention.read_target(tmp_path / "masks" / f"s{index}.png")
        rgb = np.asarray(Image.open(tmp_path / "masks" / f"s{index}.png"))
        for colour, class_id in by_colour.items():
            assert (target[(rgb == colour).all(-1)] == class_id).all()


def test_too_many_colours_are_rejected(tmp_path):
    rng = np.random.default_rng(0)
    for index in range(2):
        indices = rng.integers(0, MAX_COLOURS + 5, SIZE[::-1]).astype(np.uint8)
        colours = {value: (value * 9, 255 - value * 9, value * 3) for value in range(MAX_COLOURS + 5)}
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index), colour_mask(indices, colours))

    with pytest.raises(TlappError, match=f"{MAX_COLOURS + 5} different colours"):
        load_segmentation_data(tmp_path)


def test_grey_level_and_index_masks(tmp_path):
    for index in range(3):
        indices = three_class_indices(index)
        indices[indices == IGNORE_INDEX] = 0
        write_pair(tmp_path / "grey", f"s{index}.jpg", f"s{index}.png", shape_target(index), Image.fromarray(indices * 127))
        sixteen_bit = Image.fromarray(indices.astype(np.uint16))
        write_pair(tmp_path / "index16", f"s{index}.jpg", f"s{index}.png", shape_target(index), sixteen_bit)

    for variant, kind in (("grey", "grey levels"), ("index16", "index")):
        data = load_segmentation_data(tmp_path / variant)
        assert data.convention.kind == kind, variant
        assert len(data.classes) == 3, variant
        target = data.convention.read_target(tmp_path / variant / "masks" / "s1.png")
        expected = three_class_indices(1)
        expected[expected == IGNORE_INDEX] = 0
        np.testing.assert_array_equal(target, expected, err_msg=variant)


def test_smoothed_binary_edges_are_thresholded(tmp_path):
    for index in range(3):
        target = shape_target(index, (80, 64))
        smooth = Image.fromarray(target * 255).resize((160, 128), Image.Resampling.BILINEAR).resize((80, 64), Image.Resampling.BICUBIC)
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", target, smooth)

    data = load_segmentation_data(tmp_path)

    assert data.convention.kind == "binary"
    assert data.convention.soft_edges
    assert any("smoothed edges" in warning for warning in data.report.warnings)


def test_empty_masks_are_rejected(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", np.zeros(SIZE[::-1], np.uint8))
    with pytest.raises(TlappError, match="only background"):
        load_segmentation_data(tmp_path)


def test_unreadable_mask_is_reported(tmp_path):
    for index in range(4):
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index))
    (tmp_path / "masks" / "s1.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    # A valid header with the pixel data cut off fails only when decoded.
    Image.fromarray(np.random.default_rng(0).integers(0, 2, SIZE[::-1], dtype=np.uint8) * 255).save(tmp_path / "masks" / "s2.png")
    whole = (tmp_path / "masks" / "s2.png").read_bytes()
    (tmp_path / "masks" / "s2.png").write_bytes(whole[: len(whole) // 2])

    data = load_segmentation_data(tmp_path)
    problems = {problem["file"]: problem["reason"] for problem in data.report.problems}

    assert data.report.num_pairs == 2
    assert sorted(problems) == ["masks/s1.png", "masks/s2.png"]
    assert problems["masks/s1.png"].startswith("unreadable mask")
    assert problems["masks/s2.png"] == "unreadable mask: not a readable image file"


def test_split_is_reproducible_and_disjoint(tmp_path):
    for index in range(10):
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", shape_target(index))
    first = load_segmentation_data(tmp_path, val_fraction=0.3, seed=4)
    second = load_segmentation_data(tmp_path, val_fraction=0.3, seed=4)

    assert [pair.key for pair in first.val] == [pair.key for pair in second.val]
    assert len(first.val) == 3
    assert len(first.train) == 7
    assert not {pair.key for pair in first.val} & {pair.key for pair in first.train}
    assert first.report.split_counts == {"train": 7, "val": 3}


# --- the shared hard cases -------------------------------------------------------------------


def test_control_segmentation_zip():
    data = load_segmentation_data(HARDCASES / "C02_control_seg" / "control_seg.zip")
    assert data.report.num_pairs == 20
    assert data.classes == ["background", "object"]
    assert data.report.warnings == []
    assert data.report.problems == []


@pytest.mark.parametrize(
    "archive",
    ["H11_macosx_appledouble/seg_finder_compressed.zip", "H12_windows_junk/seg_with_thumbs_db.zip"],
)
def test_system_files_in_zips_are_ignored(archive):
    data = load_segmentation_data(HARDCASES / archive)
    assert data.report.num_pairs == 6
    assert data.report.problems == []
    assert data.report.warnings == []
    assert data.report.ignored_system_files >= 1


def test_jpeg_masks_hardcase_matches_the_shapes():
    data = load_segmentation_data(HARDCASES / "H32_masks_saved_as_jpeg" / "seg_masks_jpeg.zip")

    assert data.report.num_pairs == 10
    assert data.classes == ["background", "object"]
    assert any("JPEG" in warning for warning in data.report.warnings)
    for pair in data.pairs:
        target = data.convention.read_target(pair.mask)
        grey = np.asarray(load_rgb(pair.image).convert("L"))
        shape = grey > threshold_otsu(grey)  # the light shape on a darker background
        agreement = (target == shape).mean()
        assert agreement > 0.98, pair.key
        assert abs(int(target.sum()) - int(shape.sum())) < 0.05 * shape.sum() + 40, pair.key


def test_mask_value_conventions_hardcase():
    folder = HARDCASES / "H33_mask_value_conventions"
    reference = None
    for archive in sorted(folder.glob("*.zip")):
        data = load_segmentation_data(archive)
        targets = {pair.key: data.convention.read_target(pair.mask) for pair in data.pairs}
        assert len(targets) == 8, archive.name
        assert data.classes == ["background", "object"], archive.name
        for key, target in targets.items():
            assert set(np.unique(target)) == {0, 1}, (archive.name, key)
        if reference is None:
            reference = targets
        for key, target in targets.items():
            np.testing.assert_array_equal(target, reference[key], err_msg=f"{archive.name} {key}")


def test_palette_and_colour_masks_hardcase():
    folder = HARDCASES / "H34_palette_and_color_masks"
    palette = load_segmentation_data(folder / "masks_palette_voc_style.zip")
    colour = load_segmentation_data(folder / "masks_rgb_color_coded.zip")

    assert palette.convention.kind == "index"
    assert colour.convention.kind == "colour"
    assert len(palette.classes) == 3
    assert len(colour.classes) == 3
    for palette_pair, colour_pair in zip(palette.pairs, colour.pairs):
        indices = palette.convention.read_target(palette_pair.mask)
        colours = colour.convention.read_target(colour_pair.mask)
        assert set(np.unique(indices)) == {0, 1, 2, IGNORE_INDEX}
        assert set(np.unique(colours)) == {0, 1, 2}
        scored = indices != IGNORE_INDEX
        # The red circle is index 1 in the palette masks; red comes first among the colours too.
        np.testing.assert_array_equal(colours[scored], indices[scored])


def test_name_mismatch_hardcase():
    data = load_segmentation_data(HARDCASES / "H36_mask_name_mismatch" / "seg_name_mismatch.zip")
    problems = {problem["file"]: problem["reason"] for problem in data.report.problems}

    assert sorted(pair.key for pair in data.pairs) == ["img_001", "img_002", "img_003", "img_004", "img_007", "img_008"]
    for pair in data.pairs:
        assert pair_key(pair.mask.name) == pair_key(pair.image.name)
    assert problems["images/img_005.jpg"].startswith("ambiguous: 2 masks")
    assert problems["images/img_006.jpg"].startswith("no mask")
    assert problems["masks/img_099.png"].startswith("no image")
    assert len(problems) == 3


def test_membrane_is_two_classes():
    data = load_segmentation_data(SHARED / "datasets" / "membrane")
    assert data.report.num_pairs == 30
    assert data.report.layout == "image/ + label/"
    assert data.classes == ["background", "object"]
    target = data.convention.read_target(data.pairs[0].mask)
    raw = np.asarray(Image.open(data.pairs[0].mask))
    np.testing.assert_array_equal(target, (raw == 255).astype(np.uint8))


def test_zip_with_wrapper_folder(tmp_path):
    source = tmp_path / "source"
    for index in range(3):
        write_pair(source, f"s{index}.jpg", f"s{index}_mask.png", shape_target(index))
    archive = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(source.rglob("*.*")):
            handle.write(path, "my data/" + path.relative_to(source).as_posix())

    data = load_segmentation_data(archive, extract_dir=tmp_path / "extracted")

    assert data.report.num_pairs == 3
    assert data.report.problems == []


def ring_target(index: int, size: tuple[int, int] = (96, 80)) -> np.ndarray:
    """Return the 2-pixel outline of a filled rectangle: what a mask drawn with a pen looks like."""
    filled = np.zeros(size[::-1], np.uint8)
    filled[10 + index : 60 + index, 12:80] = 1
    inner = np.zeros_like(filled)
    inner[12 + index : 58 + index, 14:78] = 1
    return filled - inner


@pytest.mark.parametrize("drop", [False, True])
def test_outline_masks_are_reported(tmp_path, drop):
    for index in range(6):
        target = ring_target(index) if index < 2 else shape_target(index, (96, 80))
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", target)

    data = load_segmentation_data(tmp_path, drop_outline_masks=drop)

    assert data.report.outline_masks == ["masks/s0.png", "masks/s1.png"]
    if drop:
        assert data.report.num_pairs == 4
        assert {problem["file"] for problem in data.report.problems} == {"masks/s0.png", "masks/s1.png"}
    else:
        assert data.report.num_pairs == 6
        assert any("2 masks look like outlines" in warning for warning in data.report.warnings)


def test_thin_objects_in_most_masks_are_not_outlines(tmp_path):
    # When most masks are thin, thin is what the objects are (cracks, vessels), not a drawing mistake.
    for index in range(4):
        target = ring_target(index) if index < 3 else shape_target(index, (96, 80))
        write_pair(tmp_path, f"s{index}.jpg", f"s{index}.png", target)

    data = load_segmentation_data(tmp_path)

    assert data.report.outline_masks == []
    assert data.report.warnings == []
