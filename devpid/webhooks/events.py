"""Which events of the log are webhook events, and the JSON body each one is sent as.

An event of the log is one transaction: its ``what`` (``upload a.whl to
alice/dev``, ``delete pkg 1.0 from alice/dev``, ``yank pkg 1.0 on alice/dev``,
``push pkg 1.0 from alice/dev to alice/prod``, ...) and the records it wrote
in full. The kind of event is the first word of ``what``; everything else
(index, project, version, files) comes from the records, never from parsing
names out of the sentence: a ``version`` record is named
``user/index/project/version``, a new file is a link whose ``serial`` is the
event's, a deleted file leaves a ``tombstone`` record. An event that also
writes users, indexes or tokens (deleting a user or an index takes its
versions along) is not a webhook event: the index, and its webhooks, are gone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs

from devpid.private.database import split_version_name
from devpid.private.events import Change, Event

#: Every webhook event, as ``X-Devpid-Event`` and the body's ``event`` name it.
EVENTS = (
    "upload",
    "push",
    "yank",
    "unyank",
    "delete_project",
    "delete_version",
    "delete_file",
)

#: The placeholders a webhook URL may hold, replaced (URL-quoted) for each delivery;
#: ``pkgname`` and ``pkgversion`` are devpi-jenkins' names.
PLACEHOLDERS = ("event", "index", "project", "version", "serial", "pkgname", "pkgversion")


@attrs.frozen
class StageEvent:
    """What one logged event did to one index, as a webhook tells it."""

    event: str
    serial: int
    index: str
    project: str
    #: None when a whole project was deleted (``versions`` lists what it had).
    version: str | None
    versions: tuple[str, ...] = ()
    files: tuple[Mapping[str, Any], ...] = ()
    #: The index a push came from.
    source: str | None = None
    #: A yank's reason (or True); False once unyanked.
    yanked: bool | str | None = None

    def placeholders(self) -> dict[str, str]:
        version = self.version or ""
        return {
            "event": self.event,
            "index": self.index,
            "project": self.project,
            "version": version,
            "serial": str(self.serial),
            "pkgname": self.project,
            "pkgversion": version,
        }


def classify(event: Event) -> StageEvent | None:
    """The webhook event ``event`` is, or None (users, indexes, tokens, registrations,
    tox results, ...)."""
    if any(change.kind not in ("version", "tombstone") for change in event.changes):
        return None
    versions = [change for change in event.changes if change.kind == "version"]
    if not versions or any(c.name.count("/") < 3 for c in versions):
        return None
    index, project, version = split_version_name(versions[0].name)
    if any(split_version_name(c.name)[:2] != (index, project) for c in versions):
        return None  # one transaction changes one project of one index
    verb = event.what.partition(" ")[0]
    kept = [c for c in versions if c.value is not None]
    gone_files = tuple(_tombstones(event.changes, event.serial))
    if verb in ("upload", "push"):
        added = [link for c in kept for link in _new_links(c, event.serial)]
        if not added:
            return None
        return StageEvent(
            verb,
            event.serial,
            index,
            project,
            version,
            files=tuple(_file(link) for link in added),
            source=_push_source(added) if verb == "push" else None,
        )
    if verb in ("yank", "unyank") and kept:
        value = kept[0].value
        yanked = value.get("yanked", False) if isinstance(value, Mapping) else False
        return StageEvent(verb, event.serial, index, project, version, yanked=yanked)
    if verb == "delete":
        return _deletion(event, index, project, version, versions, gone_files)
    return None


def _deletion(
    event: Event,
    index: str,
    project: str,
    version: str,
    versions: Sequence[Change],
    gone_files: tuple[Mapping[str, Any], ...],
) -> StageEvent:
    """A project, a version or files: ``delete P from I``, ``delete P V from I`` and
    ``delete FILENAME`` (which may take a version left without files along)."""
    words = event.what.split(" ")
    if len(words) == 4 and words[2] == "from" and all(c.value is None for c in versions):
        names = tuple(sorted(split_version_name(c.name)[2] for c in versions))
        return StageEvent(
            "delete_project", event.serial, index, project, None, names, files=gone_files
        )
    if len(words) == 5 and words[3] == "from":
        return StageEvent("delete_version", event.serial, index, project, version, files=gone_files)
    return StageEvent("delete_file", event.serial, index, project, version, files=gone_files)


def _links(value: Mapping[str, Any] | None) -> list[Mapping[str, Any]]:
    """A version record's links (nothing of another shape: a body must never fail to build)."""
    links = value.get("+links") if isinstance(value, Mapping) else None
    if not isinstance(links, list):
        return []
    return [link for link in links if isinstance(link, Mapping)]


def _new_links(change: Change, serial: int) -> list[Mapping[str, Any]]:
    return [link for link in _links(change.value) if link.get("serial") == serial]


def _file(link: Mapping[str, Any]) -> dict[str, Any]:
    path = str(link.get("entrypath", ""))
    hashes = link.get("hashes")
    return {
        "filename": path.rpartition("/")[2],
        "path": path,
        "rel": link.get("rel"),
        "sha256": hashes.get("sha256") if isinstance(hashes, Mapping) else None,
        "size": link.get("size"),
    }


def _tombstones(changes: Sequence[Change], serial: int) -> list[dict[str, Any]]:
    return [
        {"filename": c.name.rpartition("/")[2], "path": c.name}
        for c in changes
        if c.kind == "tombstone"
        and isinstance(c.value, Mapping)
        and c.value.get("serial") == serial
    ]


def _push_source(links: Sequence[Mapping[str, Any]]) -> str | None:
    for link in links:
        log = link.get("log")
        for entry in reversed(log if isinstance(log, list) else []):
            if isinstance(entry, Mapping) and entry.get("what") == "push" and entry.get("src"):
                return str(entry["src"])
    return None


def iso_timestamp(at: float) -> str:
    """``at`` as ISO 8601 UTC to the millisecond."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def payload(stage_event: StageEvent, event: Event, server_uuid: str) -> dict[str, Any]:
    """The JSON body of a delivery: the event's summary, and the logged event itself
    (secrets left out, as ``Event.public`` does)."""
    body: dict[str, Any] = {
        "type": stage_event.event,
        "serial": stage_event.serial,
        "index": stage_event.index,
        "project": stage_event.project,
        "version": stage_event.version,
        "filenames": [str(f.get("filename", "")) for f in stage_event.files],
        "files": [dict(f) for f in stage_event.files],
        "who": event.who,
        "time": iso_timestamp(event.at),
        "server_uuid": server_uuid,
    }
    if stage_event.event == "delete_project":
        body["versions"] = list(stage_event.versions)
    if stage_event.event == "push":
        body["source"] = stage_event.source
    if stage_event.event in ("yank", "unyank"):
        body["yanked"] = stage_event.yanked
    body["log_event"] = event.public()
    return body


def target_url(template: str, stage_event: StageEvent) -> str:
    """A webhook URL with its placeholders (``{project}``, ...) replaced, URL-quoted.

    Only the names of ``PLACEHOLDERS`` are replaced; other braces stay as they are.
    """
    url = template
    for name, value in stage_event.placeholders().items():
        url = url.replace("{" + name + "}", quote(value, safe=""))
    return url
