"""The error hierarchy: every class carries its fields, pickles with them, keeps the built-in base
callers caught before, and is what the library raises for each kind of bad data."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest

import imaginet_shards
from imaginet_shards.codecs.png import PngError
from imaginet_shards.codecs.webp import WebpError
from imaginet_shards.errors import (
    AnnotationError,
    ImageError,
    ImaginetError,
    MissingShardSetError,
    PackError,
    SampleError,
    ShardSetError,
    StorageError,
)
from imaginet_shards.format.annotations import parse_lines
from imaginet_shards.format.images import ImageCheckError, check_image
from imaginet_shards.format.tar import parse_index
from imaginet_shards.io.shardset import load_manifest

CASES = [
    (AnnotationError("a.txt", [(3, "bad origin"), (7, "two columns")]),
     {"file": "a.txt", "line": 3, "reason": "bad origin", "problems": [(3, "bad origin"), (7, "two columns")]},
     ValueError, ["a.txt:3: bad origin", "a.txt:7: two columns"]),
    (ImageError("not an image"), {"reason": "not an image"}, ValueError, ["not an image"]),
    (ShardSetError("set/a.idx", "empty index", "repack"),
     {"location": "set/a.idx", "reason": "empty index", "hint": "repack"}, ValueError,
     ["set/a.idx: empty index (repack)"]),
    (MissingShardSetError("set/manifest.json", "no manifest.json"),
     {"location": "set/manifest.json", "reason": "no manifest.json", "hint": ""}, FileNotFoundError,
     ["set/manifest.json: no manifest.json"]),
    (SampleError("s-000001.tar", "000000010", "truncated", "skip it"),
     {"shard": "s-000001.tar", "key": "000000010", "reason": "truncated", "hint": "skip it"}, ValueError,
     ["s-000001.tar: sample 000000010: truncated (skip it)"]),
    (PackError("line 4: a.png", "missing"), {"location": "line 4: a.png", "reason": "missing"},
     RuntimeError, ["line 4: a.png: missing"]),
    (StorageError("reading s3://b/x", "still failing"),
     {"operation": "reading s3://b/x", "reason": "still failing"}, OSError,
     ["reading s3://b/x: still failing"]),
]


@pytest.mark.parametrize("error,fields,builtin,texts", CASES, ids=lambda c: type(c).__name__)
def test_error_carries_fields_and_keeps_its_builtin_base(error, fields, builtin, texts):
    assert isinstance(error, ImaginetError) and isinstance(error, builtin)
    for name, value in fields.items():
        assert getattr(error, name) == value
    for text in texts:
        assert text in str(error)
    copy = pickle.loads(pickle.dumps(error))  # errors cross the packer's process pool
    assert type(copy) is type(error) and str(copy) == str(error)
    assert all(getattr(copy, name) == value for name, value in fields.items())


def test_image_errors_of_each_decoder_are_image_errors():
    assert issubclass(ImageCheckError, ImageError)
    assert issubclass(PngError, ImageError) and issubclass(WebpError, ImageError)
    with pytest.raises(ImageCheckError, match="unknown magic bytes") as info:
        check_image(b"garbage")
    assert "unknown magic bytes" in info.value.reason


def test_annotation_error_names_file_line_and_reason():
    with pytest.raises(AnnotationError) as info:
        parse_lines(["./a.png,0,0,4,8", "./b.png,9,0,4,8"], source="x.txt")
    assert (info.value.file, info.value.line) == ("x.txt", 2)
    assert "origin 9 out of range" in info.value.reason


def test_missing_shard_set_is_a_shard_set_error_and_a_file_not_found(tmp_path: Path):
    with pytest.raises(MissingShardSetError) as info:
        load_manifest(str(tmp_path))
    assert info.value.location == str(tmp_path / "manifest.json")
    assert "wrong directory" in info.value.hint
    assert isinstance(info.value, FileNotFoundError)


def test_malformed_manifest_and_index_are_shard_set_errors(tmp_path: Path):
    (tmp_path / "manifest.json").write_bytes(b'{"format_version": 1}')
    with pytest.raises(ShardSetError, match="not a valid imaginet manifest") as info:
        load_manifest(str(tmp_path))
    assert info.value.location == str(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe")
    with pytest.raises(ShardSetError, match="not a valid imaginet manifest"):
        load_manifest(str(tmp_path))
    with pytest.raises(ShardSetError) as info:
        parse_index("v1.2 1\njpg x 10 a.jpg\n", "a.idx")
    assert (info.value.location, info.value.reason) == ("a.idx:2", "non-integer offset or size")


def test_the_package_exports_the_hierarchy():
    for name in ("ImaginetError", "AnnotationError", "ImageError", "ShardSetError",
                 "MissingShardSetError", "SampleError", "PackError", "StorageError"):
        assert name in imaginet_shards.__all__
        assert issubclass(getattr(imaginet_shards, name), ImaginetError)


def test_annotation_error_needs_a_problem():
    with pytest.raises(ValueError, match="at least one problem"):
        AnnotationError("a.txt", [])
