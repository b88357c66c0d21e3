"""The bundle format, version 1: what a bundle holds and how each part is named.

A bundle is a tree of files (a directory, or an uncompressed tar of the same tree):

- ``records.jsonl``: the private records (users, indexes, tokens, versions, tombstones),
  one ``{"kind", "name", "value"}`` per line;
- ``files/<user>/<index>/+f/<h3>/<h13>/<name>``: a stage's files as their links name them,
  and their side files;
- ``mirror/pages/<user>/<index>/<project>.json`` and
  ``mirror/files/<user>/<index>/+f/<h3>/<h13>/<name>``: a mirror's parsed pages and cached
  files, byte for byte as in the serverdir;
- ``MANIFEST.jsonl``: every file above with its size and sha256, sorted by path;
- ``devpid-bundle.json``: the header, written last, with the manifest's sha256.

So the header vouches for the manifest and the manifest for every byte. This module
knows the names and checks them; it reads and writes nothing but what it is given.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs

FORMAT = "devpid-bundle"
VERSION = 1
HEADER = "devpid-bundle.json"
MANIFEST = "MANIFEST.jsonl"
RECORDS = "records.jsonl"
STAGE_FILES = "files/"
MIRROR_PAGES = "mirror/pages/"
MIRROR_FILES = "mirror/files/"
#: The order of the kinds in ``records.jsonl``: what a record refers to comes first.
RECORD_KINDS = ("user", "index", "token", "version", "tombstone")
#: How much of a file is read at a time, here and by every reader and writer of bundles.
CHUNK = 1 << 20

_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_HEX = re.compile(r"^[0-9a-f]+\Z")
_PROJECT = re.compile(r"^[a-z0-9][a-z0-9-]{0,199}\Z")
_FILENAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+!-]{0,254}\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")


class BundleError(Exception):
    """The bundle cannot be read as one; the message is one line."""


def path_problem(path: str) -> str | None:
    """Why ``path`` may not be in a bundle, or None when it may.

    Only the parts listed above, each in its own shape: nothing absolute, no ``..``, no
    empty segment, backslash or NUL, and file and page names as devpid names them.
    """
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return "not a relative POSIX path"
    segments = path.split("/")
    if any(s in ("", ".", "..") for s in segments):
        return "has an empty, '.' or '..' segment"
    if path in (RECORDS, MANIFEST, HEADER):
        return None
    if path.startswith((STAGE_FILES, MIRROR_FILES)):
        rest = segments[1:] if path.startswith(STAGE_FILES) else segments[2:]
        return _file_path_problem(rest)
    if path.startswith(MIRROR_PAGES):
        rest = segments[2:]
        if len(rest) != 3 or not _PART.match(rest[0]) or not _PART.match(rest[1]):
            return "not mirror/pages/<user>/<index>/<project>.json"
        name = rest[2]
        if not name.endswith(".json") or not (
            _PROJECT.match(name[: -len(".json")]) or name == "+projects.json"
        ):
            return "not a page name"
        return None
    return "not part of a bundle"


def _file_path_problem(rest: list[str]) -> str | None:
    if len(rest) != 6 or rest[2] != "+f":
        return "not <user>/<index>/+f/<h3>/<h13>/<filename>"
    user, index, _f, h3, h13, filename = rest
    if not _PART.match(user) or not _PART.match(index):
        return "not a user or index name"
    if len(h3) != 3 or not 1 <= len(h13) <= 13 or not _HEX.match(h3 + h13):
        return "file hashes in the path must be 3 and 13 lowercase hex digits"
    if not _FILENAME.match(filename):
        return "not a file name"
    return None


def stage_path(entrypath: str) -> str:
    """Where a stage's file (its link's ``entrypath``) is in a bundle."""
    return STAGE_FILES + entrypath


def mirror_file_path(relative: str) -> str:
    """Where a mirror's file (its path under ``+files/``) is in a bundle."""
    return MIRROR_FILES + relative


def mirror_page_path(index: str, project: str) -> str:
    """Where a mirror's cached page is in a bundle."""
    return f"{MIRROR_PAGES}{index}/{project}.json"


@attrs.frozen
class ManifestEntry:
    """One file of a bundle: where, how big, its sha256."""

    path: str
    size: int
    sha256: str

    def line(self) -> bytes:
        return (
            json.dumps({"path": self.path, "size": self.size, "sha256": self.sha256}) + "\n"
        ).encode()

    @classmethod
    def from_line(cls, line: bytes, number: int) -> ManifestEntry:
        try:
            data = json.loads(line)
            path, size, sha256 = data["path"], data["size"], data["sha256"]
        except (ValueError, KeyError, TypeError):
            raise BundleError(f"{MANIFEST} line {number}: not a manifest entry") from None
        if not isinstance(path, str) or not isinstance(size, int) or size < 0:
            raise BundleError(f"{MANIFEST} line {number}: bad path or size")
        if not isinstance(sha256, str) or not _SHA256.match(sha256):
            raise BundleError(f"{MANIFEST} line {number}: bad sha256")
        return cls(path, size, sha256)


def manifest_bytes(entries: list[ManifestEntry]) -> bytes:
    """The manifest of ``entries``, sorted by path."""
    return b"".join(e.line() for e in sorted(entries, key=lambda e: e.path))


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    entries = [
        ManifestEntry.from_line(line, number)
        for number, line in enumerate(data.splitlines(), 1)
        if line.strip()
    ]
    seen: set[str] = set()
    for entry in entries:
        if entry.path in seen:
            raise BundleError(f"{MANIFEST} lists {entry.path} twice")
        seen.add(entry.path)
    return entries


@attrs.frozen
class Header:
    """``devpid-bundle.json``: what wrote the bundle, from which snapshot, and the manifest's
    sha256."""

    created: str
    devpid: str
    source: Mapping[str, Any]
    mirror: str
    counts: Mapping[str, int]
    manifest_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "created": self.created,
            "devpid": self.devpid,
            "source": dict(self.source),
            "mirror": self.mirror,
            "counts": dict(self.counts),
            "manifest_sha256": self.manifest_sha256,
        }

    def encoded(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        try:
            raw = json.loads(data)
        except ValueError:
            raise BundleError(f"{HEADER} is not JSON") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise BundleError(f"{HEADER} does not say format {FORMAT!r}")
        if raw.get("version") != VERSION:
            raise BundleError(
                f"bundle format version {raw.get('version')!r} is not one this devpid reads "
                f"(it reads {VERSION})"
            )
        try:
            header = cls(
                created=str(raw["created"]),
                devpid=str(raw["devpid"]),
                source=dict(raw["source"]),
                mirror=str(raw["mirror"]),
                counts={str(k): int(v) for k, v in dict(raw["counts"]).items()},
                manifest_sha256=str(raw["manifest_sha256"]),
            )
        except (KeyError, TypeError, ValueError):
            raise BundleError(f"{HEADER} lacks a field or has a bad one") from None
        if not _SHA256.match(header.manifest_sha256):
            raise BundleError(f"{HEADER}: bad manifest_sha256")
        return header


def record_line(kind: str, name: str, value: Mapping[str, Any]) -> bytes:
    """One line of ``records.jsonl``."""
    return (
        json.dumps({"kind": kind, "name": name, "value": value}, separators=(",", ":")) + "\n"
    ).encode()


def hash_stream(stream: BinaryIO) -> tuple[int, str]:
    """The size and sha256 of what ``stream`` holds from where it stands, read a chunk at a
    time."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def hash_file(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        return hash_stream(f)
