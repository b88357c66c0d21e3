"""A stage's versions and files in a devpi export, as devpid's version records.

A version record is what devpid's ``Releases`` builds at upload: devpi's metadata keys
(defaults for what is missing), ``yanked`` if set, and ``+links``: each release file
followed by its tox results, then the doc zip. A link names its file by an entrypath made
from the file's own sha256 (``user/index/+f/<h3>/<h13>/<filename>``), computed from the
bytes here (a tox result sits beside its release, under the release's hash, as devpi and
devpid name them): so every file keeps the URL it had on devpi. A hash the export recorded
must agree with the bytes, or the export is damaged. A link keeps
devpi's ``log`` and upload time; its ``serial`` is 0 (it predates everything the target
will write). A wheel gets its ``.metadata`` side file, extracted as an upload does.

devpi's export holds only the newest doc zip of a version, and a tox result names its
release by devpi's entrypath: it is matched by the release's file name, as devpi's own
importer does.
"""

from __future__ import annotations

import calendar
import email.utils
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from devpid.private.metadata import METADATA_KEYS, check_name_and_version, with_defaults
from devpid.private.names import InvalidConfig, normalize_project
from devpid.private.releases import (
    DOCZIP,
    RELEASE,
    TOXRESULT,
    doczip_name,
    entrypath,
    log_entry,
    upload_time,
)
from devpid.simple.model import METADATA
from devpid.tools.bundle.format import stage_path
from devpid.tools.devpi.dataindex import DevpiExportError
from devpid.tools.devpi.placing import BundleFiles, Digested
from devpid.upload.archive import BadArchive, inspect_distribution

#: Keys of devpi's version data that are not metadata and that devpi itself drops on import.
_INTERNAL_PREFIXES = ("+", ":")
_YANKED = "yanked"


def _version_from_filename(filename: str, rel: str) -> str | None:
    """A dump version 1 file's version, from its name (devpi's ``BasenameMeta``)."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        if rel == RELEASE:
            return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None
    return None


def _timestamp(filedesc: Mapping[str, Any], source: Path) -> float:
    """When the file was uploaded: devpi's ``last_modified``, else its first log entry, else
    the exported file's time."""
    last_modified = (filedesc.get("entrymapping") or {}).get("last_modified")
    if isinstance(last_modified, str):
        try:
            return email.utils.parsedate_to_datetime(last_modified).timestamp()
        except (TypeError, ValueError):
            pass
    for entry in filedesc.get("log") or ():
        when = entry.get("when") if isinstance(entry, Mapping) else None
        if isinstance(when, list) and len(when) == 6 and all(isinstance(n, int) for n in when):
            return float(calendar.timegm((*when, 0, 0, 0)))
    return source.stat().st_mtime


def _log(filedesc: Mapping[str, Any], index: str, now: float) -> list[dict[str, Any]]:
    log = [dict(e) for e in filedesc.get("log") or () if isinstance(e, Mapping)]
    if not log:  # what devpi's importer writes for a file without history
        log = [log_entry("upload", "<import>", now, dst=index)]
    return log


