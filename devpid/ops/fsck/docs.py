"""fsck of ``+docs/``: unpacked documentation against the doc zips their versions link.

A stage version's doc zip (its last ``doczip`` link, as the docs route picks
it) is unpacked into ``+docs/<user>/<index>/<project>/<version>/<sha256[:16]>/``
at upload, or on the first request when that directory is missing. So the
doc zip is the truth and every unpacked directory a copy that can go:

- a directory no current doc zip names (its version or index is gone, the
  version's doc zip was replaced, it has none) is **stale**: a warning,
  removed by ``--repair``. The links are read again before that (a live
  devpid unpacks an upload's docs just before the transaction linking it);
- a current directory is compared with its zip's directory: every member
  must be there as a regular file of the member's size and CRC-32 (the file
  is read, the zip is not decompressed), and nothing else may be (a file
  there is served as the uploader's). A difference is an error
  (``corrupt``), repaired by removing the directory: devpid unpacks the zip
  again on the next request;
- every current doc zip must be a zip devpid would unpack
  (``devpid.upload.docs.check_doc_zip``: names, links, sizes, ratios). One
  that is not is an error (``bad-doczip``) never repaired (the zip is the
  only copy). A doc zip already reported as a stage file (missing, corrupt,
  unreadable) is not reported again, nor are its unpacked docs compared.

Temporary directories devpid leaves beside these while it works
(``.<sha16>.new-*`` being unpacked, ``.<sha16>.old-*`` being removed,
``.<index>.<token>.deleted`` of a deleted stage being removed) are in
progress while anything in them changed within the last minute, else
leftovers (warnings) that ``--repair`` removes. Anything else out of this
shape (files, symbolic links, other names) is ``unexpected``: reported,
never followed, never removed.

Directories are removed only if they are still the ones checked, renamed
aside first (``.<sha16>.old-*``, devpid's own name for docs being removed)
so that a reader sees them whole or not at all.
"""

from __future__ import annotations

import os
import re
import stat
import time
import zipfile
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import attrs

from devpid.files.releases import DOCS
from devpid.files.store import PAGE_PARTIAL_AGE
from devpid.ops.fsck.disk import (
    DirectoryIdentity,
    open_for_reading,
    remove_tree_if_unchanged,
    walk,
)
from devpid.ops.fsck.report import NOT_REPAIRED_PRIVATE, Problem, Report, Severity
from devpid.ops.fsck.stages import DocZip, StageLinks
from devpid.upload.docs import BadDocZip, DocLimits, check_doc_zip

#: The name of an unpacked directory: the first 16 hex digits of its zip's sha256.
_UNPACKED = re.compile(r"^[0-9a-f]{16}\Z")
#: devpid's own temporary names (devpid.upload.docs, devpid.files.releases.detach_stage).
_SWAPPING = re.compile(r"^\.[0-9a-f]{16}\.(?:new|old)-[A-Za-z0-9_]+\Z")
_DELETED = re.compile(r"^\..+\.deleted\Z")
#: Differences listed in one problem's detail; the rest are counted.
MAX_DIFFERENCES = 5
_CHUNK = 1 << 20


@attrs.frozen
class Unpacked:
    """One ``<sha16>`` directory found: where, for which version, as it was seen."""

    path: Path
    #: ``user/index/project/version``.
    version: str
    identity: DirectoryIdentity


