"""Tests of tlapp.datasets on folders and zips generated per test."""

from __future__ import annotations

import json
import shutil
import stat
import unicodedata
import zipfile
from pathlib import Path

import pytest
from conftest import write_image

from tlapp import datasets
from tlapp.datasets import DatasetError, extract_zip, inspect, load_collection


def zip_folder(folder: Path, zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return zip_path


def relpaths(samples) -> set[str]:
    return {sample.relpath for sample in samples}


# --- layouts --------------------------------------------------------------------------------


def test_given_split(make_image_folder):
    root = make_image_folder({"train/cat": 4, "train/dog": 3, "val/cat": 2, "val/dog": 2})

    collection = load_collection(root)
    report = collection.report

    assert collection.classes == ["cat", "dog"]
    assert report.split == "given"
    assert report.classes == {"cat": 6, "dog": 5}
    assert report.num_images == 11
    assert report.split_counts == {"train": {"cat": 4, "dog": 3}, "val": {"cat": 2, "dog": 2}}
    assert relpaths(collection.val) == {"val/cat/cat_0.png", "val/cat/cat_1.png", "val/dog/dog_0.png", "val/dog/dog_1.png"}
    assert collection.root == root.resolve()
    assert report.warnings == []
    for sample in collection.train + collection.val:
        assert sample.path.is_absolute()
        assert sample.path.is_file()
        assert collection.classes[sample.label] == sample.relpath.split("/")[1]


@pytest.mark.parametrize("val_name", ["valid", "Validation", "TEST"])
def test_given_split_folder_names(make_image_folder, val_name):
    root = make_image_folder({"Train/a": 2, "Train/b": 2, f"{val_name}/a": 1, f"{val_name}/b": 1})

    report = inspect(root)

    assert report.split == "given"
    assert report.split_counts["val"] == {"a": 1, "b": 1}


def test_given_split_prefers_val_over_test(make_image_folder):
    root = make_image_folder({"train/a": 5, "train/b": 5, "val/a": 2, "val/b": 2, "test/a": 3, "test/b": 3})

    report = inspect(root)

    assert report.split_counts["val"] == {"a": 2, "b": 2}
    assert report.num_images == 14
    assert any("'test' was ignored" in warning for warning in report.warnings)


def test_given_split_class_missing_from_val(make_image_folder):
    root = make_image_folder({"train/a": 5, "train/b": 5, "train/c": 5, "val/a": 2, "val/b": 2})

    report = inspect(root)

    assert report.classes == {"a": 7, "b": 7, "c": 5}
    assert report.split_counts["val"]["c"] == 0
    assert any("'c'" in warning and "no validation images" in warning for warning in report.warnings)


def test_given_split_class_only_in_val_rejected(make_image_folder):
    root = make_image_folder({"train/a": 5, "train/b": 5, "val/a": 2, "val/b": 2, "val/c": 2})

    with pytest.raises(DatasetError) as error:
        load_collection(root)

    assert "'c'" in error.value.message
    assert "none for training" in error.value.message
    assert error.value.report is not None


def test_random_split_stratified(make_image_folder):
    root = make_image_folder({"a": 20, "b": 10, "c": 3})

    collection = load_collection(root, val_fraction=0.2, seed=0)
    report = collection.report

    assert report.split == "random"
    assert report.split_counts["val"] == {"a": 4, "b": 2, "c": 1}
    assert report.split_counts["train"] == {"a": 16, "b": 8, "c": 2}
    assert relpaths(collection.train).isdisjoint(relpaths(collection.val))
    assert len(relpaths(collection.train) | relpaths(collection.val)) == 33


def test_random_split_every_class_in_both_splits(make_image_folder):
    root = make_image_folder({"a": 2, "b": 2, "c": 40})

    report = inspect(root, val_fraction=0.9)

    for label in ("a", "b", "c"):
        assert report.split_counts["train"][label] >= 1
        assert report.split_counts["val"][label] >= 1


def test_random_split_seeded(make_image_folder):
    root = make_image_folder({"a": 20, "b": 20})

    first = load_collection(root, seed=3)
    again = load_collection(root, seed=3)
    other = load_collection(root, seed=4)

    assert relpaths(first.val) == relpaths(again.val)
    assert [s.relpath for s in first.train] == [s.relpath for s in again.train]
    assert relpaths(first.val) != relpaths(other.val)


def test_invalid_val_fraction(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})

    with pytest.raises(DatasetError):
        load_collection(root, val_fraction=1.0)
    with pytest.raises(DatasetError):
        load_collection(root, val_fraction=0)


