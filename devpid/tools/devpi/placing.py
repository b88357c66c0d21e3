"""Files put into the bundle being written, each read once, and the manifest they make.

A file of the export is hard-linked into a scratch directory of the bundle (copied when
the bundle is on another file system, with its hashes taken while copying), hashed there,
and renamed to its place: its name (``<h3>/<h13>``) depends on its sha256, known only
once it was read. The scratch directory is removed before the manifest is written, so
nothing but what the manifest lists is left.

Hard links share the export's inodes: nothing here or in devpid ever writes a committed
file in place, so the export stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import attrs

from devpid.tools.bundle.format import CHUNK, RECORDS, ManifestEntry, path_problem
from devpid.tools.devpi.dataindex import DevpiExportError

SCRATCH = ".devpi-import-scratch"
#: Errors of ``os.link`` after which a copy is made instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES})


@attrs.frozen
class Digested:
    """A file in the scratch directory: its size and the digests asked for."""

    path: Path
    size: int
    digests: dict[str, str]


def _hashers(algorithms: Iterable[str]) -> dict[str, hashlib._Hash]:
    hashers = {"sha256": hashlib.sha256()}
    for name in algorithms:
        if name not in hashers and name in hashlib.algorithms_available:
            try:
                hashers[name] = hashlib.new(name)
            except ValueError:  # named but unusable here (FIPS, say)
                continue
    return hashers


@attrs.define
class BundleFiles:
    """The files of the bundle in ``root``, and their manifest entries."""

    root: Path
    entries: dict[str, ManifestEntry] = attrs.field(factory=dict)
    linked: int = 0
    copied: int = 0
    _scratch_count: int = 0

    @property
    def scratch(self) -> Path:
        return self.root / SCRATCH

    def take(self, source: Path, algorithms: Iterable[str] = ()) -> Digested:
        """``source`` in the scratch directory with its size and digests (sha256 at least)."""
        self.scratch.mkdir(exist_ok=True)
        self._scratch_count += 1
        target = self.scratch / str(self._scratch_count)
        hashers = _hashers(algorithms)
        try:
            os.link(source, target, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise DevpiExportError(f"cannot link {source}: {e.strerror or e}") from None
            size = self._copy(source, target, hashers)
            self.copied += 1
        else:
            size = self._hash(target, hashers)
            self.linked += 1
        return Digested(target, size, {name: h.hexdigest() for name, h in hashers.items()})

    @staticmethod
    def _copy(source: Path, target: Path, hashers: dict[str, hashlib._Hash]) -> int:
        size = 0
        try:
            with open(source, "rb") as src, open(target, "xb") as dst:
                while chunk := src.read(CHUNK):
                    for hasher in hashers.values():
                        hasher.update(chunk)
                    dst.write(chunk)
                    size += len(chunk)
        except OSError as e:
            raise DevpiExportError(f"cannot copy {source}: {e.strerror or e}") from None
        return size

    @staticmethod
    def _hash(path: Path, hashers: dict[str, hashlib._Hash]) -> int:
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                for hasher in hashers.values():
                    hasher.update(chunk)
                size += len(chunk)
        return size

    def place(self, taken: Digested, path: str) -> None:
        """Move a taken file to ``path`` of the bundle."""
        self._check(path)
        final = self.root / path
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(taken.path, final)
        self.entries[path] = ManifestEntry(path, taken.size, taken.digests["sha256"])

    def unplace(self, path: str) -> None:
        """Take back a file placed earlier (a version's older doc zip)."""
        del self.entries[path]
        (self.root / path).unlink()

    def discard(self, taken: Digested) -> None:
        taken.path.unlink(missing_ok=True)

    def write(self, path: str, data: bytes) -> ManifestEntry:
        """A small file the converter makes (a wheel's ``.metadata``)."""
        self._check(path)
        final = self.root / path
        final.parent.mkdir(parents=True, exist_ok=True)
        final.write_bytes(data)
        entry = ManifestEntry(path, len(data), hashlib.sha256(data).hexdigest())
        self.entries[path] = entry
        return entry

    def add_records(self, size: int, sha256: str) -> None:
        self.entries[RECORDS] = ManifestEntry(RECORDS, size, sha256)

    def _check(self, path: str) -> None:
        problem = path_problem(path)
        if problem is not None:
            raise DevpiExportError(f"{path}: {problem}")
        if path in self.entries:
            raise DevpiExportError(f"{path} would be written twice")

    def finish(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
