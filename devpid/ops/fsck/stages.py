"""What fsck expects of stage indexes' files: their version records' links, not cached pages.

A stage's files are private data: no upstream has another copy, so their
expectation is the link that names them (``+links[]``: ``entrypath``,
``hashes.sha256``, ``size``; a wheel's ``.metadata`` by ``core_metadata``),
read from ``private.sqlite`` read-only, in one snapshot. A linked file that is
missing or differs is reported and never repaired; a file of a stage that no
link names is what an upload or push cut off by a crash left (devpid's
start-up sweep removes the same files). Each link keeps its ``rel``, so
each version's current doc zip (its last ``doczip`` link, the one devpid
serves) is known too: what ``+docs/`` must hold (devpid.ops.fsck.docs).

A running devpid links files after this snapshot and unlinks files before
removing them, so the checker reads the links again (``StageLinks.read``
once more) before it calls anything missing or a leftover.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from devpid.ops.fsck.pages import Expectation
from devpid.ops.fsck.private import open_read_only
from devpid.private.database import FILENAME
from devpid.private.indexconfig import MIRROR
from devpid.private.releases import DOCZIP
from devpid.simple.model import HEX, METADATA


@attrs.frozen
class Linked:
    """One file a version links: what it must be, and which version says so."""

    expectation: Expectation
    #: ``user/index/project/version``.
    version: str
    #: The link's ``rel`` (``releasefile``, ``doczip``, ``toxresult``; None for ``.metadata``).
    rel: str | None = None


@attrs.frozen
class DocZip:
    """A version's current doc zip: what its unpacked docs must be unpacked from."""

    entrypath: str
    #: None when the link records no usable sha256 (then no unpacked docs can match it).
    sha256: str | None
    size: int | None


@attrs.frozen
class StageLinks:
    """The stage indexes of a serverdir and every file their versions link.

    ``problem`` says why the private data could not be read (then there are
    no stages: their files are checked as a mirror's, orphans at worst).
    """

    stages: frozenset[str] = frozenset()
    #: ``user/index/+f/<h3>/<h13>/<filename>`` (the link's entrypath, or its ``.metadata``).
    files: Mapping[str, Linked] = attrs.field(factory=dict)
    problem: str | None = None

    @classmethod
    def read(cls, serverdir: Path) -> StageLinks:
        """The links as ``private.sqlite`` has them now (none without private data)."""
        path = serverdir / FILENAME
        if not path.is_file():
            return cls()
        try:
            db = open_read_only(path)
        except sqlite3.Error as e:
            return cls(problem=str(e))
        try:
            db.execute("BEGIN")  # one snapshot: the indexes and the versions agree
            rows = db.execute(
                "SELECT kind, name, value FROM records WHERE kind IN ('index', 'version')"
            ).fetchall()
            db.execute("ROLLBACK")
        except sqlite3.Error as e:
            return cls(problem=str(e))
        finally:
            db.close()
        return cls.from_records((str(k), str(n), v) for k, n, v in rows)

    @classmethod
    def from_records(cls, rows: Iterator[tuple[str, str, Any]]) -> StageLinks:
        stages: set[str] = set()
        versions: list[tuple[str, Any]] = []
        for kind, name, raw in rows:
            value = _json(raw)
            if not isinstance(value, Mapping):
                continue  # the private data's own check reports it
            if kind == "index" and value.get("type") != MIRROR:
                stages.add(name)
            elif kind == "version":
                versions.append((name, value))
        files: dict[str, Linked] = {}
        for name, value in sorted(versions):
            if name.rsplit("/", 2)[0] not in stages:
                continue
            for path, expectation, rel in _expectations(value):
                files.setdefault(path, Linked(expectation, name, rel))
        return cls(frozenset(stages), files)

    def expected(self, entrypath: str) -> Linked | None:
        return self.files.get(entrypath)

    def doc_zips(self) -> dict[str, DocZip]:
        """``user/index/project/version`` -> its current doc zip: its last ``doczip`` link,
        the one devpid's docs route serves."""
        found: dict[str, DocZip] = {}
        for path, linked in self.files.items():  # in link order
            if linked.rel == DOCZIP:
                expected = linked.expectation
                digest = expected.digest if expected.algorithm == "sha256" else None
                found[linked.version] = DocZip(path, digest, expected.size)
        return found


def _json(raw: Any) -> Any:
    try:
        return json.loads(raw)
    except (TypeError, ValueError):
        return None


def link_sha256(hashes: Any) -> str | None:
    """The sha256 in a link's ``hashes`` (or ``core_metadata``), if it is one."""
    digest = hashes.get("sha256") if isinstance(hashes, Mapping) else None
    return digest if isinstance(digest, str) and len(digest) == 64 and HEX.match(digest) else None


def _expectations(value: Mapping[str, Any]) -> Iterator[tuple[str, Expectation, str | None]]:
    """Each file one version record links (release files, doc zips, tox results, metadata),
    with its link's ``rel``."""
    links = value.get("+links")
    for link in links if isinstance(links, list) else ():
        if not isinstance(link, Mapping) or not isinstance(link.get("entrypath"), str):
            continue
        path = link["entrypath"]
        size = link.get("size")
        size = size if type(size) is int and size >= 0 else None
        digest = link_sha256(link.get("hashes"))
        rel = link.get("rel")
        yield (
            path,
            Expectation("sha256" if digest else None, digest, size),
            rel if isinstance(rel, str) else None,
        )
        core = link.get("core_metadata")
        if isinstance(core, Mapping):
            core_digest = link_sha256(core)
            expectation = Expectation("sha256" if core_digest else None, core_digest, None)
            yield path + METADATA, expectation, None
