"""Cached pages as fsck reads them: what each records of its files' hashes and lengths."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import attrs

from devpid.files.store import PROJECT_LIST, FileStore, UnsafePath
from devpid.ops.fsck.disk import OPEN_FLAGS, FileIdentity, identity, identity_of
from devpid.simple.model import HEX, METADATA, PROVENANCE, ProjectPage

#: The hash checked when a link records several: devpid's own first, then the strongest.
HASH_PREFERENCE = (
    "sha256",
    "sha512",
    "sha384",
    "sha3_512",
    "sha3_384",
    "sha3_256",
    "blake2b",
    "blake2s",
    "sha3_224",
    "sha224",
    "sha1",
    "md5",
)


@attrs.frozen
class Expectation:
    """What a cached page records about one file: a hash (if any) and its length (if known)."""

    algorithm: str | None
    digest: str | None
    size: int | None


def _strongest(hashes: object) -> tuple[str | None, str | None]:
    if not isinstance(hashes, dict):
        return None, None
    for algorithm in HASH_PREFERENCE:
        digest = hashes.get(algorithm)
        if isinstance(digest, str) and HEX.match(digest):
            return algorithm, digest
    return None, None


def expectations(page: ProjectPage) -> dict[str, Expectation]:
    """``<h3>/<h13>/<filename>`` -> what the page says of it: each file, metadata, provenance."""
    found: dict[str, Expectation] = {}
    for link in page.links:
        size = link.size if type(link.size) is int and link.size >= 0 else None
        found.setdefault(link.relpath, Expectation(*_strongest(link.hashes), size))
        if link.core_metadata is not False:
            found.setdefault(
                link.relpath + METADATA, Expectation(*_strongest(link.core_metadata), None)
            )
        if link.provenance is not None:
            # PEP 740 records neither a hash nor a size of it: listed, but not verifiable.
            found.setdefault(link.relpath + PROVENANCE, Expectation(None, None, None))
    return found


@attrs.define
class LoadedPage:
    identity: FileIdentity
    #: None when the page cannot be used; ``problem`` says why.
    files: dict[str, Expectation] | None
    problem: str | None = None
    #: The problem is fsck's, not the page's (permissions, an I/O error).
    unreadable: bool = False


def load_page(path: Path, project: str) -> LoadedPage | None:
    """A page file parsed as devpid would, or None if there is none (any more)."""
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | OPEN_FLAGS)) as f:
            status = os.fstat(f.fileno())
            if not stat.S_ISREG(status.st_mode):
                return LoadedPage(identity(status), None, "not a regular file")
            data = json.load(f)
    except FileNotFoundError:
        return None
    except OSError as e:
        found = identity_of(path) or (0, 0, 0, 0)
        return LoadedPage(found, None, f"cannot read it: {e.strerror}", unreadable=True)
    except (ValueError, RecursionError) as e:
        return LoadedPage(identity(status), None, f"not JSON: {str(e)[:200]}")
    found = identity(status)
    if not isinstance(data, dict):
        return LoadedPage(found, None, "not a JSON object")
    if project == PROJECT_LIST:
        names = data.get("names")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            return LoadedPage(found, None, "not a project list (no 'names' list)")
        return LoadedPage(found, {})
    try:
        return LoadedPage(found, expectations(ProjectPage.from_json(data)))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return LoadedPage(found, None, f"not a project page ({type(e).__name__}: {e})"[:300])


@attrs.define
class PageCache:
    """The pages of one run, each read once, and again only if it changed on disk."""

    store: FileStore
    #: Pages read so far, by (index, project).
    _pages: dict[tuple[str, str], LoadedPage | None] = attrs.field(init=False, factory=dict)

    def page_path(self, index: str, project: str) -> Path | None:
        """Where devpid keeps this page, or None for a name it would never write."""
        try:
            return self.store.page_path(index, project)
        except UnsafePath:
            return None

    def expected(self, index: str, project: str | None, relpath: str) -> Expectation | None:
        """What the page of ``project`` says about ``relpath``, reading the page as needed."""
        if project is None:
            return None
        key = (index, project)
        path = self.page_path(index, project)
        if path is None:
            return None
        if key in self._pages:
            loaded = self._pages[key]
            if loaded is not None and loaded.files is not None and relpath in loaded.files:
                return loaded.files[relpath]
            # Not there: read it again if it changed (a running devpid fetched a newer one).
            if identity_of(path) == (loaded.identity if loaded else None):
                return None
        loaded = self._pages[key] = load_page(path, project)
        if loaded is None or loaded.files is None:
            return None
        return loaded.files.get(relpath)

    def current(self, path: Path, index: str, project: str) -> LoadedPage | None:
        """The page at ``path`` as it is now: the one read before if unchanged."""
        loaded = self._pages.get((index, project))
        if loaded is None or identity_of(path) != loaded.identity:
            loaded = load_page(path, project)
        return loaded
