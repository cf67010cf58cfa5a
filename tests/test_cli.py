"""The command line, run in-process through tlapp.cli.main and once as `python -m tlapp`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import HARDCASES
from tlapp.cli import main

C01 = HARDCASES / "C01_control_3class" / "control_3class.zip"


def test_inspect_json_reports_classes(capsys):
    assert main(["inspect", str(C01), "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["classes"] == {"circle": 20, "square": 20, "triangle": 20}
    assert report["num_images"] == 60
    assert report["skipped"] == []
    assert report["warnings"] == []


def test_inspect_rejects_one_class_with_exit_2(capsys):
    status = main(["inspect", str(HARDCASES / "H24_only_one_class" / "dataset_single_class.zip"), "--json"])

    assert status == 2
    error = capsys.readouterr().err
    assert "at least 2 classes" in error
    assert "circle" in error


def test_inspect_names_skipped_file(capsys):
    source = HARDCASES / "H09_one_poison_file_reporting" / "dataset_one_html_saved_as_jpg.zip"
    assert main(["inspect", str(source), "--json"]) == 0

    report = json.loads(capsys.readouterr().out)
    assert [s["file"] for s in report["skipped"]] == ["square/square_10_download.jpg"]
    assert "HTML" in report["skipped"][0]["reason"]


@pytest.fixture(scope="module")
def c01_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    status = main(["train", str(C01), "--epochs", "3", "--lr", "0.01", "--out", str(run_dir)])
    assert status == 0
    return run_dir


def test_train_writes_metrics(c01_run):
    metrics = json.loads((c01_run / "metrics.json").read_text())

    for key in ["val_accuracy", "best_epoch", "train_seconds", "backbone", "frozen_stages",
                "trainable_params", "total_params"]:
        assert key in metrics, key
    assert metrics["backbone"] == "efficientnet_lite0"
    assert metrics["val_accuracy"] >= 0.9


def test_predict_json_ranks_classes(c01_run, tmp_path, capsys):
    import zipfile

    with zipfile.ZipFile(C01) as zipped:
        name = next(n for n in zipped.namelist() if "/triangle/" in f"/{n}" and n.endswith(".jpg"))
        image = tmp_path / "triangle.jpg"
        image.write_bytes(zipped.read(name))
    capsys.readouterr()

    assert main(["predict", str(c01_run), str(image), "--json"]) == 0

    result = json.loads(capsys.readouterr().out)
    assert result[0]["top"][0]["label"] == "triangle"


def test_predict_reports_bad_file_and_keeps_going(c01_run, capsys):
    poison = HARDCASES / "H09_one_poison_file_reporting" / "files" / "square_10_download.jpg"
    good = next((HARDCASES / "H01_grayscale" / "files").glob("*.png"))

    status = main(["predict", str(c01_run), str(poison), str(good), "--json"])

    assert status == 2
    captured = capsys.readouterr()
    assert "square_10_download.jpg" in captured.err
    results = json.loads(captured.out)
    assert "error" in results[0]
    assert "top" in results[1]


def test_predict_on_missing_run_says_what_to_pass(tmp_path, capsys):
    assert main(["predict", str(tmp_path), str(C01)]) == 2
    assert "--out" in capsys.readouterr().err


def test_predict_on_absent_folder_names_it(tmp_path, capsys):
    absent = tmp_path / "nowhere"
    assert main(["predict", str(absent), str(C01)]) == 2
    assert f"There is no run folder {absent}" in capsys.readouterr().err


def test_train_keeps_an_earlier_run(c01_run, capsys):
    before = (c01_run / "metrics.json").read_text()

    assert main(["train", str(C01), "--epochs", "1", "--out", str(c01_run)]) == 2
    error = capsys.readouterr().err
    assert f"The run folder {c01_run} already contains files" in error
    assert "Choose a new folder for --out" in error
    assert (c01_run / "metrics.json").read_text() == before


def test_invalid_settings_leave_no_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", str(C01), "--epochs", "0", "--out", str(out)]) == 2
    assert "epochs must be between 1 and 1000" in capsys.readouterr().err
    assert not out.exists()


def test_backbones_lists_weights_status(capsys):
    assert main(["backbones", "--json"]) == 0

    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["efficientnet_lite0"]["weights"] == "bundled"
    assert rows["vgg16"]["params"] > 100_000_000


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "tlapp", "--help"], capture_output=True, text=True, check=False)

    assert result.returncode == 0
    assert "inspect" in result.stdout
