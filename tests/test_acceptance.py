"""Acceptance: the real ants-vs-bees photos, trained through the command line as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import SHARED

ROOT = Path(__file__).resolve().parents[1]


def test_hymenoptera_head_only_reaches_93_percent(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "tlapp", "train", str(SHARED / "datasets" / "hymenoptera"),
        "--backbone", "efficientnet_lite0", "--freeze", "all", "--out", str(run_dir),
    ]

    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_accuracy"] >= 0.93
    # Its own train/ and val/ split; the "image not found" placeholder GIF is a usable (if noisy) image.
    assert metrics["num_train_images"] == 245
    assert metrics["num_val_images"] == 153
