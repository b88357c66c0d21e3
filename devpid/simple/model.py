"""The simple-API model: projects, their files and status, and the names devpid accepts.

A ``ProjectPage`` keeps what the upstream said about each file (hashes, size,
requires-python, yanked, core metadata, upload time) and about the project
(versions, status), so rendering can pass all of it through with devpid's own
URLs in place of the upstream's.
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, overload
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


#: Links per compressed block of a ``LinkTable``: large enough for zlib to find
#: the repetitions (a file's name in its URL, the URLs' common prefix), small
#: enough that finding one link inflates a few tens of KB.
BLOCK_LINKS = 256
#: zlib level of the blocks: 1 packs them nearly as small as 6, several times faster.
BLOCK_LEVEL = 1
#: Pages with fewer links keep them as ``Link`` objects: packing saves little there,
#: and every look at a link would decode it.
PACK_MIN_LINKS = 1024
_FIELD = "\x1f"
_RECORD = "\x1e"
#: Starts a record written as JSON: a link whose values the plain form cannot carry.
_AS_JSON = "\x1d"
_FIELDS = 10
_SEPARATORS = re.compile("[\x1d\x1e\x1f]")


def _optional(value: str | None) -> str:
    return "" if value is None else "=" + value


def _hashes_text(hashes: object) -> str | None:
    """``name=hex,name=hex``; None when the dict holds what that form cannot carry."""
    if not isinstance(hashes, dict):
        return None
    parts = []
    for name, value in hashes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return None
        if "," in name or "=" in name or "," in value:
            return None
        parts.append(f"{name}={value}")
    return ",".join(parts)


def _hashes_of(text: str) -> dict[str, str]:
    if not text:
        return {}
    return dict(item.split("=", 1) for item in text.split(","))


def _encode(link: Link) -> str:
    """One link as one line of text: ten fields, or JSON for what they cannot carry."""
    hashes = _hashes_text(link.hashes)
    size = link.size
    yanked = link.yanked
    core = link.core_metadata
    core_text = "" if core is False else "!" if core is True else _hashes_text(core)
    if (
        hashes is not None
        and core_text is not None
        and (size is None or type(size) is int)
        and (yanked is False or yanked is True or isinstance(yanked, str))
    ):
        record = _FIELD.join(
            (
                link.filename,
                link.url,
                hashes,
                "" if size is None else str(size),
                _optional(link.requires_python),
                "" if yanked is False else "!" if yanked is True else "=" + yanked,
                core_text if core is False or core is True else "=" + core_text,
                _optional(link.upload_time),
                _optional(link.provenance),
                _optional(link.index),
            )
        )
        fits = record.count(_FIELD) == _FIELDS - 1
        if fits and _RECORD not in record and _AS_JSON not in record:
            return record
    values = [
        link.filename,
        link.url,
        link.hashes,
        link.size,
        link.requires_python,
        link.yanked,
        link.core_metadata,
        link.upload_time,
        link.provenance,
        link.index,
    ]
    return _AS_JSON + json.dumps(values, separators=(",", ":"))


def _flag(text: str) -> bool | str:
    return False if not text else True if text == "!" else text[1:]


def _decode(record: str) -> Link:
    if record[:1] == _AS_JSON:
        v = json.loads(record[1:])
        return Link(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9])
    name, url, hashes, size, python, yanked, core, upload, provenance, index = record.split(_FIELD)
    metadata: bool | dict[str, str] = (
        core == "!" if not core or core == "!" else _hashes_of(core[1:])
    )
    return Link(
        name,
        url,
        _hashes_of(hashes),
        int(size) if size else None,
        python[1:] if python else None,
        _flag(yanked),
        metadata,
        upload[1:] if upload else None,
        provenance[1:] if provenance else None,
        index[1:] if index else None,
    )


def _inflate(block: bytes) -> list[str]:
    return zlib.decompress(block).decode("utf-8").split(_RECORD)


class LinkTable(Sequence[Link]):
    """A page's links, packed: what lets a page of 200,000 files stay tens of MB.

    As ``Link`` objects (each with a dict of hashes, ten strings and its own
    header) such a page is a few hundred MB. Here each link is a line of text
    and every ``BLOCK_LINKS`` lines are one zlib-compressed ``bytes``: about a
    third of the text's size, and 2 objects per block instead of ~15 per link.
    A ``Link`` is made when one is looked at (iteration inflates one block at
    a time), so the links are never all objects at once.

    Finding a link by file name (a file request) looks at an array of the
    names' hashes, then inflates only the blocks that may hold it.

    A page of fewer than ``PACK_MIN_LINKS`` links keeps them as they are.
    """

    __slots__ = ("_blocks", "_links", "_names", "_size", "has_provenance")

    def __init__(
        self,
        blocks: tuple[bytes, ...],
        names: array[int],
        size: int,
        has_provenance: bool,
        links: tuple[Link, ...] | None = None,
    ) -> None:
        self._blocks = blocks
        #: The links as objects, when they are few (and ``_blocks`` is empty).
        self._links = links
        #: ``hash()`` of every link's file name, in order (this process's hashes).
        self._names = names
        self._size = size
        #: Whether a link has a provenance URL (the page's API version depends on it).
        self.has_provenance = has_provenance

    @classmethod
    def of(cls, links: Iterable[Link]) -> LinkTable:
        """``links`` packed (a table as it is: it never changes)."""
        if isinstance(links, LinkTable):
            return links
        builder = LinkTableBuilder()
        for link in links:
            builder.append(link)
        return builder.build()

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Link]:
        if self._links is not None:
            yield from self._links
            return
        for block in self._blocks:
            for record in _inflate(block):
                yield _decode(record)

    def records(self) -> Iterator[str]:
        """The links' lines of text, in order (what a merge copies without decoding)."""
        if self._links is not None:
            yield from map(_encode, self._links)
            return
        for block in self._blocks:
            yield from _inflate(block)

    @overload
    def __getitem__(self, position: int) -> Link: ...
    @overload
    def __getitem__(self, position: slice) -> tuple[Link, ...]: ...
    def __getitem__(self, position: int | slice) -> Link | tuple[Link, ...]:
        if isinstance(position, slice):
            return tuple(self[i] for i in range(*position.indices(self._size)))
        if position < 0:
            position += self._size
        if not 0 <= position < self._size:
            raise IndexError("link index out of range")
        if self._links is not None:
            return self._links[position]
        block, offset = divmod(position, BLOCK_LINKS)
        return _decode(_inflate(self._blocks[block])[offset])

    def named(self, filename: str) -> Iterator[Link]:
        """The links of ``filename`` (usually one), in order."""
        if self._links is not None:
            yield from (link for link in self._links if link.filename == filename)
            return
        key = hash(filename)
        names = self._names
        position = 0
        inflated: tuple[int, list[str]] | None = None
        while True:
            try:
                position = names.index(key, position)
            except ValueError:
                return
            block, offset = divmod(position, BLOCK_LINKS)
            if inflated is None or inflated[0] != block:
                inflated = (block, _inflate(self._blocks[block]))
            link = _decode(inflated[1][offset])
            if link.filename == filename:
                yield link
            position += 1

    def name_hashes(self) -> array[int]:
        """``hash()`` of each link's file name, in order (a merge's first look for
        repeated names, without a set of 200,000 strings)."""
        return self._names

    def first_position(self, filename: str) -> int | None:
        """Where the first link of ``filename`` is, if the page has one."""
        key = hash(filename)
        position = 0
        while True:
            try:
                position = self._names.index(key, position)
            except ValueError:
                return None
            if self[position].filename == filename:
                return position
            position += 1

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, Link):
            return False
        return any(link == value for link in self.named(value.filename))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LinkTable) and (self._links is None) == (other._links is None):
            return self._size == other._size and all(
                a == b for a, b in zip(self.records(), other.records(), strict=True)
            )
        if isinstance(other, tuple | list | LinkTable):
            return len(other) == self._size and all(
                a == b for a, b in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<LinkTable of {self._size} links in {len(self._blocks)} blocks>"

    @property
    def packed_bytes(self) -> int:
        """The compressed blocks' bytes (what the links take, less the objects' headers)."""
        return sum(len(block) for block in self._blocks) + self._names.itemsize * len(self._names)


class LinkTableBuilder:
    """Packs links into a ``LinkTable`` as they come (a parser's, a merge's)."""

    def __init__(self) -> None:
        #: The links as objects, until there are ``PACK_MIN_LINKS``; then None.
        self._links: list[Link] | None = []
        self._blocks: list[bytes] = []
        self._pending: list[str] = []
        self._names: array[int] = array("q")
        self._provenance = False

    def __len__(self) -> int:
        return len(self._names)

    def append(self, link: Link) -> None:
        if self._links is None:
            self._pack(_encode(link), link.filename, link.provenance is not None)
            return
        self._links.append(link)
        self._names.append(hash(link.filename))
        self._provenance = self._provenance or link.provenance is not None
        if len(self._links) >= PACK_MIN_LINKS:
            links, self._links = self._links, None
            del self._names[:]
            for each in links:
                self._pack(_encode(each), each.filename, each.provenance is not None)

    def append_record(self, record: str, filename: str, provenance: bool) -> None:
        """A line of ``LinkTable.records()`` as it is, with its file name and whether the
        link has a provenance."""
        if self._links is not None:
            self.append(_decode(record))
        else:
            self._pack(record, filename, provenance)

    def _pack(self, record: str, filename: str, provenance: bool) -> None:
        self._pending.append(record)
        self._names.append(hash(filename))
        self._provenance = self._provenance or provenance
        if len(self._pending) == BLOCK_LINKS:
            self._seal()

    def _seal(self) -> None:
        text = _RECORD.join(self._pending).encode("utf-8")
        self._blocks.append(zlib.compress(text, BLOCK_LEVEL))
        self._pending = []

    def build(self) -> LinkTable:
        if self._links is not None:
            links = tuple(self._links)
            return LinkTable((), self._names, len(links), self._provenance, links)
        if self._pending:
            self._seal()
        return LinkTable(tuple(self._blocks), self._names, len(self._names), self._provenance)


def record_filename(record: str) -> str:
    """The file name of a ``LinkTable.records()`` line, without decoding the rest."""
    if record[:1] == _AS_JSON:
        return str(json.loads(record[1:])[0])
    return record.partition(_FIELD)[0]


def record_with_index(record: str, index: str) -> str:
    """A ``LinkTable.records()`` line of the same link served from ``index``."""
    if record[:1] != _AS_JSON and not _SEPARATORS.search(index):
        return record[: record.rindex(_FIELD) + 1] + "=" + index
    return _encode(attrs.evolve(_decode(record), index=index))


def record_has_provenance(record: str) -> bool:
    if record[:1] == _AS_JSON:
        return json.loads(record[1:])[8] is not None
    return bool(record.split(_FIELD)[8])


def _table_of(links: Iterable[Link]) -> LinkTable:
    return LinkTable.of(links)


@attrs.frozen
class ProjectStatus:
    """PEP 792 project status markers."""

    status: str
    reason: str | None = None


@attrs.frozen
class ProjectPage:
    """A project's page: its links packed in a ``LinkTable`` (any iterable of links
    given is packed)."""

    name: str
    links: LinkTable = attrs.field(converter=_table_of)
    versions: tuple[str, ...] | None = None
    status: ProjectStatus | None = None
    #: ``X-PyPI-Last-Serial`` of the response the page came from, when given.
    serial: int | None = None

    def link_for(self, filename: str, storage_hash_prefix: str) -> Link | None:
        for link in self.links.named(filename):
            if link.storage_hash.startswith(storage_hash_prefix):
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

    def json_chunks(self) -> Iterator[str]:
        """``to_json()``'s document as JSON text, in pieces: the links one by one, never
        all as dicts at once (the page file of a page of 200,000 files)."""
        head = {
            "name": self.name,
            "versions": list(self.versions) if self.versions is not None else None,
            "status": attrs.asdict(self.status) if self.status else None,
            "serial": self.serial,
        }
        yield json.dumps(head, separators=(",", ":"))[:-1] + ',"links":['
        separator = ""
        for link in self.links:
            yield separator + json.dumps(link.to_json(), separators=(",", ":"))
            separator = ","
        yield "]}"

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