@attrs.define
class StageConverter:
    """The versions of one stage, built file by file."""

    index: str
    export_dir: Path
    files: BundleFiles
    warnings: list[str]
    #: ``project -> version -> record value``
    versions: dict[str, dict[str, dict[str, Any]]] = attrs.field(factory=dict)
    #: ``(project, version, release filename) -> devpid entrypath`` of each release taken.
    releases: dict[tuple[str, str, str], str] = attrs.field(factory=dict)
    skipped_versions: set[tuple[str, str]] = attrs.field(factory=set)

    def add_versions(self, projects: Mapping[str, Any]) -> None:
        for name, versions in projects.items():
            if not isinstance(versions, Mapping):
                continue
            project = normalize_project(str(name))
            for version, data in versions.items():
                if isinstance(data, Mapping):
                    self._add_version(project, str(version), data)

    def _add_version(self, project: str, version: str, data: Mapping[str, Any]) -> None:
        try:
            check_name_and_version(project, version)
        except InvalidConfig as e:
            self.warnings.append(f"{self.index}: {project} {version!r} not carried over: {e}")
            self.skipped_versions.add((project, version))
            return
        metadata = {key: data[key] for key in METADATA_KEYS if key in data}
        metadata.setdefault("name", project)
        if not metadata.get("version"):
            metadata["version"] = version
        value = with_defaults(metadata)
        if data.get(_YANKED):
            value[_YANKED] = data[_YANKED]
        unknown = sorted(
            key
            for key in data
            if key not in METADATA_KEYS
            and key != _YANKED
            and not str(key).startswith(_INTERNAL_PREFIXES)
        )
        if unknown:
            self.warnings.append(
                f"{self.index}: {project} {version}: keys not carried over: {', '.join(unknown)}"
            )
        value["+links"] = []
        self.versions.setdefault(project, {})[version] = value

    def _version(self, project: str, version: str) -> dict[str, Any] | None:
        if (project, version) in self.skipped_versions:
            return None
        found = self.versions.get(project, {}).get(version)
        if found is None:  # a file whose version devpi listed no metadata for
            self._add_version(project, version, {"name": project, "version": version})
            found = self.versions.get(project, {}).get(version)
        return found

    def add_files(self, filedescs: list[Mapping[str, Any]]) -> None:
        """Release files first, so tox results find theirs, then tox results, then docs."""
        order = {RELEASE: 0, TOXRESULT: 1, DOCZIP: 2}
        known = [f for f in filedescs if f.get("type") in order]
        for filedesc in filedescs:
            if filedesc.get("type") not in order:
                self.warnings.append(
                    f"{self.index}: {filedesc.get('relpath')}: file type "
                    f"{filedesc.get('type')!r} not carried over"
                )
        for filedesc in sorted(known, key=lambda f: order[f["type"]]):
            self._add_file(filedesc)
        for versions in self.versions.values():
            for value in versions.values():
                value["+links"] = _ordered(value["+links"])

    def _source(self, relpath: object) -> Path:
        """The exported file at ``relpath``, which must be inside the export."""
        parts = PurePosixPath(str(relpath)).parts
        source = self.export_dir.joinpath(*parts)
        if (
            not parts
            or str(relpath).startswith("/")
            or any(p in ("..", ".") for p in parts)
            or not source.resolve().is_relative_to(self.export_dir.resolve())
        ):
            shown = str(relpath)[:200]
            raise DevpiExportError(f"the export names a file outside itself: {shown!r}")
        if source.is_symlink() or not source.is_file():
            raise DevpiExportError(f"{source}: listed in the export but missing (or not a file)")
        return source

    def _add_file(self, filedesc: Mapping[str, Any]) -> None:
        rel = str(filedesc["type"])
        relpath = str(filedesc.get("relpath", ""))
        source = self._source(relpath)
        filename = source.name
        project = normalize_project(str(filedesc.get("projectname") or ""))
        version = filedesc.get("version") or _version_from_filename(filename, rel)
        if not project or not version:
            self.warnings.append(
                f"{self.index}: {relpath}: no project or version: not carried over"
            )
            return
        version = str(version)
        value = self._version(project, version)
        if value is None:
            return
        for_entrypath = None
        if rel == TOXRESULT:
            release_name = PurePosixPath(str(filedesc.get("for_entrypath", ""))).name
            for_entrypath = self.releases.get((project, version, release_name))
            if for_entrypath is None:
                self.warnings.append(
                    f"{self.index}: tox result {relpath}: its release {release_name} is not "
                    "carried over: nor is it"
                )
                return
        elif rel == DOCZIP:
            filename = doczip_name(project, version)
        hashes = dict((filedesc.get("entrymapping") or {}).get("hashes") or {})
        taken = self.files.take(source, hashes)
        _check_hashes(relpath, hashes, taken)
        sha256 = taken.digests["sha256"]
        path = entrypath(self.index, sha256, filename)
        if for_entrypath is not None:  # beside its release, as devpi and devpid name them
            path = f"{for_entrypath.rpartition('/')[0]}/{filename}"
        if stage_path(path) in self.files.entries:
            self.files.discard(taken)
            self.warnings.append(f"{self.index}: {relpath}: the same file twice: kept once")
            return
        if rel == DOCZIP:
            self._drop_older_doczip(value, relpath)
        self.files.place(taken, stage_path(path))
        now = _timestamp(filedesc, source)
        link: dict[str, Any] = {
            "rel": rel,
            "entrypath": path,
            "hashes": {"sha256": sha256},
            "size": taken.size,
            "upload_time": upload_time(now),
            "last_modified": now,
            "log": _log(filedesc, self.index, now),
            "serial": 0,
        }
        if rel == RELEASE:
            self.releases[(project, version, filename)] = path
            core = self._core_metadata(path, filename)
            if core is not None:
                link["core_metadata"] = {"sha256": core}
        if for_entrypath is not None:
            link["for_entrypath"] = for_entrypath
        value["+links"].append(link)

    def _drop_older_doczip(self, value: dict[str, Any], relpath: str) -> None:
        older = [link for link in value["+links"] if link["rel"] == DOCZIP]
        for link in older:
            self.warnings.append(f"{self.index}: {relpath}: a second doc zip: the last one kept")
            value["+links"].remove(link)
            self.files.unplace(stage_path(link["entrypath"]))

    def _core_metadata(self, path: str, filename: str) -> str | None:
        """A wheel's ``METADATA`` as its ``.metadata`` side file (PEP 658), as at upload."""
        if not filename.lower().endswith(".whl"):
            return None
        try:
            info = inspect_distribution(self.files.root / stage_path(path), filename)
        except BadArchive as e:
            self.warnings.append(f"{self.index}: {filename}: no .metadata served: {e}")
            return None
        if info.core_metadata is None:
            return None
        entry = self.files.write(stage_path(path) + METADATA, info.core_metadata)
        return entry.sha256

    def records(self) -> dict[str, dict[str, Any]]:
        """``user/index/project/version -> value``."""
        return {
            f"{self.index}/{project}/{version}": value
            for project, versions in self.versions.items()
            for version, value in versions.items()
        }


def _check_hashes(relpath: str, recorded: Mapping[str, Any], taken: Digested) -> None:
    for algorithm, expected in recorded.items():
        actual = taken.digests.get(algorithm)
        if actual is not None and actual != str(expected).lower():
            raise DevpiExportError(
                f"{relpath}: its {algorithm} is {actual}, the export says {expected}: "
                "the export is damaged"
            )


def _ordered(links: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each release followed by its tox results, then the doc zip (devpi's push order)."""
    releases = [link for link in links if link["rel"] == RELEASE]
    ordered: list[dict[str, Any]] = []
    for release in releases:
        ordered.append(release)
        ordered += [
            link
            for link in links
            if link["rel"] == TOXRESULT and link.get("for_entrypath") == release["entrypath"]
        ]
    ordered += [link for link in links if link["rel"] == DOCZIP]
    return ordered
