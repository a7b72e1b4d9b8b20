"""Reproducible WebDataset tar members and DALI index files (docs/architecture.md, "The shard format").

Tar headers are deterministic (fixed mtime, owner, mode), so the same samples always give the same
bytes. The DALI index (the v1.2 text format of DALI's `wds2idx`) is built while writing: first line
`v1.2 <samples>`, then per sample, per member, `ext data_offset size name`. Readers go straight to
a member through its index entry and check the header in front of it (`check_member_header`)
before trusting its bytes.
"""
from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from imaginet_shards.errors import ShardSetError

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default record size; archives end padded to it
INDEX_VERSION = "v1.2"
MTIME = 946684800  # 2000-01-01T00:00:00Z: fixed so that shards are byte-reproducible


@dataclass(frozen=True)
class IndexEntry:
    """One member in a DALI index line: extension, data offset, size, member name."""

    ext: str
    offset: int
    size: int
    name: str


# The fields of a ustar header before and after name, size and checksum, as tarfile writes them for
# a regular file with mode 0644, owner 0:0, empty owner names and the fixed mtime.
_HEADER_MODE = b"0000644\0" + b"0000000\0" * 2
_HEADER_REST = (b"%011o\0" % MTIME, b"0" + bytes(100) + b"ustar\x0000" + bytes(64 + 16 + 155 + 12))
_MAX_FAST_SIZE = 8 ** 11  # sizes that fit the 11 octal digits of the plain size field


def member_header(name: str, size: int) -> bytes:
    """A deterministic ustar header for a regular file: assembled directly for short ASCII names
    (the samples' members; byte for byte what tarfile writes, which a test checks), through
    tarfile for anything else (long names, huge sizes)."""
    raw = name.encode("ascii", "replace")
    if len(raw) < 100 and name.isascii() and 0 <= size < _MAX_FAST_SIZE:
        head = raw.ljust(100, b"\0") + _HEADER_MODE + b"%011o\0" % size + _HEADER_REST[0]
        checksum = sum(head) + sum(_HEADER_REST[1]) + 8 * 32  # the checksum field counts as spaces
        return head + b"%06o\0 " % checksum + _HEADER_REST[1]
    return _tarfile_header(name, size)


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.USTAR_FORMAT, encoding="utf-8", errors="strict")


def check_member_header(header, name: str, size: int) -> None:
    """Check that `header` (512 bytes, any bytes-like object) is the ustar header of a regular file
    called `name` (a long name split into the prefix field counts whole) holding `size` bytes, as
    the index says; ValueError saying what differs (checksum, format, type, name or size)."""
    head = bytes(header)
    if len(head) != BLOCK:
        raise ValueError(f"{len(head)}-byte tar header, expected {BLOCK}")
    stored, computed = _octal(head[148:156]), sum(head) - sum(head[148:156]) + 8 * 32
    if stored != computed:  # the checksum field itself counts as spaces
        raise ValueError(f"tar header checksum {stored}, computed {computed}: not a header, or a "
                         "damaged one")
    if head[257:262] != b"ustar":
        raise ValueError("not a ustar tar header")
    if head[156:157] not in (b"0", b"\0"):
        raise ValueError(f"tar header of type {head[156:157]!r}, expected a regular file")
    found = _text(head[:100])
    if head[345] != 0:
        found = f"{_text(head[345:500])}/{found}"
    if found != name:
        raise ValueError(f"tar header names {found!r} where the index says {name!r}")
    stored_size = _octal(head[124:136])
    if stored_size != size:
        raise ValueError(f"tar header of {name} gives {stored_size} bytes, the index {size}")


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "replace")


def _octal(field: bytes) -> int:
    """A header's numeric field (octal digits, as ustar writes them); -1 when it is not one."""
    digits = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(digits, 8)
    except ValueError:
        return -1


def padding(size: int, unit: int = BLOCK) -> int:
    return -size % unit


def split_member_name(name: str) -> tuple[str, str]:
    """(key, ext) split at the first dot of the base name, as WebDataset and DALI do."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


class ShardWriter:
    """Writes samples as adjacent tar members to a binary stream, hashing the stream and recording
    the DALI index as it goes. `close()` ends the archive and returns (bytes, sha256, index text)."""

    def __init__(self, stream: BinaryIO):
        self._stream = stream
        self._hash = hashlib.sha256()
        self._offset = 0
        self._lines: list[str] = []

    def _write(self, data: bytes) -> None:
        self._stream.write(data)
        self._hash.update(data)
        self._offset += len(data)

    def add_sample(self, key: str, members: Sequence[tuple[str, bytes]]) -> list[IndexEntry]:
        """Append one sample: `members` are (extension, payload) in the order they are written."""
        if "." in key or "/" in key or not key:
            raise ValueError(f"invalid sample key {key!r}: keys must be non-empty, without '.' or '/'")
        entries = []
        for ext, payload in members:
            name = f"{key}.{ext}"
            self._write(member_header(name, len(payload)))
            entries.append(IndexEntry(ext, self._offset, len(payload), name))
            self._write(payload)
            self._write(b"\0" * padding(len(payload)))
        self._lines.append(format_index_line(entries))
        return entries

    @property
    def samples(self) -> int:
        return len(self._lines)

    def close(self) -> tuple[int, str, str]:
        end = 2 * BLOCK
        self._write(b"\0" * (end + padding(self._offset + end, RECORD)))
        index = f"{INDEX_VERSION} {len(self._lines)}\n" + "".join(line + "\n" for line in self._lines)
        return self._offset, self._hash.hexdigest(), index


def format_index_line(entries: Iterable[IndexEntry]) -> str:
    return " ".join(f"{e.ext} {e.offset} {e.size} {e.name}" for e in entries)


def parse_index(text: str, source: str = "<index>") -> list[list[IndexEntry]]:
    """Parse a DALI v1.2 index into per-sample member lists; ShardSetError names the bad line."""
    lines = text.splitlines()
    if not lines:
        raise ShardSetError(source, "empty index")
    head = lines[0].split()
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise ShardSetError(f"{source}:1", f"expected '{INDEX_VERSION} <samples>', got {lines[0]!r}")
    samples: list[list[IndexEntry]] = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise ShardSetError(f"{source}:{number}", "expected groups of 'ext offset size name'")
        try:
            samples.append([IndexEntry(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                            for i in range(0, len(fields), 4)])
        except ValueError:
            raise ShardSetError(f"{source}:{number}", "non-integer offset or size") from None
    if len(samples) != int(head[1]):
        raise ShardSetError(source, f"header says {head[1]} samples, found {len(samples)}")
    return samples