def test_class_labels_sorted(make_image_folder):
    root = make_image_folder({"zebra": 3, "Ant": 3, "mouse": 3})

    collection = load_collection(root)

    assert collection.classes == ["Ant", "mouse", "zebra"]
    assert list(collection.report.classes) == ["Ant", "mouse", "zebra"]


def test_nested_subfolders_belong_to_class(make_image_folder):
    root = make_image_folder({"a/2019": 2, "a/2020": 2, "b": 4})

    report = inspect(root)

    assert report.classes == {"a": 4, "b": 4}


# --- wrappers and zips ----------------------------------------------------------------------


def test_wrapper_folders_unwrapped(make_image_folder, tmp_path):
    root = tmp_path / "Downloads"
    make_image_folder({"my_shapes/circle": 3, "my_shapes/square": 3}, root=root)
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "README.txt").write_text("shapes")

    collection = load_collection(tmp_path)

    assert collection.classes == ["circle", "square"]
    assert collection.root == (root / "my_shapes").resolve()
    assert "Downloads/my_shapes/circle/circle_0.png" in relpaths(collection.train + collection.val)
    assert {"file": "Downloads/README.txt", "reason": "not an image file (.txt)"} in collection.report.skipped


def test_single_class_folder_not_unwrapped(make_image_folder):
    root = make_image_folder({"circle": 4})

    with pytest.raises(DatasetError) as error:
        load_collection(root)

    assert error.value.message == "Classification needs at least 2 classes; found 1 (circle)."
    assert error.value.hint == "Add a folder per class, each with its images."


def test_zip_source(make_image_folder, tmp_path):
    folder = make_image_folder({"shapes/a": 3, "shapes/b": 3})
    zip_path = zip_folder(folder, tmp_path / "upload.zip")
    dest = tmp_path / "extracted"

    collection = load_collection(zip_path, extract_dir=dest)

    assert collection.classes == ["a", "b"]
    assert collection.root == (dest / "shapes").resolve()
    for sample in collection.train + collection.val:
        assert sample.path.is_relative_to(dest.resolve())
        assert sample.relpath.startswith("shapes/")


def test_zip_without_extract_dir_uses_temp_folder(make_image_folder, tmp_path):
    zip_path = zip_folder(make_image_folder({"a": 2, "b": 2}), tmp_path / "upload.zip")

    collection = load_collection(zip_path)

    assert collection.root.name.startswith("tlapp-")
    assert all(sample.path.is_file() for sample in collection.train)


def test_zip_junk_not_extracted(make_image_folder, tmp_path):
    folder = make_image_folder({"a": 2, "b": 2})
    zip_path = zip_folder(folder, tmp_path / "upload.zip")
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("__MACOSX/a/._a_0.png", b"\x00\x05\x16\x07" + bytes(100))
        archive.writestr("a/._a_0.png", b"\x00\x05\x16\x07" + bytes(100))
        archive.writestr("b/Thumbs.db", b"\xd0\xcf\x11\xe0")
        archive.writestr(".DS_Store/", b"")

    dest = extract_zip(zip_path, tmp_path / "out")
    report = inspect(zip_path, extract_dir=tmp_path / "out2")

    assert dest == tmp_path / "out"
    assert not (dest / "__MACOSX").exists()
    assert not (dest / "a" / "._a_0.png").exists()
    assert not (dest / "b" / "Thumbs.db").exists()
    assert report.classes == {"a": 2, "b": 2}
    assert report.skipped == []
    assert report.ignored_system_files == 4


