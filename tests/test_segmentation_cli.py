"""The ``segment`` command group: inspect, train and predict from the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tlapp.cli import main

ROOT = Path(__file__).resolve().parents[1]
HARDCASES = ROOT.parent / "shared" / "hardcases"

# pytest puts this folder on sys.path, so the sibling test module imports by name.
from test_segmentation_training import make_shapes_dataset  # noqa: E402


def test_inspect_lists_problems_by_name(capsys):
    status = main(["segment", "inspect", str(HARDCASES / "H36_mask_name_mismatch" / "seg_name_mismatch.zip")])
    output = capsys.readouterr().out

    assert status == 0
    assert output.startswith("6 image/mask pairs")
    assert "left out images/img_005.jpg: ambiguous: 2 masks" in output
    assert "left out images/img_006.jpg: no mask" in output
    assert "left out masks/img_099.png: no image" in output


def test_inspect_json(capsys):
    status = main(["segment", "inspect", "--json", str(HARDCASES / "C02_control_seg" / "control_seg.zip")])
    report = json.loads(capsys.readouterr().out)

    assert status == 0
    assert report["num_pairs"] == 20
    assert report["classes"] == ["background", "object"]


def test_train_then_predict(tmp_path, capsys):
    data = make_shapes_dataset(tmp_path / "shapes", count=8)
    run_dir = tmp_path / "run"
    status = main([
        "segment", "train", str(data), "--out", str(run_dir), "--epochs", "2", "--image-size", "64",
        "--batch-size", "4", "--views", "2", "--freeze", "all", "--class-names", "sky,ball",
    ])
    captured = capsys.readouterr()

    assert status == 0
    assert "epoch 2/2" in captured.err
    assert json.loads(captured.out)["epochs_run"] == 2
    assert json.loads((run_dir / "run.json").read_text())["classes"] == ["sky", "ball"]

    image = data / "images" / "shape_03.png"
    status = main(["segment", "predict", str(run_dir), str(image), "--out", str(tmp_path / "masks")])
    output = capsys.readouterr().out
    mask = np.asarray(Image.open(tmp_path / "masks" / "shape_03_mask.png"))
    overlay = Image.open(tmp_path / "masks" / "shape_03_overlay.png")

    assert status == 0
    assert "shape_03_mask.png" in output
    assert mask.shape == (56, 72)
    assert set(np.unique(mask)) <= {0, 1}
    assert overlay.size == (72, 56)


def test_predict_reports_unreadable_images(tmp_path, capsys):
    data = make_shapes_dataset(tmp_path / "shapes", count=6)
    run_dir = tmp_path / "run"
    assert main(["segment", "train", str(data), "--out", str(run_dir), "--epochs", "1", "--image-size", "64", "--views", "1"]) == 0
    (tmp_path / "notes.jpg").write_text("not an image")
    capsys.readouterr()

    status = main([
        "segment", "predict", str(run_dir), str(tmp_path / "notes.jpg"), str(data / "images" / "shape_00.png"),
        "--out", str(tmp_path / "masks"),
    ])
    captured = capsys.readouterr()

    assert status == 2
    assert "notes.jpg" in captured.err
    assert (tmp_path / "masks" / "shape_00_mask.png").is_file()


def test_user_errors_exit_with_status_2(tmp_path, capsys):
    status = main(["segment", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "run")])
    assert status == 2
    assert "does not exist" in capsys.readouterr().err


def test_module_entry_point():
    result = subprocess.run(
        [sys.executable, "-m", "tlapp.segmentation", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert "inspect" in result.stdout
    assert "predict" in result.stdout
