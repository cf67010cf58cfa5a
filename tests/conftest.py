"""Shared test helpers: paths to the read-only data beside the repository, and image folders."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Read-only data placed next to the repository (CI clones the repository beside a copy of it).
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HARDCASES = SHARED / "hardcases"

_image_seeds = itertools.count(1)


def write_image(path: Path, *, size: tuple[int, int] = (48, 40), seed: int | None = None) -> Path:
    """Write a small noise image whose bytes differ from every other call's, in the format of the suffix."""
    rng = np.random.default_rng(next(_image_seeds) if seed is None else seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def make_image_folder(tmp_path):
    """Return a function that builds a folder of distinct images from {"sub/folder": count}.

    Example: ``make_image_folder({"cat": 3, "dog": 2})`` writes cat/cat_0.png .. dog/dog_1.png
    under a fresh folder and returns that folder. Pass ``root`` to add to an existing folder.
    """
    folders = itertools.count()

    def make(layout: dict[str, int], root: Path | None = None, suffix: str = ".png") -> Path:
        if root is None:
            root = tmp_path / f"images_{next(folders)}"
        root.mkdir(parents=True, exist_ok=True)
        for folder, count in layout.items():
            (root / folder).mkdir(parents=True, exist_ok=True)
            stem = Path(folder).name
            for i in range(count):
                write_image(root / folder / f"{stem}_{i}{suffix}")
        return root

    return make