def test_zip_unsafe_entries_not_extracted(make_image_folder, tmp_path):
    zip_path = zip_folder(make_image_folder({"a": 2, "b": 2}), tmp_path / "upload.zip")
    with zipfile.ZipFile(zip_path, "a") as archive:
        archive.writestr("../escaped.png", b"x")
        archive.writestr("a/../../escaped2.png", b"x")
        archive.writestr("/absolute.png", b"x")
        link = zipfile.ZipInfo("a/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    dest = tmp_path / "deep" / "out"

    report = inspect(zip_path, extract_dir=dest)

    assert not (tmp_path / "deep" / "escaped.png").exists()
    assert not (tmp_path / "escaped2.png").exists()
    assert not Path("/absolute.png").exists()
    assert not (dest / "a" / "link.png").exists()
    reasons = {item["file"]: item["reason"] for item in report.skipped}
    assert reasons["../escaped.png"] == "unsafe path in zip (not extracted)"
    assert reasons["a/../../escaped2.png"] == "unsafe path in zip (not extracted)"
    assert reasons["/absolute.png"] == "unsafe path in zip (not extracted)"
    assert reasons["a/link.png"] == "symbolic link in zip (not extracted)"
    assert report.classes == {"a": 2, "b": 2}


def test_invalid_zip_rejected(tmp_path):
    bad = tmp_path / "holiday.zip"
    bad.write_bytes(b"PK\x03\x04 this is not really a zip")

    with pytest.raises(DatasetError) as error:
        load_collection(bad)

    assert error.value.message == "holiday.zip is not a valid zip file."
    assert error.value.hint


def test_missing_source_rejected(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_collection(tmp_path / "nowhere")

    assert "nowhere" in error.value.message
    assert "does not exist" in error.value.message


def test_plain_file_source_rejected(tmp_path):
    image = write_image(tmp_path / "one.png")

    with pytest.raises(DatasetError) as error:
        load_collection(image)

    assert "one.png is neither a folder nor a zip file" in error.value.message


# --- skipped and ignored files --------------------------------------------------------------


def test_system_files_ignored_and_counted(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "a" / "._a_0.png").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))
    (root / "a" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "b" / "desktop.ini").write_bytes("[.ShellClassInfo]".encode("utf-16"))
    (root / "b" / "~$notes.docx").write_bytes(b"lock")
    write_image(root / ".ipynb_checkpoints" / "x.png")
    checkpoints = root / "a" / ".ipynb_checkpoints"
    checkpoints.mkdir()
    shutil.copy(root / "a" / "a_0.png", checkpoints / "a_0-checkpoint.png")
    write_image(root / "__MACOSX" / "a" / "y.png")

    report = inspect(root)

    assert report.classes == {"a": 3, "b": 3}
    assert report.skipped == []
    assert report.ignored_system_files == 8
    assert not any("DS_Store" in warning or "MACOSX" in warning for warning in report.warnings)


