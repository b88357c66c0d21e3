"""The lines the primary sends and the replica checks: events and snapshots.

Both are JSON lines. An event line is ``{"serial", "at", "who", "what",
"changes": [{"kind", "name", "value"}]}`` with every record in full (password
hashes and token digests included: a replica authenticates like its primary).
A snapshot is a head line ``{"snapshot": {"uuid", "serial"}}``, then
``{"record": [kind, name, value, serial]}`` lines, then event lines, then
``{"end": {"records", "events"}}``: a snapshot cut short lacks its end line.

The replica applies nothing it has not checked here: a line that is not
exactly this shape raises ``FeedError``, and none of its batch is applied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import attrs

from devpid.private.events import KINDS, Change, Event

#: Response headers of the feed (and of the snapshot).
PRIMARY_UUID = b"x-devpid-primary-uuid"
PRIMARY_SERIAL = b"x-devpid-primary-serial"
#: The primary's ``event_mark`` of the serial the replica asked after ("none": no such event).
SINCE_MARK = b"x-devpid-since-mark"
CONTENT_TYPE = b"application/x-ndjson"


class FeedError(Exception):
    """What the primary sent is not a feed or snapshot devpid can apply; one line."""


def event_line(event: Event) -> bytes:
    document = {
        "serial": event.serial,
        "at": event.at,
        "who": event.who,
        "what": event.what,
        "changes": [c.as_json() for c in event.changes],
    }
    return json.dumps(document, separators=(",", ":")).encode() + b"\n"


def _load(line: bytes, number: int) -> Any:
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FeedError(f"line {number} is not JSON") from None


def _change(data: Any, number: int) -> Change:
    if not isinstance(data, dict) or set(data) != {"kind", "name", "value"}:
        raise FeedError(f"line {number}: a change is not {{kind, name, value}}")
    kind, name, value = data["kind"], data["name"], data["value"]
    if kind not in KINDS or not isinstance(name, str) or not name:
        raise FeedError(f"line {number}: a change names no known record")
    if value is not None and not isinstance(value, dict):
        raise FeedError(f"line {number}: the value of {kind} {name[:100]!r} is not an object")
    return Change(kind, name, value)


def parse_event(data: Any, number: int) -> Event:
    """One event from its decoded line; ``FeedError`` unless it is exactly one."""
    if not isinstance(data, dict) or set(data) != {"serial", "at", "who", "what", "changes"}:
        raise FeedError(f"line {number} is not an event")
    serial, at, who, what, changes = (
        data["serial"],
        data["at"],
        data["who"],
        data["what"],
        data["changes"],
    )
    if not isinstance(serial, int) or isinstance(serial, bool) or serial < 0:
        raise FeedError(f"line {number}: the serial is not a whole number")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not math.isfinite(at):
        raise FeedError(f"line {number}: the time is not a number")
    if who is not None and not isinstance(who, str):
        raise FeedError(f"line {number}: who is not a name")
    if not isinstance(what, str) or not isinstance(changes, list):
        raise FeedError(f"line {number}: what or changes have the wrong type")
    return Event(serial, float(at), who, what, tuple(_change(c, number) for c in changes))


def parse_events(body: bytes) -> list[Event]:
    """The events of a feed answer, checked to follow each other serial by serial."""
    events: list[Event] = []
    lines = body.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        raise FeedError("the answer does not end with a whole line")
    for number, line in enumerate(lines, 1):
        event = parse_event(_load(line, number), number)
        if events and event.serial != events[-1].serial + 1:
            raise FeedError(
                f"line {number}: event {event.serial} follows {events[-1].serial}: out of order"
            )
        events.append(event)
    return events


def snapshot_lines(
    uuid: str,
    serial: int,
    records: Iterable[tuple[str, str, str, int]],
    events: Iterable[Event],
) -> Iterator[bytes]:
    """A snapshot, line by line; ``records`` as stored (their values still JSON text)."""
    head = {"snapshot": {"uuid": uuid, "serial": serial}}
    yield json.dumps(head).encode() + b"\n"
    count = 0
    for kind, name, value, record_serial in records:
        yield b'{"record":[%s,%s,%s,%d]}\n' % (
            json.dumps(kind).encode(),
            json.dumps(name).encode(),
            value.encode(),
            record_serial,
        )
        count += 1
    number = 0
    for event in events:
        yield event_line(event)
        number += 1
    yield json.dumps({"end": {"records": count, "events": number}}).encode() + b"\n"


@attrs.frozen
class Snapshot:
    """A checked snapshot: the primary's uuid and serial, its records and its events."""

    uuid: str
    serial: int
    records: list[tuple[str, str, Mapping[str, Any], int]]
    events: list[Event]


def parse_snapshot(lines: Iterable[bytes]) -> Snapshot:
    """A whole snapshot from its lines; ``FeedError`` unless complete and consistent."""
    head: dict[str, Any] | None = None
    records: list[tuple[str, str, Mapping[str, Any], int]] = []
    events: list[Event] = []
    end: Any = None
    for number, line in enumerate(lines, 1):
        if end is not None:
            raise FeedError(f"line {number} follows the end of the snapshot")
        data = _load(line, number)
        if not isinstance(data, dict):
            raise FeedError(f"line {number} is not a snapshot line")
        if head is None:
            head = data.get("snapshot")
            if (
                len(data) != 1
                or not isinstance(head, dict)
                or not isinstance(head.get("uuid"), str)
                or not isinstance(head.get("serial"), int)
            ):
                raise FeedError("the snapshot does not begin with its uuid and serial")
        elif set(data) == {"record"}:
            records.append(_record(data["record"], number, head["serial"]))
        elif set(data) == {"end"}:
            end = data["end"]
        else:
            event = parse_event(data, number)
            if event.serial != len(events):
                raise FeedError(f"line {number}: event {event.serial} where {len(events)} belongs")
            events.append(event)
    if head is None or end is None:
        raise FeedError("the snapshot is cut short (no end line)")
    if end != {"records": len(records), "events": len(events)}:
        raise FeedError("the snapshot's end line does not count what came before it")
    if len(events) - 1 != head["serial"]:
        raise FeedError("the snapshot's events do not end at its serial")
    return Snapshot(head["uuid"], head["serial"], records, events)


def _record(data: Any, number: int, serial: int) -> tuple[str, str, Mapping[str, Any], int]:
    if not isinstance(data, list) or len(data) != 4:
        raise FeedError(f"line {number} is not a record")
    kind, name, value, written = data
    if kind not in KINDS or not isinstance(name, str) or not isinstance(value, dict):
        raise FeedError(f"line {number} is not a record")
    if not isinstance(written, int) or isinstance(written, bool) or not 0 <= written <= serial:
        raise FeedError(f"line {number}: the record's serial is not within the snapshot's")
    return kind, name, value, written
