"""Workspace storage: zip uploads, classes built photo by photo, the library, selection and runs."""

from __future__ import annotations

import io
import zipfile

import pytest
from conftest import HARDCASES, write_image

from tlapp.datasets import DatasetError, load_collection
from tlapp.errors import TlappError
from tlapp.workspace import LIBRARY, WORKSPACE, DatasetChoice, Workspace, dataset_fingerprint, safe_name

C01_ZIP = HARDCASES / "C01_control_3class" / "control_3class.zip"


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.setenv("TLAPP_WORKSPACE", str(tmp_path / "root"))
    monkeypatch.delenv("TLAPP_DATASETS", raising=False)
    return Workspace("test-ws")


def png_bytes(tmp_path, name="x.png") -> bytes:
    return write_image(tmp_path / "source" / name).read_bytes()


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_workspace_lives_under_env_root(ws, tmp_path):
    assert ws.path == tmp_path / "root" / "test-ws"
    assert ws.datasets_dir.is_dir()
    assert ws.runs_dir.is_dir()


@pytest.mark.parametrize("bad_id", ["", "../x", "a/b", "ab", "x" * 65, "sp ace"])
def test_invalid_workspace_id_rejected(bad_id, tmp_path):
    with pytest.raises(TlappError):
        Workspace(bad_id, root=tmp_path)


def test_zip_upload_extracts_loadable_dataset(ws):
    with open(C01_ZIP, "rb") as upload:
        name = ws.save_zip("control_3class.zip", upload)

    assert name == "control_3class"
    assert ws.list_datasets() == ["control_3class"]
    collection = load_collection(ws.dataset_dir(name))
    assert collection.classes == ["circle", "square", "triangle"]
    assert collection.report.num_images == 60
    assert list(ws.uploads_dir.iterdir()) == []


def test_second_upload_with_same_name_keeps_first(ws):
    data = C01_ZIP.read_bytes()
    first = ws.save_zip("shapes.zip", data)
    second = ws.save_zip("shapes.zip", data)
    assert (first, second) == ("shapes", "shapes-2")
    assert ws.list_datasets() == ["shapes", "shapes-2"]


def test_invalid_zip_leaves_workspace_unchanged(ws):
    ws.save_zip("good.zip", C01_ZIP.read_bytes())
    with pytest.raises(DatasetError, match="not a valid zip"):
        ws.save_zip("broken.zip", b"<html>not a zip</html>")
    assert ws.list_datasets() == ["good"]
    assert list(ws.uploads_dir.iterdir()) == []


def test_zip_path_traversal_stays_inside(ws, tmp_path):
    data = zip_bytes({"../../escape.jpg": b"x", "cats/a.png": png_bytes(tmp_path)})
    name = ws.save_zip("evil.zip", data)
    assert not (ws.path / "escape.jpg").exists()
    assert not (ws.path.parent / "escape.jpg").exists()
    assert (ws.dataset_dir(name) / "cats" / "a.png").is_file()


def test_build_classes_and_add_images(ws, tmp_path):
    assert ws.create_class("my photos", "cats") == "cats"
    first = ws.add_images("my photos", "cats", [("a.png", png_bytes(tmp_path, "a.png")), ("b.png", png_bytes(tmp_path, "b.png"))])
    ws.add_images("my photos", "dogs", [(f"d{i}.png", png_bytes(tmp_path, f"d{i}.png")) for i in range(2)])

    assert first.saved == ["a.png", "b.png"]
    assert ws.list_classes("my photos") == {"cats": 2, "dogs": 2}
    collection = load_collection(ws.dataset_dir("my photos"))
    assert collection.classes == ["cats", "dogs"]


def test_add_images_keeps_duplicates_out_and_renames_clashes(ws, tmp_path):
    original = png_bytes(tmp_path, "a.png")
    other = png_bytes(tmp_path, "b.png")
    ws.add_images("d", "cats", [("a.png", original)])
    result = ws.add_images("d", "cats", [("a.png", original), ("a.png", other)])
    assert result.duplicates == ["a.png"]
    assert result.saved == ["a-2.png"]
    assert ws.list_classes("d") == {"cats": 2}


def test_add_images_rejects_non_images(ws, tmp_path):
    result = ws.add_images("d", "cats", [("notes.txt", b"hello"), ("ok.png", png_bytes(tmp_path))])
    assert result.saved == ["ok.png"]
    assert [entry["file"] for entry in result.rejected] == ["notes.txt"]
    assert not (ws.dataset_dir("d") / "cats" / "notes.txt").exists()


def test_add_images_rejects_undecodable_files(ws, tmp_path):
    broken = HARDCASES / "H08_truncated_corrupt" / "files"
    html = HARDCASES / "H09_one_poison_file_reporting" / "files" / "square_10_download.jpg"
    files = [
        ("circle_bitmap.bmp", (HARDCASES / "H16_other_formats" / "files" / "circle_bitmap.bmp").read_bytes()),
        ("zero_bytes.jpg", (broken / "zero_bytes.jpg").read_bytes()),
        ("square_10_download.jpg", html.read_bytes()),
        ("circle_IMG_4001.heic", (HARDCASES / "H17_heic" / "files" / "circle_IMG_4001.heic").read_bytes()),
        ("circle_gray_L.png", (HARDCASES / "H01_grayscale" / "files" / "circle_gray_L.png").read_bytes()),
        ("truncated_60pct.jpg", (broken / "truncated_60pct.jpg").read_bytes()),
    ]
    result = ws.add_images("d", "circle", files)

    assert result.saved == ["circle_bitmap.bmp", "circle_IMG_4001.heic", "circle_gray_L.png"]
    rejected = {entry["file"]: entry["reason"] for entry in result.rejected}
    assert rejected["zero_bytes.jpg"] == "empty file (0 bytes)"
    assert rejected["square_10_download.jpg"] == "not an image: looks like an HTML page"
    assert rejected["truncated_60pct.jpg"] == "truncated or corrupt image data"
    assert ws.list_classes("d") == {"circle": 3}
    stored = sorted(path.name for path in (ws.dataset_dir("d") / "circle").iterdir())
    assert stored == ["circle_IMG_4001.heic", "circle_bitmap.bmp", "circle_gray_L.png"]


