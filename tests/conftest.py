"""Shared fixtures: tiny real image datasets in the ImagiNet layout, and the official annotations."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers.trees import make_dataset

SHARED_ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared" / "imaginet-annotations"

@pytest.fixture
def tiny_dataset(tmp_path: Path) -> tuple[Path, Path]:
    """(root, annotation file) of 60 mixed JPEG/PNG/WebP images in six sources."""
    root = tmp_path / "root"
    return root, make_dataset(root, 60)


@pytest.fixture
def official_annotations() -> Path:
    if not SHARED_ANNOTATIONS.is_dir():
        pytest.skip(f"official annotation files not present at {SHARED_ANNOTATIONS}")
    return SHARED_ANNOTATIONS
