import json
from pathlib import Path

import pytest

from imaginet_shards.format.annotations import (
    LABEL_COLUMNS,
    UNKNOWN,
    AnnotationError,
    detect_format,
    label_name,
    parse_lines,
    read_annotations,
    recorded_format,
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


# --- zero-shot test sets: other annotation formats, unknown labels -----------------------------

@pytest.mark.parametrize("annotation_format, text, expected", [
    ("path-label", "AIDraw_1122/Fake/DreamBooth/0.png 1\nAIDraw_1122/Real/a/3.JPEG\t0\n",
     [["AIDraw_1122/Fake/DreamBooth/0.png", 1, -1, -1, -1], ["AIDraw_1122/Real/a/3.JPEG", 0, -1, -1, -1]]),
    ("path,label", "fake/0.PNG,1\n./real/1.jpeg,0\n",
     [["fake/0.PNG", 1, -1, -1, -1], ["real/1.jpeg", 0, -1, -1, -1]]),
    ("path,label,generator", "progan_lsun/cat_1.png,1,0\nglide/x.png,1,8\nreal_ucid/u.JPEG,0,0\n",
     [["progan_lsun/cat_1.png", 1, -1, -1, 0], ["glide/x.png", 1, -1, -1, 8],
      ["real_ucid/u.JPEG", 0, -1, -1, 0]]),
])
def test_zero_shot_formats_parse_with_unknown_labels(tmp_path, annotation_format, text, expected):
    path = tmp_path / "zero.txt"
    path.write_text(text)
    frame = read_annotations(path, annotation_format=annotation_format)
    assert frame[["path", *LABEL_COLUMNS]].values.tolist() == expected
    assert UNKNOWN == -1 and frame.attrs["format"] == annotation_format


@pytest.mark.parametrize("annotation_format, line, message", [
    ("path,label", "c.png 1", "expected 2 comma-separated columns, got 1 (path,label: path,origin); "
                               "the line reads as --annotation-format path-label"),
    ("path,label", "c.png,1,3", "got 3 (path,label: path,origin); the line reads as "
                                "--annotation-format path,label,generator"),
    ("path-label", "c.png,1", "expected 2 whitespace-separated columns, got 1"),
    ("path,label,generator", "c.png,1", "expected 3 comma-separated columns, got 2"),
    ("path,label", "c.png,2", "label 2 is neither 0 (real) nor 1 (synthetic)"),
    ("path,label", "c.png,yes", "non-integer label in ['yes']"),
    ("path,label,generator", "c.png,1,-3", "generator -3 is negative"),
    ("path,label", "/abs/c.png,1", "absolute path"),
    ("path,label", "a.png,0", "duplicate path 'a.png' with labels [0, -1, -1, -1], line 1 has [1, -1, -1, -1]"),
    ("imaginet", "c.png,1", "expected 5 comma-separated columns, got 2 (imaginet: "
                            "path,origin,content,family,generator); the line reads as "
                            "--annotation-format path,label"),
])
def test_mixed_or_malformed_line_names_file_and_line(tmp_path, annotation_format, line, message):
    first = {"path-label": "a.png 1", "imaginet": "./a.png,1,0,0,0"}.get(annotation_format, "a.png,1")
    first += ",0" if annotation_format == "path,label,generator" else ""
    path = tmp_path / "zero.txt"
    path.write_text(f"{first}\n\n{line}\n")
    with pytest.raises(AnnotationError) as info:
        read_annotations(path, annotation_format=annotation_format)
    assert f"{path}:3: " in str(info.value)
    assert message in str(info.value)


def test_format_is_never_guessed():
    with pytest.raises(AnnotationError, match="reads as --annotation-format path-label"):
        parse_lines(["x/0.png 1"])
    with pytest.raises(ValueError, match="unknown annotation format 'csv'"):
        parse_lines(["x/0.png,1"], annotation_format="csv")
    assert detect_format("./a.png,0,0,4,8") == "imaginet"
    assert detect_format("a.png,0,0,4,8,9") is None


def test_repeated_lines_kept_on_request():
    lines = (GOOD + "./imagenet//a.JPEG,0,0,4,8\n").splitlines()
    kept = parse_lines(lines, keep_duplicates=True)
    assert list(kept["line"]) == [1, 2, 3, 4]
    assert kept.attrs["duplicates"] == [(4, "imagenet/a.JPEG", 1)]


def test_label_names_and_tracks_of_unknown_labels():
    assert label_name("content", UNKNOWN) == "unknown"
    assert label_name("generator", 3) == "SD v2.1"
    assert label_name("generator", 3, "path,label,generator") == "generator 3"
    assert label_name("origin", 1, "path-label") == "synthetic"
    with pytest.raises(ValueError, match="content 7 is not a label value"):
        label_name("content", 7)
    frame = parse_lines(["a.png,1,4", "b.png,0,0", "c.png,1,2"], annotation_format="path,label,generator")
    assert list(select_track(frame, "origin")["target"]) == [1, 0, 1]
    assert list(select_track(frame, "generator")["target"]) == [4, 2]
    assert select_track(frame, "family").empty
    assert recorded_format({}) == "imaginet"
    assert recorded_format({"format": "path,label"}) == "path,label"
