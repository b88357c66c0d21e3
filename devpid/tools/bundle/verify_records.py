"""Whether a whole bundle's ``records.jsonl`` is devpid's private data, and links only what
the bundle holds.

Checked with devpid's own rules, so an import never stores what devpid would refuse:

- each line a ``{"kind", "name", "value"}`` of a known kind, each ``(kind, name)`` once;
- user and index names (``devpid.private.names``); an index configuration exactly as
  devpid stores it (``new_index_config`` gives it back unchanged), its owner and its
  bases users and indexes of the bundle or of the target;
- a token's user, and its indexes, exist;
- a version's name ``user/index/project/version`` with a normalised project, on a stage
  index; every ``+links`` entry's ``entrypath`` on that index, shaped as devpid names
  files (``FileStore.file_path``), with ``<h3><h13>`` the start of its sha256, and
  present in the bundle as ``files/<entrypath>`` with that sha256 and size (a wheel's
  ``core_metadata`` as ``files/<entrypath>.metadata``); no file linked twice;
- a tombstone's name a file path;
- every file under ``files/`` linked (or the ``.metadata`` beside a linked file), and
  every mirror page and file of an index that is a mirror.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from devpid.files.releases import split_entrypath
from devpid.files.store import FileStore, UnsafePath
from devpid.private.indexconfig import MIRROR, new_index_config
from devpid.private.names import (
    InvalidConfig,
    check_index_name,
    check_user_name,
    normalize_project,
)
from devpid.private.releases import TOXRESULT
from devpid.simple.model import METADATA
from devpid.tools.bundle.format import (
    MIRROR_FILES,
    MIRROR_PAGES,
    RECORD_KINDS,
    RECORDS,
    STAGE_FILES,
    ManifestEntry,
    stage_path,
)
from devpid.tools.bundle.merge import Record, TargetSnapshot

#: Each kind of problem is listed this many times, then counted.
MAX_LISTED = 50
_SHA256_HEX = frozenset("0123456789abcdef")

#: Any path, for ``FileStore.file_path``'s checks (nothing is created there).
_CHECKER = FileStore(Path("/nonexistent-devpid-import-check"))


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


def read_records(path: Path, problems: list[str]) -> list[Record]:
    """The records of ``records.jsonl``, one per non-empty line; what is wrong in ``problems``."""
    records: list[Record] = []
    seen: set[tuple[str, str]] = set()
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{RECORDS} line {number}"
            try:
                data = json.loads(line)
                kind, name, value = data["kind"], data["name"], data["value"]
            except (ValueError, KeyError, TypeError):
                problems.append(f"{where}: not a record")
                continue
            if kind not in RECORD_KINDS:
                problems.append(f"{where}: unknown kind {str(kind)[:50]!r}")
                continue
            if not isinstance(name, str) or not isinstance(value, dict):
                problems.append(f"{where}: the name must be a string and the value an object")
                continue
            if (kind, name) in seen:
                problems.append(f"{where}: {kind} {name[:200]!r} a second time")
                continue
            seen.add((kind, name))
            records.append(Record(kind, name, value))
    return records


class _Checker:
    def __init__(
        self,
        records: list[Record],
        manifest: Mapping[str, ManifestEntry],
        target: TargetSnapshot,
    ) -> None:
        self.manifest = manifest
        self.target = target
        self.problems: list[str] = []
        self.by_kind: dict[str, dict[str, Mapping[str, Any]]] = {k: {} for k in RECORD_KINDS}
        for record in records:
            self.by_kind[record.kind][record.name] = record.value
        #: Stage files linked (bundle paths).
        self.linked: dict[str, str] = {}

    def problem(self, line: str) -> None:
        self.problems.append(line)

    def user_exists(self, name: str) -> bool:
        return name in self.by_kind["user"] or self.target.lookup("user", name) is not None

    def index(self, name: str) -> Mapping[str, Any] | None:
        found = self.by_kind["index"].get(name)
        return found if found is not None else self.target.lookup("index", name)

    def run(self) -> list[str]:
        for name, value in sorted(self.by_kind["user"].items()):
            self.check_user(name, value)
        for name, value in sorted(self.by_kind["index"].items()):
            self.check_index(name, value)
        for name, value in sorted(self.by_kind["token"].items()):
            self.check_token(name, value)
        for name, value in sorted(self.by_kind["version"].items()):
            self.check_version(name, value)
        for name in sorted(self.by_kind["tombstone"]):
            self.check_file_name(f"tombstone {name[:200]!r}", name)
        self.check_files()
        return self.problems

    def check_user(self, name: str, value: Mapping[str, Any]) -> None:
        try:
            check_user_name(name)
        except InvalidConfig as e:
            self.problem(f"user {name[:100]!r}: {e.message}")
            return
        pwhash = value.get("pwhash")
        if pwhash is not None and not isinstance(pwhash, str):
            self.problem(f"user {name}: pwhash is not a string")

    def check_index(self, name: str, config: Mapping[str, Any]) -> None:
        owner, slash, index = name.partition("/")
        try:
            if not slash:
                raise InvalidConfig("not user/index")
            check_user_name(owner)
            check_index_name(index)
        except InvalidConfig as e:
            self.problem(f"index {name[:200]!r}: {e.message}")
            return
        if not self.user_exists(owner):
            self.problem(f"index {name}: its owner {owner} is no user of the bundle or target")
        try:
            stored = new_index_config(
                owner,
                dict(config),
                index_exists=lambda base: self.index(base) is not None,
                default_cache_expiry=0,
            )
        except InvalidConfig as e:
            self.problem(f"index {name}: {e.message}")
            return
        differs = sorted(key for key in config if stored.get(key) != config[key])
        if differs:
            self.problem(f"index {name}: not as devpid stores it: {', '.join(differs)}")

    def check_token(self, name: str, value: Mapping[str, Any]) -> None:
        user = value.get("user")
        if not isinstance(user, str) or not self.user_exists(user):
            self.problem(f"token {name[:100]!r}: its user {str(user)[:100]!r} is no user")
        if not isinstance(value.get("digest"), str):
            self.problem(f"token {name[:100]!r}: no digest")
        indexes = value.get("indexes") or []
        if not isinstance(indexes, list) or any(
            not isinstance(i, str) or self.index(i) is None for i in indexes
        ):
            self.problem(f"token {name[:100]!r}: names an index that does not exist")

    def check_file_name(self, where: str, entrypath: str) -> bool:
        try:
            _CHECKER.file_path(*split_entrypath(entrypath))
        except UnsafePath as e:
            self.problem(f"{where}: {e}")
            return False
        return True

    def check_version(self, name: str, value: Mapping[str, Any]) -> None:
        parts = name.split("/")
        where = f"version {name[:200]!r}"
        if len(parts) != 4 or not all(parts) or parts[3] in (".", ".."):
            self.problem(f"{where}: not user/index/project/version")
            return
        index = f"{parts[0]}/{parts[1]}"
        if normalize_project(parts[2]) != parts[2]:
            self.problem(f"{where}: the project name is not normalised")
        config = self.index(index)
        if config is None:
            self.problem(f"{where}: its index {index} does not exist")
        elif config.get("type") == MIRROR:
            self.problem(f"{where}: its index {index} is a mirror")
        links = value.get("+links", [])
        if not isinstance(links, list):
            self.problem(f"{where}: +links is not a list")
            return
        for link in links:
            self.check_link(where, name, index, link)

    def check_link(self, where: str, version: str, index: str, link: object) -> None:
        if not isinstance(link, Mapping) or not isinstance(link.get("entrypath"), str):
            self.problem(f"{where}: a link without an entrypath")
            return
        entrypath = link["entrypath"]
        if not self.check_file_name(f"{where}: link {entrypath[:200]!r}", entrypath):
            return
        if split_entrypath(entrypath)[0] != index:
            self.problem(f"{where}: links {entrypath}, a file of another index")
            return
        hashes = link.get("hashes")
        sha256 = hashes.get("sha256") if isinstance(hashes, Mapping) else None
        size = link.get("size")
        if not _is_sha256(sha256) or type(size) is not int:
            self.problem(f"{where}: link {entrypath} lacks a sha256 or a size")
            return
        assert isinstance(sha256, str)
        _index, h3, h13, _name = split_entrypath(entrypath)
        # a tox result lives beside its release, under the release's hash
        if link.get("rel") != TOXRESULT and not sha256.startswith(h3 + h13):
            self.problem(f"{where}: link {entrypath}: its path does not match its sha256")
        path = stage_path(entrypath)
        if path in self.linked:
            self.problem(f"{path}: linked by {self.linked[path]} and by {version}")
            return
        self.linked[path] = version
        self.expect(path, sha256, size, f"{where} links it")
        core = link.get("core_metadata")
        if isinstance(core, Mapping) and _is_sha256(core.get("sha256")):
            self.expect(path + METADATA, str(core["sha256"]), None, f"{where} links it")

    def expect(self, path: str, sha256: str, size: int | None, why: str) -> None:
        entry = self.manifest.get(path)
        if entry is None:
            self.problem(f"{path}: not in the bundle ({why})")
        elif entry.sha256 != sha256 or (size is not None and entry.size != size):
            self.problem(
                f"{path}: the bundle's is {entry.size} bytes with sha256 {entry.sha256}, "
                f"{why} as {size} bytes with sha256 {sha256}"
            )

    def check_files(self) -> None:
        for path in sorted(self.manifest):
            if path.startswith(STAGE_FILES):
                if path in self.linked:
                    continue
                if path.endswith(METADATA) and path[: -len(METADATA)] in self.linked:
                    continue
                self.problem(f"{path}: no version of the bundle links it")
            elif path.startswith((MIRROR_FILES, MIRROR_PAGES)):
                parts = path.split("/")
                index = f"{parts[2]}/{parts[3]}"
                config = self.index(index)
                if config is None or config.get("type") != MIRROR:
                    self.problem(f"{path}: {index} is not a mirror index of the bundle or target")


def check_records(
    records: list[Record],
    manifest: Mapping[str, ManifestEntry],
    target: TargetSnapshot,
) -> list[str]:
    """Every problem of ``records`` (one line each), at most ``MAX_LISTED`` then a count."""
    problems = _Checker(records, manifest, target).run()
    return list(_capped(problems))


def _capped(problems: list[str]) -> Iterator[str]:
    yield from problems[:MAX_LISTED]
    if len(problems) > MAX_LISTED:
        yield f"... and {len(problems) - MAX_LISTED} more problems of the records"
