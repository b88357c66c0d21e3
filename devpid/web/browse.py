"""What the browsing pages show, gathered from the private data and the mirrors.

Plain functions and frozen values, no HTTP: ``devpid.web.app`` asks for them and
hands them to the templates. A stage's versions come from the private data; a
mirror's from its cached simple page (never fetched for a page but the
project's own, exactly as an installer would fetch it).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version

from devpid.files.store import FileStore, UnsafePath
from devpid.routes.projects import version_of as _version_of
from devpid.simple.model import METADATA, ProjectPage
from devpid.web.format import log_seconds

#: The latest uploads an index page lists.
LATEST_UPLOADS = 12


@functools.lru_cache(maxsize=65536)
def version_of(filename: str) -> str | None:
    """The version in a file name (remembered: a big project's page asks for thousands)."""
    return _version_of(filename)


def version_key(version: str) -> tuple[int, Any]:
    """Newest first when sorted in reverse; versions packaging rejects sort last."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def newest_first(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_key, reverse=True)


def python_tag(filename: str) -> str:
    """A wheel's Python tags (``py3``, ``cp312``), ``source`` for an sdist."""
    if filename.endswith(".whl"):
        try:
            tags = parse_wheel_filename(filename)[3]
        except InvalidWheelFilename:
            return "?"
        return ".".join(sorted({tag.interpreter for tag in tags}))
    try:
        parse_sdist_filename(filename)
    except InvalidSdistFilename:
        return "?"
    return "source"


@attrs.frozen
class IndexRow:
    name: str
    user: str
    type: str
    bases: tuple[str, ...]
    volatile: bool
    title: str


def index_rows(indexes: Mapping[str, Mapping[str, Any]]) -> list[IndexRow]:
    rows = []
    for name, config in sorted(indexes.items()):
        user = name.partition("/")[0]
        rows.append(
            IndexRow(
                name=name,
                user=user,
                type=str(config.get("type", "stage")),
                bases=tuple(config.get("bases") or ()),
                volatile=bool(config.get("volatile", True)),
                title=str(config.get("title") or ""),
            )
        )
    return rows


@attrs.frozen
class FileRow:
    filename: str
    url: str
    size: int | None
    sha256: str
    uploaded: float | None
    python: str
    #: For a mirror's file: whether it is in the cache (else only listed upstream).
    cached: bool = True
    yanked: bool = False
    requires_python: str | None = None


@attrs.frozen
class VersionRow:
    version: str
    index: str
    yanked: bool
    files: int
    summary: str = ""


def _size(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return path.stat().st_size
    except OSError:
        return None


def stage_files(value: Mapping[str, Any], path_of: Any, rel: str = "releasefile") -> list[FileRow]:
    """A stage version's files of ``rel`` with their sizes from disk."""
    rows = []
    for link in value.get("+links") or ():
        if link.get("rel") != rel:
            continue
        entrypath = str(link.get("entrypath", ""))
        filename = entrypath.rpartition("/")[2]
        log = list(link.get("log") or ())
        uploaded = log_seconds(log[0].get("when")) if log else None
        try:
            path = path_of(entrypath)
        except (UnsafePath, ValueError):
            path = None
        rows.append(
            FileRow(
                filename=filename,
                url=f"/{entrypath}",
                size=_size(path),
                sha256=str((link.get("hashes") or {}).get("sha256", "")),
                uploaded=uploaded or None,
                python=python_tag(filename),
            )
        )
    return rows


def mirror_files(
    page: ProjectPage, mirror: str, files: FileStore, version: str | None
) -> list[FileRow]:
    """A mirror page's files (of one version, or all), each cached or only listed."""
    rows = []
    links = sorted(page.links, key=lambda link: version_key(version_of(link.filename) or ""))
    for link in reversed(links):
        if version is not None and version_of(link.filename) != version:
            continue
        path = files.committed_file(link.index or mirror, link.storage_hash, link.filename)
        rows.append(
            FileRow(
                filename=link.filename,
                url=f"/{mirror}/{link.url_path}",
                size=_size(path),
                sha256=link.sha256 or "",
                uploaded=None,
                python=python_tag(link.filename),
                cached=path is not None,
                yanked=link.yanked is not None and link.yanked is not False,
                requires_python=link.requires_python,
            )
        )
    return rows


def cached_metadata(
    page: ProjectPage, mirror: str, files: FileStore, version: str
) -> dict[str, Any]:
    """What a cached ``.metadata`` file (PEP 658) of one of the version's wheels says."""
    for link in page.links:
        if version_of(link.filename) != version or not link.filename.endswith(".whl"):
            continue
        path = files.committed_file(link.index or mirror, link.storage_hash, link.filename)
        if path is None:
            continue
        sidecar = path.with_name(path.name + METADATA)
        try:
            raw = sidecar.read_bytes()[: 4 * 1024 * 1024]
        except OSError:
            continue
        message = HeaderParser().parsestr(raw.decode("utf-8", "replace"))
        body = message.get_payload()
        return {
            "summary": message.get("Summary", ""),
            "description": message.get("Description") or (body if isinstance(body, str) else ""),
            "description_content_type": message.get("Description-Content-Type"),
            "requires_python": message.get("Requires-Python", ""),
            "home_page": message.get("Home-page", ""),
            "license": message.get("License", ""),
            "classifiers": message.get_all("Classifier") or [],
        }
    return {}


@attrs.frozen
class Upload:
    when: float
    project: str
    version: str
    filename: str


def latest_uploads(
    versions_of: Mapping[str, Mapping[str, Mapping[str, Any]]], count: int = LATEST_UPLOADS
) -> list[Upload]:
    """The index's newest release files, by upload time."""
    uploads = []
    for project, versions in versions_of.items():
        for version, value in versions.items():
            for link in value.get("+links") or ():
                if link.get("rel") != "releasefile":
                    continue
                log = list(link.get("log") or ())
                when = log_seconds(log[0].get("when")) if log else 0.0
                filename = str(link.get("entrypath", "")).rpartition("/")[2]
                uploads.append(Upload(when, project, version, filename))
    uploads.sort(key=lambda upload: upload.when, reverse=True)
    return uploads[:count]


def as_list(value: object) -> list[str]:
    """A metadata value shown as a list (devpi keeps some as lists, some as strings)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, Sequence):
        return [str(item) for item in value if item not in (None, "")]
    return [str(value)]
