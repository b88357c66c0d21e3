"""A stage's releases: versions, their files, and each change to them as one transaction.

A version record (``user/index/project/version``) holds devpi's metadata keys
and ``+links``, the version's files in the order they were added: release
files, doc zips and tox results. A stored link names its file by
``entrypath`` (``user/index/+f/<h3>/<h13>/<filename>``, the file's URL path
and its place under ``+files/``), and keeps its hashes, size, upload time,
``log`` (devpi's upload, overwrite and push entries) and the serial that
wrote it.

The files themselves are written by the caller *before* the transaction that
links them commits, and removed only *after* the one that unlinks them did:
a crash leaves at worst a file nothing links (removed at the next start), never
a link to a missing file. Every change function here returns the paths it
unlinked, for the caller to remove from disk.

Permissions are checked by the routes (``devpid.auth.acl``) before calling.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from devpid.private.constraints import CONSTRAINED, read_only_message
from devpid.private.data import Refused
from devpid.private.database import PrivateDatabase, Transaction, split_version_name
from devpid.private.indexconfig import MIRROR
from devpid.private.metadata import METADATA_KEYS, with_defaults

RELEASE = "releasefile"
DOCZIP = "doczip"
TOXRESULT = "toxresult"


def entrypath(index: str, sha256: str, filename: str) -> str:
    """Where a file of ``index`` lives, as URL path and under ``+files/``."""
    return f"{index}/+f/{sha256[:3]}/{sha256[3:16]}/{filename}"


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def doczip_name(project: str, version: str) -> str:
    """devpi names every doc zip from the normalised project, whatever was uploaded."""
    return f"{project}-{version}.doc.zip"


def doc_hashes(versions: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """The sha256 of each version's current doc zip (what its unpacked docs must match)."""
    found = {}
    for version, value in versions.items():
        for link in value.get("+links") or ():
            if link.get("rel") == DOCZIP:
                found[version] = str(link.get("hashes", {}).get("sha256", ""))
    return found


def log_entry(what: str, who: str | None, now: float, **more: Any) -> dict[str, Any]:
    """One entry of a link's ``log``; ``when`` is devpi's six UTC integers."""
    return {"what": what, "who": who, "when": list(time.gmtime(now)[:6]), **more}