def test_uploaded_file_names_cannot_escape(ws, tmp_path):
    result = ws.add_images("d", "cats", [("../../../evil.png", png_bytes(tmp_path))])
    assert result.saved == ["evil.png"]
    assert (ws.dataset_dir("d") / "cats" / "evil.png").is_file()
    assert not (ws.path / "evil.png").exists()


@pytest.mark.parametrize("name", ["", "   ", "..", ".", "/", "CON", "Thumbs.db"])
def test_unusable_names_rejected(name):
    with pytest.raises(TlappError):
        safe_name(name)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("../cats", "_cats"), ("golden retriever", "golden retriever"), ("chat/chien", "chat_chien"), (".cats", "cats"), ("Éclair ", "Éclair")],
)
def test_safe_name_keeps_readable_names(raw, expected):
    assert safe_name(raw) == expected


def test_class_builder_steps_into_wrapper_folder(ws, tmp_path):
    data = zip_bytes({f"my_shapes/{label}/{i}.png": png_bytes(tmp_path, f"{label}{i}.png") for label in ("a", "b") for i in range(2)})
    name = ws.save_zip("wrapped.zip", data)
    assert ws.list_classes(name) == {"a": 2, "b": 2}
    ws.add_images(name, "c", [("c.png", png_bytes(tmp_path, "c.png"))])
    assert (ws.dataset_dir(name) / "my_shapes" / "c" / "c.png").is_file()


def test_single_class_dataset_is_not_a_wrapper(ws, tmp_path):
    ws.add_images("one", "circle", [("a.png", png_bytes(tmp_path, "a.png"))])
    ws.create_class("one", "square")
    assert ws.list_classes("one") == {"circle": 1, "square": 0}


def test_presplit_dataset_rejects_new_class(ws, tmp_path):
    data = zip_bytes({f"{split}/cats/{split}.png": png_bytes(tmp_path, f"{split}.png") for split in ("train", "val")})
    name = ws.save_zip("split.zip", data)
    with pytest.raises(TlappError, match="train/ and val/"):
        ws.create_class(name, "dogs")


def test_refused_dataset_files_stay_for_fixing(ws, tmp_path):
    name = ws.save_zip("one.zip", (HARDCASES / "H24_only_one_class" / "dataset_single_class.zip").read_bytes())
    with pytest.raises(DatasetError, match="circle"):
        load_collection(ws.dataset_dir(name))
    ws.add_images(name, "square", [(f"s{i}.png", png_bytes(tmp_path, f"s{i}.png")) for i in range(3)])
    collection = load_collection(ws.dataset_dir(name))
    assert collection.classes == ["circle", "square"]


def test_selection_persists_across_instances(ws, tmp_path):
    ws.add_images("d", "cats", [("a.png", png_bytes(tmp_path))])
    ws.select_dataset(DatasetChoice(WORKSPACE, "d", ws.dataset_dir("d")))
    again = Workspace("test-ws")
    assert again.selected_dataset() == DatasetChoice(WORKSPACE, "d", ws.datasets_dir / "d")


def test_deleting_selected_dataset_clears_selection(ws, tmp_path):
    ws.add_images("d", "cats", [("a.png", png_bytes(tmp_path))])
    ws.select_dataset(DatasetChoice(WORKSPACE, "d", ws.dataset_dir("d")))
    ws.delete_dataset("d")
    assert ws.list_datasets() == []
    assert ws.selected_dataset() is None


def test_library_lists_subfolders(ws, tmp_path, monkeypatch):
    library = tmp_path / "library"
    (library / "shapes").mkdir(parents=True)
    (library / ".hidden").mkdir()
    (library / "readme.txt").write_text("not a dataset")
    monkeypatch.setenv("TLAPP_DATASETS", str(library))

    assert ws.library() == [DatasetChoice(LIBRARY, "shapes", library / "shapes")]
    ws.select_dataset(ws.library()[0])
    assert ws.selected_dataset().path == library / "shapes"


def test_library_missing_gives_empty_list(ws):
    assert ws.library() == []


def test_new_run_dirs_are_unique(ws):
    first = ws.new_run_dir("efficientnet_lite0")
    second = ws.new_run_dir("efficientnet_lite0")
    assert first != second
    assert first.is_dir()
    assert second.is_dir()
    assert set(ws.run_dirs()) == {first, second}
    ws.delete_run(first.name)
    assert ws.run_dirs() == [second]


def test_fingerprint_changes_when_a_file_is_added(ws, tmp_path):
    ws.add_images("d", "cats", [("a.png", png_bytes(tmp_path, "a.png"))])
    before = dataset_fingerprint(ws.dataset_dir("d"))
    ws.add_images("d", "cats", [("b.png", png_bytes(tmp_path, "b.png"))])
    assert dataset_fingerprint(ws.dataset_dir("d")) != before
