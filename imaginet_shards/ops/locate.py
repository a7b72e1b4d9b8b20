"""The files an annotation file names, found under the dataset root at about one `lstat` each.

`resolve_inside` resolves every path component of every file (an `lstat` per component, twice with
the root); a dataset holds many files in few directories, so `RootFiles` resolves each directory
once and `lstat`s the file itself. A file that is a symlink, or one in a directory that resolves
outside the root, still goes through `resolve_inside`, so what is refused and why stays the same.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from imaginet_shards.format.annotations import resolve_inside

# lstat errors that mean "there is no such file" (pathlib's is_file() answers False for these).
_ABSENT = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EBADF})


class RootFiles:
    """Regular files under one dataset root, named by normalized annotation paths (relative POSIX
    paths without '.', '..' or empty parts, as `normalize_path` gives them)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._directories: dict[str, str | None] = {}

    def size(self, relative: str) -> int:
        """The size of the regular file `relative` names. ValueError when it resolves outside the
        root; OSError when it is missing, not a regular file or unreadable."""
        directory, _, name = relative.rpartition("/")
        resolved = self._directory(directory)
        if resolved is not None:
            try:
                info = os.lstat(f"{resolved}/{name}")
            except OSError as exc:
                if exc.errno in _ABSENT:
                    raise OSError("no such regular file") from None
                raise
            if not stat.S_ISLNK(info.st_mode):
                if not stat.S_ISREG(info.st_mode):
                    raise OSError("no such regular file")
                return info.st_size
        target = resolve_inside(self.root, relative)
        if not target.is_file():
            raise OSError("no such regular file")
        return target.stat().st_size

    def _directory(self, directory: str) -> str | None:
        """`directory` resolved, when it lies inside the root; None leaves the file to
        `resolve_inside` (a symlink out of the root may lead back in)."""
        if directory not in self._directories:
            resolved = (self.root / directory).resolve() if directory else self.root
            inside = resolved == self.root or self.root in resolved.parents
            self._directories[directory] = str(resolved) if inside else None
        return self._directories[directory]
