"""Which of the mirror cache goes into a bundle: nothing, everything, or a requirements file's
closure.

- ``none``: no mirror page and no mirror file.
- ``all``: every mirror index's cached pages (``+pages/<user>/<index>/*.json``, with the
  project list ``+projects.json``) and cached files (``+files/<user>/<index>/+f/…``, with their
  ``.metadata`` / ``.provenance`` side files).
- a requirements file: for each requirement, the page of its project on each mirror index and
  the cached files of the versions its specifier allows; then, for each cached wheel taken,
  its dependencies (``Requires-Dist`` of its core metadata: the ``.metadata`` side file when
  cached, else ``METADATA`` read from the wheel), recursively, with the extras asked for.
  Markers are read permissively: a dependency is followed unless it is only for extras
  nobody asked for (the air-gapped machines may run another Python or platform). sdists'
  dependencies are not followed (they are known only by building them): warm and export
  the wheels, or list what an sdist needs in the requirements file.

Only what is on disk is selected (the cache is what it is: nothing is fetched). Pages are read
one at a time (a page must be parsed whole); files are only named here, never read, but for
a wheel's metadata.
"""

from __future__ import annotations

import email.parser
import json
import os
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from devpid.files.store import PARTIAL_SUFFIX, PROJECT_LIST, FileStore, UnsafePath
from devpid.simple.model import METADATA, SIDE_FILE_SUFFIXES, ProjectPage
from devpid.tools.bundle.format import mirror_file_path, mirror_page_path

#: A wheel's core metadata larger than this is not read for dependencies.
MAX_METADATA = 4 << 20


@attrs.frozen
class MirrorItem:
    """A page or file of a mirror's cache, as the bundle will hold it."""

    #: Its path in the bundle.
    path: str
    #: Where it is in the serverdir.
    source: Path
    #: The first 16 hex digits of its sha256 when its path says them (a file named by its
    #: sha256), else None.
    sha256_prefix: str | None = None


@attrs.define
class Selection:
    """What ``select`` found: the items, and what the requirements left unmatched."""

    items: list[MirrorItem] = attrs.field(factory=list)
    #: Requirements of the file (as written) that matched no cached file.
    unmatched: list[str] = attrs.field(factory=list)
    #: Lines of the requirements file that are not requirements devpid can read.
    unreadable: list[str] = attrs.field(factory=list)
    #: Projects of the closure (requirements and their dependencies).
    projects: int = 0


def select(serverdir: Path, mirrors: Iterable[str], mode: str) -> Selection:
    """The mirror items for ``mode``: ``none``, ``all`` or a requirements file's path."""
    mirrors = list(mirrors)
    if mode == "none":
        return Selection()
    if mode == "all":
        items = [item for index in mirrors for item in _everything(serverdir, index)]
        return Selection(sorted(items, key=lambda i: i.path))
    return Closure(FileStore(serverdir), mirrors).of(Path(mode))


def _file_item(index: str, relative: str, source: Path) -> MirrorItem:
    """``relative`` is ``+f/<h3>/<h13>/<filename>``."""
    _f, h3, h13, filename = relative.split("/")
    named_by_sha256 = filename not in SIDE_FILE_SUFFIXES and not any(
        filename.endswith(s) for s in SIDE_FILE_SUFFIXES
    )
    prefix = h3 + h13 if named_by_sha256 and len(h13) == 13 else None
    return MirrorItem(mirror_file_path(f"{index}/{relative}"), source, prefix)


def _everything(serverdir: Path, index: str) -> Iterator[MirrorItem]:
    user, _, name = index.partition("/")
    pages = serverdir / "+pages" / user / name
    for entry in sorted(_files_in(pages)):
        if entry.endswith(".json"):
            yield MirrorItem(mirror_page_path(index, entry[: -len(".json")]), pages / entry)
    root = serverdir / "+files" / user / name / "+f"
    for h3 in sorted(_dirs_in(root)):
        for h13 in sorted(_dirs_in(root / h3)):
            for filename in sorted(_files_in(root / h3 / h13)):
                if filename.endswith(PARTIAL_SUFFIX):
                    continue
                yield _file_item(index, f"+f/{h3}/{h13}/{filename}", root / h3 / h13 / filename)


