"""The serverdir: its layout, temporary files, atomic commits, and crash clean-up.

Layout (see docs/serverdir.md)::

    <serverdir>/state.sqlite                      embedded state store
    <serverdir>/+pages/<user>/<index>/<project>.json   parsed project pages
    <serverdir>/+pages/<user>/<index>/+projects.json   the project list
    <serverdir>/+files/<user>/<index>/+f/<h3>/<h13>/<filename>   committed files
    ....../<filename>.devpid-partial              a download in progress

Every path is built from validated components and checked to stay inside
the serverdir, so no request can name a file outside it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import attrs
from twisted.logger import Logger

from devpid.simple import FILENAME, HEX

PARTIAL_SUFFIX = ".devpid-partial"
#: The page file name that holds an index's project list.
PROJECT_LIST = "+projects"
_INDEX_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
#: Normalized project names (``packaging.utils.canonicalize_name``).
_PROJECT_PART = re.compile(r"^[a-z0-9][a-z0-9-]{0,199}\Z")


class UnsafePath(Exception):
    """A path component that could escape the serverdir or is not a valid name."""


def _check_component(value: str, pattern: re.Pattern[str]) -> str:
    if not pattern.match(value) or value in (".", "..") or "\x00" in value:
        raise UnsafePath(f"invalid path component {value[:80]!r}")
    return value


@attrs.define
class CacheCounts:
    files: int = 0
    bytes: int = 0
    pages: int = 0


@attrs.define
class FileStore:
    serverdir: Path
    counts: CacheCounts = attrs.field(factory=CacheCounts)
    log = Logger()

    @property
    def files_root(self) -> Path:
        return self.serverdir / "+files"

    @property
    def pages_root(self) -> Path:
        return self.serverdir / "+pages"

    def prepare(self) -> None:
        """Create the layout, remove what a crash left behind, and count what is cached."""
        self.files_root.mkdir(parents=True, exist_ok=True)
        self.pages_root.mkdir(parents=True, exist_ok=True)
        removed = 0
        counts = CacheCounts()
        for directory, _dirs, names in os.walk(self.files_root):
            for name in names:
                path = os.path.join(directory, name)
                if name.endswith(PARTIAL_SUFFIX):
                    os.unlink(path)
                    removed += 1
                    continue
                counts.files += 1
                counts.bytes += os.stat(path).st_size
        for directory, _dirs, names in os.walk(self.pages_root):
            for name in names:
                if name.endswith(PARTIAL_SUFFIX):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
                elif name.endswith(".json") and not name.startswith("+"):
                    counts.pages += 1
        self.counts = counts
        if removed:
            self.log.info("removed {count} partial files left by a crash", count=removed)

    def _inside(self, path: Path) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self.serverdir.resolve()):
            raise UnsafePath(f"{path} is outside the serverdir")
        return path

    def file_path(self, index: str, h3: str, h13: str, filename: str) -> Path:
        """Where the committed file ``+f/<h3>/<h13>/<filename>`` of ``index`` lives."""
        user, _, name = index.partition("/")
        _check_component(user, _INDEX_PART)
        _check_component(name, _INDEX_PART)
        if len(h3) != 3 or len(h13) != 13 or not HEX.match(h3) or not HEX.match(h13):
            raise UnsafePath("file hashes in the path must be 3 and 13 lowercase hex digits")
        _check_component(filename, FILENAME)
        return self._inside(self.files_root / user / name / "+f" / h3 / h13 / filename)

    @staticmethod
    def partial_path(final: Path) -> Path:
        return final.with_name(final.name + PARTIAL_SUFFIX)

    def create_partial(self, final: Path) -> tuple[Path, int]:
        """A fresh temporary file beside ``final``, opened for writing."""
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(final)
        partial.unlink(missing_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        return partial, fd

    def commit(self, partial: Path, final: Path) -> None:
        """Atomically publish a verified download."""
        os.rename(partial, final)
        self.counts.files += 1
        self.counts.bytes += final.stat().st_size

    def discard(self, partial: Path) -> None:
        partial.unlink(missing_ok=True)

    def remove_file(self, final: Path) -> None:
        try:
            size = final.stat().st_size
            final.unlink()
        except FileNotFoundError:
            return
        self.counts.files -= 1
        self.counts.bytes -= size

    # -- pages ---------------------------------------------------------------

    def page_path(self, index: str, project: str) -> Path:
        user, _, name = index.partition("/")
        _check_component(user, _INDEX_PART)
        _check_component(name, _INDEX_PART)
        if project != PROJECT_LIST:
            _check_component(project, _PROJECT_PART)
        return self._inside(self.pages_root / user / name / f"{project}.json")

    def read_page(self, index: str, project: str) -> dict[str, Any] | None:
        try:
            with open(self.page_path(index, project), "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            self.log.warn(
                "ignoring unreadable cached page {index}/{project}", index=index, project=project
            )
            return None
        return data if isinstance(data, dict) else None

    def write_page(self, index: str, project: str, data: dict[str, Any]) -> None:
        path = self.page_path(index, project)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.partial_path(path)
        new = not path.exists()
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(data, f, separators=(",", ":"))
        os.replace(partial, path)
        if new and project != PROJECT_LIST:
            self.counts.pages += 1

    def delete_page(self, index: str, project: str) -> None:
        try:
            self.page_path(index, project).unlink()
        except FileNotFoundError:
            return
        if project != PROJECT_LIST:
            self.counts.pages -= 1

    def cached_projects(self, index: str) -> list[str]:
        user, _, name = index.partition("/")
        directory = self.pages_root / user / name
        if not directory.is_dir():
            return []
        return sorted(
            p.name[: -len(".json")]
            for p in directory.iterdir()
            if p.name.endswith(".json") and not p.name.startswith("+")
        )