def test_non_image_file_skipped_with_extension(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("todo")
    (root / "b" / "LICENSE").write_text("MIT")

    report = inspect(root)

    assert {"file": "a/notes.txt", "reason": "not an image file (.txt)"} in report.skipped
    assert {"file": "b/LICENSE", "reason": "not an image file (no extension)"} in report.skipped
    assert report.classes == {"a": 3, "b": 3}


def test_image_without_extension_used(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    (root / "a" / "photo_without_extension").write_bytes(write_image(root / "tmp.png").read_bytes())
    (root / "tmp.png").unlink()

    report = inspect(root)

    assert report.classes == {"a": 4, "b": 3}
    assert report.skipped == []


def test_broken_image_skipped_with_reason(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    (root / "a" / "page.JPG").write_text("<html><body>404 Not Found</body></html>")
    (root / "b" / "empty.png").write_bytes(b"")
    good = (root / "b" / "b_0.png").read_bytes()
    (root / "b" / "half.png").write_bytes(good[: len(good) // 2])

    report = inspect(root)

    assert report.classes == {"a": 3, "b": 3}
    assert {"file": "a/page.JPG", "reason": "not an image: looks like an HTML page"} in report.skipped
    assert {"file": "b/empty.png", "reason": "empty file (0 bytes)"} in report.skipped
    assert {"file": "b/half.png", "reason": "truncated or corrupt image data"} in report.skipped


def test_loose_images_beside_classes_skipped(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    write_image(root / "stray.png")

    report = inspect(root)

    assert {"file": "stray.png", "reason": "not in a class folder"} in report.skipped
    assert report.num_images == 6


# --- rejections -----------------------------------------------------------------------------


def test_flat_folder_rejected(tmp_path):
    for i in range(12):
        write_image(tmp_path / f"circle.{i}.jpg")

    with pytest.raises(DatasetError) as error:
        load_collection(tmp_path)

    assert error.value.message == "Found 12 images at the top level and 0 class folders."
    assert "one folder" in error.value.hint or "own folder" in error.value.hint
    assert "named after the class" in error.value.hint


def test_class_with_one_image_rejected(make_image_folder):
    root = make_image_folder({"circle": 5, "square": 5, "triangle": 1})

    with pytest.raises(DatasetError) as error:
        load_collection(root)

    assert error.value.message == (
        "Class 'triangle' has 1 image; each class needs at least 2 (one for training, one for validation)."
    )
    assert error.value.report.classes == {"circle": 5, "square": 5, "triangle": 1}


def test_two_classes_with_one_image_named(make_image_folder):
    root = make_image_folder({"a": 5, "b": 1, "c": 1})

    with pytest.raises(DatasetError) as error:
        load_collection(root)

    assert "'b'" in error.value.message
    assert "'c'" in error.value.message


def test_no_images_rejected(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("nothing here")
    (tmp_path / "b").mkdir()

    with pytest.raises(DatasetError) as error:
        load_collection(tmp_path)

    assert "No usable images found" in error.value.message
    assert error.value.report.skipped == [{"file": "a/notes.txt", "reason": "not an image file (.txt)"}]


def test_empty_folder_rejected(tmp_path):
    with pytest.raises(DatasetError) as error:
        load_collection(tmp_path)

    assert "No usable images found" in error.value.message


# --- warnings -------------------------------------------------------------------------------


def test_control_dataset_has_no_warnings(make_image_folder):
    report = inspect(make_image_folder({"a": 10, "b": 10, "c": 10}))

    assert report.warnings == []
    assert report.skipped == []


def test_few_images_warning(make_image_folder):
    report = inspect(make_image_folder({"a": 10, "b": 4}))

    assert any(w.startswith("Class 'b' has only 4 images") for w in report.warnings)
    assert not any("Class 'a' has only" in w for w in report.warnings)


def test_imbalance_warning(make_image_folder):
    report = inspect(make_image_folder({"circle": 150, "square": 15, "triangle": 3}))

    assert (
        "Classes are imbalanced (circle: 150 images, triangle: 3, ratio 50:1). "
        "Accuracy alone will be misleading; look at per-class recall."
    ) in report.warnings


def test_one_validation_image_warning(make_image_folder):
    report = inspect(make_image_folder({"a": 10, "b": 3}))

    assert report.split_counts["val"]["b"] == 1
    assert any("'b'" in w and "only 1 validation image" in w for w in report.warnings)
    assert not any("'a'" in w and "validation image" in w for w in report.warnings)


def test_duplicate_in_same_class_counted_once(make_image_folder):
    root = make_image_folder({"a": 5, "b": 5})
    shutil.copy(root / "a" / "a_0.png", root / "a" / "zz_copy.png")

    collection = load_collection(root)
    report = collection.report

    assert report.classes == {"a": 5, "b": 5}
    assert {"file": "a/zz_copy.png", "reason": "duplicate of a/a_0.png"} in report.skipped
    assert any("a/zz_copy.png" in w and "counted once" in w for w in report.warnings)
    assert "a/zz_copy.png" not in relpaths(collection.train + collection.val)


def test_duplicate_across_given_split_kept_in_train(make_image_folder):
    root = make_image_folder({"train/a": 4, "train/b": 4, "val/a": 2, "val/b": 2})
    shutil.copy(root / "train" / "a" / "a_0.png", root / "val" / "a" / "leak.png")

    collection = load_collection(root)

    assert {"file": "val/a/leak.png", "reason": "duplicate of train/a/a_0.png"} in collection.report.skipped
    assert "train/a/a_0.png" in relpaths(collection.train)


def test_same_image_in_two_classes_skipped(make_image_folder):
    root = make_image_folder({"cat": 5, "dog": 5})
    shutil.copy(root / "cat" / "cat_0.png", root / "dog" / "unsure.png")

    collection = load_collection(root)
    report = collection.report

    assert report.classes == {"cat": 4, "dog": 5}
    skipped = {item["file"]: item["reason"] for item in report.skipped}
    assert skipped["cat/cat_0.png"] == "same image as dog/unsure.png in class 'dog'"
    assert skipped["dog/unsure.png"] == "same image as cat/cat_0.png in class 'cat'"
    conflict = [w for w in report.warnings if "more than one class" in w]
    assert len(conflict) == 1
    assert "cat/cat_0.png (cat)" in conflict[0]
    assert "dog/unsure.png (dog)" in conflict[0]


def test_labels_differing_in_case_or_spaces_warned(make_image_folder):
    report = inspect(make_image_folder({"Cat": 5, "cat ": 5, "dog": 5}))

    assert report.classes == {"Cat": 5, "cat ": 5, "dog": 5}
    assert any("'Cat' and 'cat '" in w and "separate classes" in w for w in report.warnings)


def test_labels_differing_in_unicode_form_merged(make_image_folder):
    composed = unicodedata.normalize("NFC", "café")
    decomposed = unicodedata.normalize("NFD", "café")
    root = make_image_folder({composed: 3, decomposed: 3, "tea": 6})
    assert len(list(root.iterdir())) == 3

    report = inspect(root)

    assert report.classes == {composed: 6, "tea": 6}
    assert any("Unicode" in w and "merged" in w for w in report.warnings)


def test_empty_class_folder_warned(make_image_folder):
    root = make_image_folder({"circle": 5, "square": 5})
    (root / "bird").mkdir()

    report = inspect(root)

    assert report.classes == {"circle": 5, "square": 5}
    assert "Folder 'bird' has no images and was ignored." in report.warnings


def test_folder_of_broken_files_warned(make_image_folder):
    root = make_image_folder({"circle": 5, "square": 5})
    (root / "bird").mkdir()
    (root / "bird" / "a.jpg").write_bytes(b"")

    report = inspect(root)

    assert "Folder 'bird' has no usable images (1 file skipped) and was ignored." in report.warnings


def test_tiny_images_warned(make_image_folder):
    root = make_image_folder({"a": 5, "b": 5})
    write_image(root / "a" / "dot.png", size=(1, 1))

    report = inspect(root)

    assert any("a/dot.png" in w and "smaller than 32 pixels" in w for w in report.warnings)


# --- report ---------------------------------------------------------------------------------


def test_report_to_dict_is_json(make_image_folder):
    root = make_image_folder({"a": 3, "b": 3})
    (root / "a" / "notes.txt").write_text("x")

    report_dict = inspect(root).to_dict()
    decoded = json.loads(json.dumps(report_dict))

    assert decoded["classes"] == {"a": 3, "b": 3}
    assert decoded["num_images"] == 6
    assert decoded["skipped"] == [{"file": "a/notes.txt", "reason": "not an image file (.txt)"}]
    assert isinstance(decoded["warnings"], list)
    assert decoded["split"] == "random"
    assert decoded["ignored_system_files"] == 0


def test_is_system_file():
    for name in (".DS_Store", "._IMG_1.jpg", "__MACOSX", "Thumbs.db", "thumbs.db", "desktop.ini", "~$report.docx", ".ipynb_checkpoints"):
        assert datasets.is_system_file(name), name
    for name in ("cat", "IMG_1.jpg", "notes.txt", "_private"):
        assert not datasets.is_system_file(name), name