def _files_in(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.is_file(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _dirs_in(directory: Path) -> list[str]:
    try:
        with os.scandir(directory) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except (FileNotFoundError, NotADirectoryError):
        return []


# -- a requirements file's closure ---------------------------------------------------------


def read_requirements(path: Path, seen: set[Path] | None = None) -> Iterator[str]:
    """The requirement lines of a pip requirements file (following ``-r``), as written."""
    seen = set() if seen is None else seen
    resolved = path.resolve()
    if resolved in seen:
        return
    seen.add(resolved)
    with open(path, encoding="utf-8") as f:
        lines = f.read().replace("\\\n", "").splitlines()
    for raw in lines:
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for option in ("-r", "--requirement"):
            if line.startswith(option) and line[len(option) :][:1] in (" ", "=", "\t"):
                included = line[len(option) :].lstrip(" =\t")
                yield from read_requirements(path.parent / included, seen)
                break
        else:
            yield line


@attrs.define
class Closure:
    """The walk from requirements through cached wheels' dependencies."""

    store: FileStore
    mirrors: list[str]
    _items: dict[str, MirrorItem] = attrs.field(factory=dict)
    #: ``(project, specifier, extras)`` already followed.
    _done: set[tuple[str, str, frozenset[str]]] = attrs.field(factory=set)
    _projects: set[str] = attrs.field(factory=set)
    #: Dependencies read from each wheel (by its path), once.
    _requires: dict[Path, list[str]] = attrs.field(factory=dict)

    def of(self, requirements_file: Path) -> Selection:
        selection = Selection()
        pending: list[tuple[Requirement, str | None]] = []
        for line in read_requirements(requirements_file):
            if line.startswith("-"):
                selection.unreadable.append(line)  # an option: --index-url, -e, ...
                continue
            try:
                pending.append((Requirement(line), line))
            except InvalidRequirement:
                selection.unreadable.append(line)
        while pending:
            requirement, written = pending.pop()
            matched, dependencies = self._follow(requirement)
            if written is not None and not matched:
                selection.unmatched.append(written)
            pending.extend((dependency, None) for dependency in dependencies)
        selection.items = sorted(self._items.values(), key=lambda i: i.path)
        selection.unmatched.sort()
        selection.projects = len(self._projects)
        return selection

    def _follow(self, requirement: Requirement) -> tuple[bool, list[Requirement]]:
        """Add the page and the matching cached files of ``requirement``; whether any file
        matched, and the dependencies of the wheels taken."""
        project = canonicalize_name(requirement.name)
        extras = frozenset(canonicalize_name(e) for e in requirement.extras)
        key = (project, str(requirement.specifier), extras)
        if key in self._done:
            return True, []
        self._done.add(key)
        self._projects.add(project)
        matched = False
        dependencies: list[Requirement] = []
        for index in self.mirrors:
            page = self._page(index, project)
            if page is None:
                continue
            for link in page.links:
                version = _version_of(link.filename)
                if version is None or not _allows(requirement.specifier, version):
                    continue
                source = self._file(index, f"+f/{link.relpath}")
                if source is None:
                    continue
                matched = True
                if link.filename.endswith(".whl"):
                    dependencies += _dependencies(self._requirements_of(source), extras)
        return matched, dependencies

    def _page(self, index: str, project: NormalizedName) -> ProjectPage | None:
        try:
            path = self.store.page_path(index, project)
        except UnsafePath:
            return None
        try:
            with open(path, "rb") as f:
                data: Any = json.load(f)
            page = ProjectPage.from_json(data)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None  # unreadable: fsck reports it; the next request fetches it again
        item = MirrorItem(mirror_page_path(index, project), path)
        self._items.setdefault(item.path, item)
        return page

    def _file(self, index: str, relative: str) -> Path | None:
        """Add a cached file (with its side files); its path, or None when not cached."""
        _f, h3, h13, filename = relative.split("/")
        try:
            source = self.store.file_path(index, h3, h13, filename)
        except UnsafePath:
            return None
        if not source.is_file():
            return None
        item = _file_item(index, relative, source)
        self._items.setdefault(item.path, item)
        for suffix in SIDE_FILE_SUFFIXES:
            side = source.with_name(source.name + suffix)
            if side.is_file():
                side_item = _file_item(index, relative + suffix, side)
                self._items.setdefault(side_item.path, side_item)
        return source

    def _requirements_of(self, wheel: Path) -> list[str]:
        if wheel not in self._requires:
            self._requires[wheel] = _requires_dist(wheel)
        return self._requires[wheel]


def _version_of(filename: str) -> Version | None:
    try:
        if filename.endswith(".whl"):
            return parse_wheel_filename(filename)[1]
        return parse_sdist_filename(filename)[1]
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def _allows(specifier: SpecifierSet, version: Version) -> bool:
    # permissive: a pre-release is taken when the specifier allows its release
    return specifier.contains(version, prereleases=True)


def _requires_dist(wheel: Path) -> list[str]:
    """``Requires-Dist`` of a cached wheel: from its ``.metadata`` beside it, else from the
    wheel's ``*.dist-info/METADATA``; none when neither can be read."""
    text: bytes | None = None
    side = wheel.with_name(wheel.name + METADATA)
    try:
        if side.is_file() and side.stat().st_size <= MAX_METADATA:
            text = side.read_bytes()
        else:
            with zipfile.ZipFile(wheel) as archive:
                names = [
                    n
                    for n in archive.namelist()
                    if n.count("/") == 1 and n.endswith(".dist-info/METADATA")
                ]
                if names and archive.getinfo(names[0]).file_size <= MAX_METADATA:
                    text = archive.read(names[0])
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    if text is None:
        return []
    message = email.parser.BytesHeaderParser().parsebytes(text)
    return [str(value) for value in message.get_all("Requires-Dist") or ()]


def _dependencies(lines: Iterable[str], extras: frozenset[str]) -> list[Requirement]:
    found = []
    for line in lines:
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.marker is None or _wanted(requirement.marker, extras):
            found.append(requirement)
    return found


def _wanted(marker: Marker, extras: frozenset[str]) -> bool:
    """Whether a dependency's marker may hold: every comparison but ``extra`` counts as
    true, and ``extra == "x"`` holds when ``x`` was asked for."""
    try:
        return _evaluate(marker._markers, extras)
    except (AttributeError, TypeError, ValueError):
        return True  # a marker shape this reading does not know: take it


def _evaluate(markers: list[Any], extras: frozenset[str]) -> bool:
    # as packaging's own evaluation: "and" binds tighter than "or"
    groups: list[list[bool]] = [[]]
    for marker in markers:
        if isinstance(marker, list):
            groups[-1].append(_evaluate(marker, extras))
        elif isinstance(marker, tuple):
            groups[-1].append(_compare(marker, extras))
        elif marker == "or":
            groups.append([])
    return any(all(group) for group in groups)


def _compare(comparison: tuple[Any, Any, Any], extras: frozenset[str]) -> bool:
    left, op, right = comparison
    names = [side.value for side in (left, right) if type(side).__name__ == "Variable"]
    if names != ["extra"]:
        return True
    value = right.value if type(left).__name__ == "Variable" else left.value
    asked = canonicalize_name(str(value)) in extras
    if op.value == "==":
        return asked
    if op.value == "!=":
        return not asked
    return True


__all__ = ["PROJECT_LIST", "MirrorItem", "Selection", "read_requirements", "select"]