@attrs.define
class DocsCheck:
    """One pass over ``+docs/``; ``run()`` adds its problems and counts to ``report``."""

    serverdir: Path
    report: Report
    links: StageLinks
    #: Stage file paths (relative to the serverdir) already reported: not checked again.
    reported: frozenset[str] = frozenset()
    _docs: dict[str, DocZip] = attrs.field(init=False)
    _current: list[Unpacked] = attrs.field(factory=list)
    _stale: list[Unpacked] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self._docs = self.links.doc_zips()

    @property
    def root(self) -> Path:
        return self.serverdir / DOCS

    def run(self) -> None:
        if self.links.problem is not None:
            if os.path.lexists(self.root):
                self._problem(
                    "warning",
                    "unchecked",
                    self.root,
                    "the stage indexes' links cannot be read: unpacked docs not checked",
                )
            return
        self._walk()
        self._check_stale()
        checked = {unpacked.version: unpacked for unpacked in self._current}
        for version, doc in sorted(self._docs.items()):
            self._check_doc(version, doc, checked.get(version))

    # -- reporting -------------------------------------------------------------------

    def _problem(self, severity: Severity, kind: str, path: Path, detail: str) -> Problem:
        return self.report.add(severity, kind, path.relative_to(self.serverdir).as_posix(), detail)

    def _unexpected(self, entry: os.DirEntry[str]) -> None:
        path = Path(entry.path)
        if entry.is_symlink():
            self._problem("warning", "unexpected", path, "a symbolic link: not followed")
        else:
            self._problem("warning", "unexpected", path, "not part of devpid's layout")

    # -- the walk --------------------------------------------------------------------

    def _directories(self, directory: Path) -> Iterator[os.DirEntry[str]]:
        """The subdirectories of ``directory`` by name; anything else is reported."""
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as e:
            self._problem("error", "unreadable", directory, f"cannot list it: {e.strerror}")
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield entry
            else:
                self._unexpected(entry)

    def _walk(self) -> None:
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            self._problem("warning", "unexpected", self.root, "not a directory: not followed")
            return
        for user in self._directories(self.root):
            for index in self._directories(Path(user.path)):
                if _DELETED.match(index.name):
                    self._temporary(index, "a deleted stage's docs")
                    continue
                for project in self._directories(Path(index.path)):
                    for version in self._directories(Path(project.path)):
                        name = f"{user.name}/{index.name}/{project.name}/{version.name}"
                        for unpacked in self._directories(Path(version.path)):
                            self._found(name, unpacked)

    def _found(self, version: str, entry: os.DirEntry[str]) -> None:
        if _SWAPPING.match(entry.name):
            self._temporary(entry, "docs being unpacked or removed")
            return
        if not _UNPACKED.match(entry.name):
            self._unexpected(entry)
            return
        try:
            status = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed meanwhile (replaced docs, devpid's pruning)
            return
        unpacked = Unpacked(Path(entry.path), version, (status.st_dev, status.st_ino))
        if self._stale_because(unpacked, self.links.stages, self._docs) is None:
            self._current.append(unpacked)
        else:
            self._stale.append(unpacked)

    # -- stale and temporary directories ---------------------------------------------

    @staticmethod
    def _stale_because(
        unpacked: Unpacked, stages: frozenset[str], docs: dict[str, DocZip]
    ) -> str | None:
        """Why no current doc zip names ``unpacked`` (None: one does)."""
        index = unpacked.version.rsplit("/", 2)[0]
        if index not in stages:
            return f"{index} is no stage index"
        doc = docs.get(unpacked.version)
        if doc is None:
            return f"{unpacked.version} has no doc zip (or no such version)"
        if doc.sha256 is None or doc.sha256[:16] != unpacked.path.name:
            return f"{unpacked.version}'s doc zip is another one ({(doc.sha256 or '?')[:16]})"
        return None

    def _check_stale(self) -> None:
        """Report the stale directories, deciding on the links read again."""
        stale, self._stale = self._stale, []
        if not stale:
            return
        again = StageLinks.read(self.serverdir)
        if again.problem is not None:
            again = self.links
        docs = again.doc_zips()
        for unpacked in stale:
            why = self._stale_because(unpacked, again.stages, docs)
            if why is None:
                continue  # linked meanwhile: the next run checks it
            problem = self._problem(
                "warning", "stale", unpacked.path, f"unpacked docs no doc zip needs: {why}"
            )
            self.report.attempt_repair(problem, partial(_remove_unpacked, unpacked))

    def _temporary(self, entry: os.DirEntry[str], what: str) -> None:
        path = Path(entry.path)
        newest = _newest_change(path)
        if newest is None:
            return  # gone meanwhile
        if time.time() - newest < PAGE_PARTIAL_AGE:
            self.report.counts.in_progress += 1
            return
        problem = self._problem(
            "warning", "leftover", path, f"{what}, left behind (unchanged for over a minute)"
        )
        try:
            status = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return
        checked = (status.st_dev, status.st_ino)
        self.report.attempt_repair(problem, lambda: remove_tree_if_unchanged(path, checked))

    # -- current doc zips and their unpacked docs ------------------------------------

    def _check_doc(self, version: str, doc: DocZip, unpacked: Unpacked | None) -> None:
        zip_path = self.serverdir / "+files" / doc.entrypath
        if zip_path.relative_to(self.serverdir).as_posix() in self.reported:
            return  # missing, corrupt or unreadable: said already
        try:
            status = os.lstat(zip_path)
        except OSError:
            return  # missing: the stage files' check says so
        if not stat.S_ISREG(status.st_mode):
            return
        members: dict[str, zipfile.ZipInfo] = {}
        if status.st_size:
            try:
                check_doc_zip(zip_path, DocLimits())
                members = _files_of(zip_path)
            except BadDocZip as e:
                self._problem(
                    "error",
                    "bad-doczip",
                    zip_path,
                    f"a doc zip devpid cannot unpack: {e} (of {version}; {NOT_REPAIRED_PRIVATE})",
                )
                return
        if unpacked is None:
            return
        self.report.counts.docs += 1
        differences, unreadable = _compare(unpacked.path, members)
        if unreadable:
            self._problem("error", "unreadable", unpacked.path, unreadable)
            return
        if not differences:
            return
        listed = "; ".join(differences[:MAX_DIFFERENCES])
        if len(differences) > MAX_DIFFERENCES:
            listed += f" (and {len(differences) - MAX_DIFFERENCES} more)"
        problem = self._problem(
            "error",
            "corrupt",
            unpacked.path,
            f"unpacked docs differ from their doc zip {zip_path.name}: {listed}",
        )
        self.report.attempt_repair(problem, partial(_remove_unpacked, unpacked))


def check_docs(serverdir: Path, report: Report, links: StageLinks) -> None:
    """Add to ``report`` what is wrong under ``serverdir``'s ``+docs/``."""
    reported = frozenset(p.path for p in report.problems if p.path.startswith("+files/"))
    DocsCheck(serverdir, report, links, reported).run()


def _remove_unpacked(unpacked: Unpacked) -> bool:
    """Remove unpacked docs as devpid does (renamed aside, then removed): readers see them
    whole or not at all, and devpid unpacks them again on the next request."""
    return remove_tree_if_unchanged(unpacked.path, unpacked.identity, "old")


def _files_of(zip_path: Path) -> dict[str, zipfile.ZipInfo]:
    """The zip's file members by their path (directories left out)."""
    try:
        with zipfile.ZipFile(zip_path) as archive:
            return {info.filename: info for info in archive.infolist() if not info.is_dir()}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise BadDocZip(f"not a valid zip file: {' '.join(str(e).split())}") from None


def _compare(root: Path, members: dict[str, zipfile.ZipInfo]) -> tuple[list[str], str | None]:
    """How ``root`` differs from the zip's ``members``, and why it could not be read (if so)."""
    differences: list[str] = []
    seen: set[str] = set()
    for parts, entry in walk(root):
        name = "/".join(parts)
        if isinstance(entry, OSError):
            return differences, f"cannot list {name or '.'}: {entry.strerror}"
        if entry.is_symlink():
            differences.append(f"{name} is a symbolic link (not followed)")
            continue
        info = members.get(name)
        if info is None:
            differences.append(f"{name} is not in the zip")
            continue
        seen.add(name)
        if not entry.is_file(follow_symlinks=False):
            differences.append(f"{name} is not a regular file")
            continue
        try:
            wrong = _differs(Path(entry.path), info)
        except OSError as e:
            return differences, f"cannot read {name}: {e.strerror}"
        if wrong is not None:
            differences.append(f"{name}: {wrong}")
    for name in sorted(set(members) - seen):
        differences.append(f"{name} is missing")
    return differences, None


def _differs(path: Path, info: zipfile.ZipInfo) -> str | None:
    """How one unpacked file differs from its member: size, then CRC-32 (None: it does not)."""
    fd = open_for_reading(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        size = os.fstat(fd).st_size
        if size != info.file_size:
            return f"{size} bytes, the zip says {info.file_size}"
        crc = 0
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    if crc != info.CRC:
        return f"CRC-32 {crc:08x}, the zip says {info.CRC:08x}"
    return None


def _newest_change(path: Path) -> float | None:
    """The latest modification time in the tree at ``path`` (None when it is gone)."""
    try:
        newest = os.lstat(path).st_mtime
    except OSError:
        return None
    for _parts, entry in walk(path):
        if isinstance(entry, OSError):
            continue
        try:
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
        except OSError:
            continue
    return newest
