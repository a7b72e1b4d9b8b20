"""Finding the files pack packs: `RootFiles` accepts and refuses exactly what `resolve_inside`
does."""
import os
from pathlib import Path

import pytest

from imaginet_shards.format.annotations import resolve_inside
from imaginet_shards.ops.locate import RootFiles


def _reference(root: Path, relative: str) -> int | str:
    """The size by the full resolution, or the kind of refusal."""
    try:
        target = resolve_inside(root, relative)
    except ValueError:
        return "outside"
    return target.stat().st_size if target.is_file() else "absent"


def _located(files: RootFiles, relative: str) -> int | str:
    try:
        return files.size(relative)
    except ValueError as exc:
        assert "outside the dataset root" in str(exc)
        return "outside"
    except OSError as exc:
        assert str(exc) == "no such regular file"
        return "absent"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A root with plain files, symlinked files and directories pointing in and out of it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (outside / "back").mkdir(parents=True)
    (root / "top.png").write_bytes(b"1" * 11)
    (root / "a" / "b" / "deep.png").write_bytes(b"2" * 22)
    (outside / "secret.png").write_bytes(b"3" * 33)
    (root / "a" / "inside-link.png").symlink_to(root / "top.png")
    (root / "a" / "outside-link.png").symlink_to(outside / "secret.png")
    (root / "a" / "dangling.png").symlink_to(root / "nothing.png")
    (root / "dirlink").symlink_to(root / "a" / "b", target_is_directory=True)
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (outside / "back" / "home.png").symlink_to(root / "top.png")
    (root / "a" / "folder.png").mkdir()
    os.mkfifo(root / "a" / "pipe.png")
    return root


CASES = {
    "top.png": 11, "a/b/deep.png": 22, "a/inside-link.png": 11, "dirlink/deep.png": 22,
    "escape/back/home.png": 11,  # leaves the root through a directory, a symlink leads back in
    "a/outside-link.png": "outside", "escape/secret.png": "outside", "escape/missing.png": "outside",
    "a/dangling.png": "absent", "a/missing.png": "absent", "nowhere/x.png": "absent",
    "top.png/x.png": "absent", "a/folder.png": "absent", "a/pipe.png": "absent",
}


@pytest.mark.parametrize("relative", CASES)
def test_root_files_agree_with_resolve_inside(tree: Path, relative: str):
    files = RootFiles(tree)
    assert _located(files, relative) == _reference(tree, relative) == CASES[relative]
    assert _located(files, relative) == CASES[relative]  # again, from the cached directory


def test_a_root_reached_through_a_symlink(tree: Path, tmp_path: Path):
    (tmp_path / "alias").symlink_to(tree, target_is_directory=True)
    files = RootFiles(tmp_path / "alias")
    assert [_located(files, p) for p in CASES] == list(CASES.values())