def upload_time(now: float) -> str:
    """PEP 700's ``upload-time``: ISO 8601 UTC, to the microsecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


class Stored(enum.Enum):
    """What storing a file did."""

    NEW = "new"
    #: The same file was there already on a non-volatile index: nothing changed.
    IDENTICAL = "identical"


@attrs.frozen
class NewFile:
    """A file written to its place under ``+files/``, to be linked to a version."""

    rel: str
    entrypath: str
    sha256: str
    size: int
    #: sha256 of the ``.metadata`` file beside a wheel (PEP 658), when one was extracted.
    core_metadata: str | None = None
    #: The release a tox result is for.
    for_entrypath: str | None = None


@attrs.frozen
class Change:
    """The result of one transaction: the serial it left, and files no longer linked."""

    serial: int
    unlinked: tuple[str, ...] = ()
    stored: Stored = Stored.NEW


def _version_name(index: str, project: str, version: str) -> str:
    return f"{index}/{project}/{version}"


def _stage_config(tx: Transaction, index: str) -> Mapping[str, Any]:
    config = tx.get("index", index)
    if config is None:
        raise Refused(404, f"The stage {index} could not be found.")
    if config.get("type") == MIRROR:
        raise Refused(404, "cannot submit to mirror index")
    if config.get("type") == CONSTRAINED:
        raise Refused(403, read_only_message(index))
    return config


def _register(
    tx: Transaction,
    index: str,
    project: str,
    version: str,
    metadata: Mapping[str, Any],
    replace: bool = False,
) -> dict[str, Any]:
    """The version record with ``metadata`` merged in (created with devpi's defaults)."""
    current = tx.get("version", _version_name(index, project, version))
    known = {key: value for key, value in metadata.items() if key in METADATA_KEYS}
    if current is None:
        return {**with_defaults(known), "+links": []}
    value = dict(current)
    value.update(with_defaults(known) if replace else known)
    return value


def _links(value: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(link) for link in value.get("+links") or ()]


def _same_file(link: Mapping[str, Any], rel: str, filename: str) -> bool:
    return link.get("rel") == rel and basename(str(link.get("entrypath", ""))) == filename


def _overwrite_count(link: Mapping[str, Any]) -> int:
    for entry in link.get("log") or ():
        if entry.get("what") == "overwrite":
            return int(entry.get("count", 0))
    return 0


@attrs.define
class Releases:
    """The changes to releases, each one ``PrivateDatabase.write``."""

    database: PrivateDatabase
    wall_clock: Callable[[], float] = time.time

    def register(
        self, index: str, project: str, version: str, metadata: Mapping[str, Any], who: str | None
    ) -> Change:
        """``:action=submit``: the version's metadata, all of it (defaults for what is missing)."""

        def change(tx: Transaction) -> None:
            _stage_config(tx, index)
            value = _register(tx, index, project, version, metadata, replace=True)
            tx.put("version", _version_name(index, project, version), value)

        return Change(
            self.database.write(f"register {project} {version} on {index}", who, change)[1]
        )

    def store(
        self,
        index: str,
        project: str,
        version: str,
        metadata: Mapping[str, Any],
        new: NewFile,
        who: str | None,
        started_at_serial: int,
    ) -> Change:
        """Link an uploaded release file or doc zip to its version (created if needed).

        The same file name already linked: on a non-volatile index, the same
        content changes nothing (``Stored.IDENTICAL``) and other content is
        refused with 409; on a volatile one the new file replaces it (devpi's
        ``overwrite`` log). Either way, if that link was written after this
        upload started (``started_at_serial``), another upload of the same
        name won the race: 409, whatever ``volatile`` says.
        """
        now = self.wall_clock()
        filename = basename(new.entrypath)

        def change(tx: Transaction) -> tuple[Stored, tuple[str, ...]]:
            config = _stage_config(tx, index)
            # docs register a missing version, and leave an existing one's metadata alone
            known = new.rel == DOCZIP and tx.get("version", _version_name(index, project, version))
            value = _register(tx, index, project, version, {} if known else metadata)
            links = _links(value)
            log = [log_entry("upload", who, now, dst=index)]
            unlinked: tuple[str, ...] = ()
            for position, link in enumerate(links):
                if not _same_file(link, new.rel, filename):
                    continue
                if int(link.get("serial", -1)) > started_at_serial:
                    raise Refused(
                        409, f"{filename} was uploaded at the same time by another request"
                    )
                if not config.get("volatile", True):
                    if link.get("hashes", {}).get("sha256") == new.sha256:
                        return Stored.IDENTICAL, ()
                    raise Refused(409, f"{filename} already exists in non-volatile index")
                del links[position]
                log.insert(0, log_entry("overwrite", None, now, count=_overwrite_count(link) + 1))
                if link["entrypath"] != new.entrypath:
                    unlinked = (link["entrypath"],)
                break
            _not_linked_elsewhere(
                self.database, new.entrypath, _version_name(index, project, version)
            )
            links.append(self._link(new, log, tx.serial, now))
            value["+links"] = links
            tx.put("version", _version_name(index, project, version), value)
            tx.delete("tombstone", new.entrypath)
            for path in unlinked:
                tx.put("tombstone", path, {"serial": tx.serial})
            return Stored.NEW, unlinked

        (stored, unlinked), serial = self.database.write(
            f"upload {filename} to {index}", who, change
        )
        return Change(serial, unlinked, stored)

    def store_toxresult(self, index: str, release: str, new: NewFile, who: str | None) -> Change:
        """Append a tox result to the links of the version that has ``release``."""
        now = self.wall_clock()

        def change(tx: Transaction) -> None:
            _stage_config(tx, index)
            name = self.database.records.files.get(release)
            current = tx.get("version", name) if name else None
            if current is None or not any(
                link.get("entrypath") == release and link.get("rel") == RELEASE
                for link in current.get("+links") or ()
            ):
                raise Refused(404, f"no release file found at {release}")
            if any(link.get("entrypath") == new.entrypath for link in current["+links"]):
                raise Refused(409, f"{basename(new.entrypath)} exists; post it again")
            value = dict(current)
            log = [log_entry("upload", who, now, dst=index)]
            value["+links"] = [*_links(current), self._link(new, log, tx.serial, now)]
            assert name is not None
            tx.put("version", name, value)

        return Change(self.database.write(f"toxresult for {basename(release)}", who, change)[1])

    @staticmethod
    def _link(new: NewFile, log: list[dict[str, Any]], serial: int, now: float) -> dict[str, Any]:
        link: dict[str, Any] = {
            "rel": new.rel,
            "entrypath": new.entrypath,
            "hashes": {"sha256": new.sha256},
            "size": new.size,
            "upload_time": upload_time(now),
            "last_modified": now,
            "log": log,
            "serial": serial,
        }
        if new.core_metadata is not None:
            link["core_metadata"] = {"sha256": new.core_metadata}
        if new.for_entrypath is not None:
            link["for_entrypath"] = new.for_entrypath
        return link

    # -- deleting ----------------------------------------------------------------

    def delete_project(self, index: str, project: str, force: bool, who: str | None) -> Change:
        def change(tx: Transaction) -> tuple[str, ...]:
            config = _stage_config(tx, index)
            versions = tx.versions(index, project)
            if not versions:
                raise Refused(404, "project not found")
            if not force and not config.get("volatile", True):
                raise Refused(403, f"project {project} is on non-volatile index {index}")
            unlinked: list[str] = []
            for version, value in versions.items():
                unlinked += _unlink_all(tx, value)
                tx.delete("version", _version_name(index, project, version))
            return tuple(unlinked)

        unlinked, serial = self.database.write(f"delete {project} from {index}", who, change)
        return Change(serial, unlinked)

    def delete_version(
        self, index: str, project: str, version: str, force: bool, who: str | None
    ) -> Change:
        def change(tx: Transaction) -> tuple[str, ...]:
            config = _stage_config(tx, index)
            if not tx.versions(index, project):
                raise Refused(404, f"project {project} not found on stage '{index}'")
            name = _version_name(index, project, version)
            value = tx.get("version", name)
            if value is None:
                raise Refused(
                    404, f"version '{version}' of project {project} not found on stage '{index}'"
                )
            if not force and not config.get("volatile", True):
                raise Refused(403, "cannot delete version on non-volatile index")
            unlinked = _unlink_all(tx, value)
            tx.delete("version", name)
            return tuple(unlinked)

        unlinked, serial = self.database.write(
            f"delete {project} {version} from {index}", who, change
        )
        return Change(serial, unlinked)

    def delete_file(self, index: str, path: str, force: bool, who: str | None) -> Change:
        """Unlink one file; a release takes its tox results along, and a version left
        without files goes too."""

        def change(tx: Transaction) -> tuple[str, ...]:
            config = _stage_config(tx, index)
            name = self.database.records.files.get(path)
            value = tx.get("version", name) if name else None
            if name is None or value is None:
                if tx.get("tombstone", path) is not None:
                    raise Refused(410, f"file '{path}' existed, deleted in later serial")
                raise Refused(404, f"package '{path}' doesn't exist")
            if not force and not config.get("volatile", True):
                raise Refused(403, "cannot delete version on non-volatile index")
            links = _links(value)
            going = {
                link["entrypath"]
                for link in links
                if link["entrypath"] == path or link.get("for_entrypath") == path
            }
            kept = [link for link in links if link["entrypath"] not in going]
            for gone in going:
                tx.put("tombstone", gone, {"serial": tx.serial})
            if kept:
                tx.put("version", name, {**value, "+links": kept})
            else:
                tx.delete("version", name)
            return tuple(sorted(going))

        unlinked, serial = self.database.write(f"delete {basename(path)}", who, change)
        return Change(serial, unlinked)

    # -- yanking -----------------------------------------------------------------

    def yank(
        self, index: str, project: str, version: str, yanked: bool | str, who: str | None
    ) -> Change:
        """Mark a version yanked (PEP 592; True, or the reason) or not (False)."""

        def change(tx: Transaction) -> None:
            _stage_config(tx, index)
            name = _version_name(index, project, version)
            value = tx.get("version", name)
            if value is None:
                raise Refused(404, f"The version {version} of project {project} does not exist.")
            updated = {k: v for k, v in value.items() if k != "yanked"}
            if yanked is not False:
                updated["yanked"] = yanked
            if updated != value:
                tx.put("version", name, updated)

        what = "yank" if yanked is not False else "unyank"
        return Change(self.database.write(f"{what} {project} {version} on {index}", who, change)[1])

    # -- pushing -----------------------------------------------------------------

    def push(
        self,
        source: str,
        target: str,
        project: str,
        version: str,
        copies: Iterable[tuple[Mapping[str, Any], str]],
        who: str | None,
    ) -> tuple[Change, list[list[Any]]]:
        """Copy a version to ``target``: its metadata, then each ``(source link, target path)``
        of ``copies`` (files the caller already copied into place), with the source's logs
        (less its overwrite entries) and a ``push`` entry.

        A file name already on a non-volatile target is refused with 409, even the
        same content (devpi's rule). Returns devpi's action log.
        """
        now = self.wall_clock()
        copies = list(copies)

        def change(tx: Transaction) -> tuple[list[list[Any]], tuple[str, ...]]:
            config = _stage_config(tx, target)
            src = tx.get("version", _version_name(source, project, version))
            if src is None:
                raise Refused(400, f"there are no files for {project} {version} on stage {source}")
            metadata = {k: v for k, v in src.items() if k in METADATA_KEYS}
            value = _register(tx, target, project, version, metadata)
            links = _links(value)
            actions: list[list[Any]] = [[200, "register", project, version, "->", target]]
            unlinked: list[str] = []
            for link, path in copies:
                filename = basename(path)
                position = next(
                    (i for i, old in enumerate(links) if _same_file(old, link["rel"], filename)),
                    None,
                )
                log = [entry for entry in link.get("log") or () if entry.get("what") != "overwrite"]
                if link["rel"] == DOCZIP:
                    log = list(link.get("log") or ())
                if position is not None:
                    if not config.get("volatile", True):
                        raise Refused(409, f"{filename} already exists in non-volatile index")
                    old = links.pop(position)
                    overwrite = log_entry("overwrite", None, now, count=_overwrite_count(old) + 1)
                    log.insert(0, overwrite)
                    if old["entrypath"] != path:
                        unlinked.append(old["entrypath"])
                log.append(log_entry("push", who, now, src=source, dst=target))
                pushed = {
                    **link,
                    "entrypath": path,
                    "log": log,
                    "serial": tx.serial,
                }
                if link.get("for_entrypath"):
                    pushed["for_entrypath"] = _retarget(link["for_entrypath"], target)
                _not_linked_elsewhere(self.database, path, _version_name(target, project, version))
                links.append(pushed)
                tx.delete("tombstone", path)
                if link["rel"] == DOCZIP:
                    actions.append([200, "store_doczip", project, version, "->", target])
                elif link["rel"] == TOXRESULT:
                    actions.append([200, "store_toxresult", path])
                else:
                    actions.append([200, "store_releasefile", path])
            value["+links"] = links
            tx.put("version", _version_name(target, project, version), value)
            for path in unlinked:
                tx.put("tombstone", path, {"serial": tx.serial})
            return actions, tuple(unlinked)

        (actions, unlinked), serial = self.database.write(
            f"push {project} {version} from {source} to {target}", who, change
        )
        return Change(serial, unlinked), actions


def _not_linked_elsewhere(database: PrivateDatabase, path: str, version_name: str) -> None:
    """One file, one version: a file name the form gave another version (a plain zip's
    version comes from the form) must not link the same file twice, or deleting one
    version would take the other's file."""
    other = database.records.files.get(path)
    if other is not None and other != version_name:
        _, project, version = split_version_name(other)
        raise Refused(409, f"{basename(path)} already belongs to {project} {version}")


def _retarget(path: str, target: str) -> str:
    """A file path of one index as the same file's path on ``target``."""
    _user, _index, rest = path.split("/", 2)
    return f"{target}/{rest}"


def _unlink_all(tx: Transaction, value: Mapping[str, Any]) -> list[str]:
    paths = [str(link["entrypath"]) for link in value.get("+links") or ()]
    for path in paths:
        tx.put("tombstone", path, {"serial": tx.serial})
    return paths
