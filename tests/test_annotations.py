import json
from pathlib import Path

import pytest

from imaginet_shards.format.annotations import (
    AnnotationError,
    parse_lines,
    read_annotations,
    resolve_inside,
    schema_json,
    select_track,
)

GOOD = "./imagenet/a.JPEG,0,0,4,8\n./progan_val/b.png,1,0,0,0\n./journeydb/c.jpg,1,3,2,6\n"


def test_parses_rows_and_normalizes_paths():
    frame = parse_lines(GOOD.splitlines())
    assert list(frame["path"]) == ["imagenet/a.JPEG", "progan_val/b.png", "journeydb/c.jpg"]
    assert frame[["origin", "content", "family", "generator"]].values.tolist() == [
        [0, 0, 4, 8], [1, 0, 0, 0], [1, 3, 2, 6]]
    assert list(frame["line"]) == [1, 2, 3]


@pytest.mark.parametrize("line, message", [
    ("./a.png,0,0,4", "expected 5 comma-separated columns, got 4"),
    ("./a.png,0,x,4,8", "non-integer label"),
    ("./a.png,0,7,4,8", "content 7 out of range"),
    ("./a.png,0,0,1,3", "real row (origin 0) with family 1"),
    ("./a.png,1,0,4,8", "synthetic row (origin 1) with family 4"),
    ("./a.png,1,0,1,0", "generator 0 belongs to family 0, not 1"),
    ("/etc/passwd,0,0,4,8", "absolute path"),
    ("./../../etc/passwd,0,0,4,8", "escapes the dataset root"),
    ("./a/../../b.png,0,0,4,8", "escapes the dataset root"),
    ("./imagenet/a.JPEG,1,0,0,0", "duplicate path 'imagenet/a.JPEG' with labels [1, 0, 0, 0], line 1"),
])
def test_bad_line_names_file_and_line(tmp_path: Path, line: str, message: str):
    path = tmp_path / "ann.txt"
    path.write_text(GOOD + line + "\n")
    with pytest.raises(AnnotationError) as info:
        read_annotations(path)
    assert f"{path}:4: " in str(info.value)
    assert message in str(info.value)


def test_identical_duplicate_is_dropped_and_listed():
    frame = parse_lines((GOOD + "./imagenet//a.JPEG,0,0,4,8\n").splitlines())
    assert len(frame) == 3
    assert frame.attrs["duplicates"] == [(4, "imagenet/a.JPEG", 1)]


def test_collect_reports_every_bad_line():
    lines = ["./a.png,0,0,4,8", "./b.png,9,0,4,8", "./c.png,0,0,4", "./d.png,1,0,0,0"]
    with pytest.raises(AnnotationError) as info:
        parse_lines(lines, source="x.txt", collect=True)
    assert [line for line, _ in info.value.problems] == [2, 3]


def test_symlink_escaping_root_is_refused(tmp_path: Path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(ValueError, match="outside the dataset root"):
        resolve_inside(root, "link.png")


def test_tracks():
    frame = parse_lines(GOOD.splitlines())
    assert list(select_track(frame, "origin")["target"]) == [0, 1, 1]
    assert list(select_track(frame, "family")["target"]) == [0, 2]
    assert list(select_track(frame, "generator")["target"]) == [0, 6]
    assert len(select_track(frame, "all")) == 3
    with pytest.raises(ValueError, match="unknown track"):
        select_track(frame, "colour")


def test_committed_schema_matches_code():
    committed = Path(__file__).resolve().parents[1] / "annotations" / "labels.json"
    assert json.loads(committed.read_text()) == json.loads(schema_json())


def test_parses_every_official_file(official_annotations: Path):
    files = sorted(official_annotations.glob("*.txt"))
    assert files
    for path in files:
        frame = read_annotations(path)
        rows = sum(1 for line in path.read_text().splitlines() if line.strip())
        assert len(frame) + len(frame.attrs["duplicates"]) == rows
        assert set(frame["origin"]) == {0, 1}
    whole = read_annotations(official_annotations / "test_annotations.txt")
    assert len(whole) == 40000
    assert set(whole["generator"]) == set(range(9))
