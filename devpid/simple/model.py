"""The simple-API model: projects, their files and status, and the names devpid accepts.

A ``ProjectPage`` keeps what the upstream said about each file (hashes, size,
requires-python, yanked, core metadata, upload time) and about the project
(versions, status), so rendering can pass all of it through with devpid's own
URLs in place of the upstream's.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)

JSON_V1 = "application/vnd.pypi.simple.v1+json"
HTML_V1 = "application/vnd.pypi.simple.v1+html"
TEXT_HTML = "text/html"

#: PEP 508 project names (before normalization).
PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])\Z", re.IGNORECASE)
MAX_NAME_LENGTH = 200
#: Distribution file names devpid will store: no separators, no leading dot.
FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!~-]{0,254}\Z")
HEX = re.compile(r"^[0-9a-f]+\Z")
#: What devpid serves beside a distribution file, at its URL + the suffix:
#: its core metadata (PEP 658/714) and its provenance (PEP 740).
METADATA = ".metadata"
PROVENANCE = ".provenance"
SIDE_FILE_SUFFIXES = (METADATA, PROVENANCE)


_NOT_IN_EXTERNAL_DIR = re.compile(r"[^a-zA-Z0-9_.-]")


def external_dir(url: str) -> str:
    """devpi's ``+e`` directory of a file URL without a hash: ``http://host:80/pkg/x.zip``
    gives ``http_host_80_pkg``."""
    parts = urlsplit(url)
    directory = f"{parts.scheme}/{parts.netloc}{parts.path.rpartition('/')[0]}"
    joined = "_".join(part for part in directory.split("/") if part)
    return unquote(_NOT_IN_EXTERNAL_DIR.sub("_", joined))


def is_valid_project_name(name: str) -> bool:
    return len(name) <= MAX_NAME_LENGTH and PROJECT_NAME.match(name) is not None


def project_of_filename(filename: str) -> str | None:
    """The normalized project a distribution file (or a side file of it) belongs to."""
    name = dist_filename_of(filename)
    try:
        if name.endswith(".whl"):
            project = str(parse_wheel_filename(name)[0])
        else:
            project = str(parse_sdist_filename(name)[0])
    except (InvalidWheelFilename, InvalidSdistFilename):
        # Older formats (eggs, zips with odd versions): the part before the first dash.
        project = re.split(r"-\d", name, maxsplit=1)[0]
        if project == name:
            return None
    return canonicalize_name(project) if is_valid_project_name(project) else None


def dist_filename_of(filename: str) -> str:
    """The distribution file a side file (``.metadata``, ``.provenance``) is of; else itself."""
    for suffix in SIDE_FILE_SUFFIXES:
        if filename.endswith(suffix):
            return filename.removesuffix(suffix)
    return filename


@attrs.frozen
class Link:
    """One distribution file as the upstream described it."""

    filename: str
    url: str
    hashes: dict[str, str] = attrs.field(factory=dict)
    size: int | None = None
    requires_python: str | None = None
    #: False, or True / a reason string when yanked (PEP 592).
    yanked: bool | str = False
    #: False, True (no hash given) or the hashes of ``<file>.metadata`` (PEP 658/714).
    core_metadata: bool | dict[str, str] = False
    upload_time: str | None = None
    #: The upstream's absolute URL of the file's provenance (PEP 740), if it has one.
    provenance: str | None = None
    #: The index the file is served from, when not the page's own (a stage's merged page).
    index: str | None = None

    @property
    def sha256(self) -> str | None:
        return self.hashes.get("sha256")

    @property
    def storage_hash(self) -> str:
        """The hash that names the file's directory: its sha256, else the URL's."""
        return self.sha256 or hashlib.sha256(self.url.encode("utf-8")).hexdigest()

    @property
    def relpath(self) -> str:
        """``<h3>/<h13>/<filename>``, devpi's layout under ``+f/``."""
        h = self.storage_hash
        return f"{h[:3]}/{h[3:16]}/{self.filename}"

    @property
    def url_path(self) -> str:
        """Its path under its index's URL, as devpi names it: ``+f/<relpath>`` for a file
        with a sha256, ``+e/<the upstream's directory>/<filename>`` for one without (it is
        stored under ``+f/`` by its URL's hash all the same)."""
        if self.sha256:
            return f"+f/{self.relpath}"
        return f"+e/{external_dir(self.url)}/{self.filename}"

    @property
    def metadata_sha256(self) -> str | None:
        if isinstance(self.core_metadata, dict):
            return self.core_metadata.get("sha256")
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "filename": self.filename,
            "url": self.url,
            "hashes": self.hashes,
            "size": self.size,
            "requires-python": self.requires_python,
            "yanked": self.yanked,
            "core-metadata": self.core_metadata,
            "upload-time": self.upload_time,
            "provenance": self.provenance,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Link:
        return cls(
            filename=data["filename"],
            url=data["url"],
            hashes=dict(data.get("hashes") or {}),
            size=data.get("size"),
            requires_python=data.get("requires-python"),
            yanked=data.get("yanked", False),
            core_metadata=data.get("core-metadata", False),
            upload_time=data.get("upload-time"),
            provenance=data.get("provenance"),
        )


@attrs.frozen
class ProjectStatus:
    """PEP 792 project status markers."""

    status: str
    reason: str | None = None


@attrs.frozen
class ProjectPage:
    name: str
    links: tuple[Link, ...]
    versions: tuple[str, ...] | None = None
    status: ProjectStatus | None = None
    #: ``X-PyPI-Last-Serial`` of the response the page came from, when given.
    serial: int | None = None

    def link_for(self, filename: str, storage_hash_prefix: str) -> Link | None:
        for link in self.links:
            if link.filename == filename and link.storage_hash.startswith(storage_hash_prefix):
                return link
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "links": [link.to_json() for link in self.links],
            "versions": list(self.versions) if self.versions is not None else None,
            "status": attrs.asdict(self.status) if self.status else None,
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProjectPage:
        status = data.get("status")
        versions = data.get("versions")
        return cls(
            name=data["name"],
            links=tuple(Link.from_json(item) for item in data["links"]),
            versions=tuple(versions) if versions is not None else None,
            status=ProjectStatus(**status) if status else None,
            serial=data.get("serial"),
        )
