"""The private data's database: transactions, serials, the event log and catching up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from devpid.private.data import PrivateData, Refused
from devpid.private.database import DatabaseError, PrivateDatabase
from devpid.private.init import initialize
from devpid.private.userconfig import NewUser, parse_user_patch

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"


def opened(path: Path) -> PrivateData:
    database = PrivateDatabase(path / "private.sqlite")
    database.open()
    return PrivateData(database)


def test_initialize_is_serial_zero_and_happens_once(tmp_path: Path) -> None:
    data = opened(tmp_path)
    assert data.serial == -1
    assert initialize(data, HASH, "http://localhost:1/simple/", "2026-01-01T00:00:00Z")
    assert data.serial == 0
    assert set(data.users()) == {"root"}
    assert data.index("root/pypi") == {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": "http://localhost:1/simple/",
        "mirror_cache_expiry": 1800,
    }
    # a second worker starting at the same time finds root there and does nothing
    other = opened(tmp_path)
    assert not initialize(other, HASH, None, "2026-01-01T00:00:00Z")
    assert other.serial == 0


def test_each_change_is_one_event_with_the_next_serial(tmp_path: Path) -> None:
    data = opened(tmp_path)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    _, serial = data.create_user("alice", NewUser("pw", None, {"email": "a@x"}), HASH, None)
    assert serial == 1
    config, serial = data.create_index("alice", "dev", {"bases": "root/pypi"}, "alice")
    assert serial == 2
    assert config["bases"] == ["root/pypi"] and config["acl_upload"] == ["alice"]
    events = list(data.database.iter_events())
    assert [e.serial for e in events] == [0, 1, 2]
    assert [e.what for e in events] == ["initialize", "create user alice", "create index alice/dev"]
    assert events[2].who == "alice"
    # secrets never leave through the public form of an event
    public = events[1].public()
    assert "pwhash" not in public["changes"][0]["value"]
    assert public["changes"][0]["value"]["email"] == "a@x"


def test_a_refused_change_writes_nothing(tmp_path: Path) -> None:
    data = opened(tmp_path)
    initialize(data, HASH, None, "x")
    with pytest.raises(Refused) as refused:
        data.create_user("root", NewUser("pw", None, {}), HASH, None)
    assert (refused.value.code, refused.value.message) == (409, "user already exists")
    with pytest.raises(Refused) as refused:
        data.create_index("root", "dev", {"bases": "not/there"}, None)
    assert refused.value.code == 400
    assert "not/there" in refused.value.message
    assert data.serial == 0
    assert len(list(data.database.iter_events())) == 1
    assert data.index("root/dev") is None


def test_an_exception_in_a_change_rolls_back(tmp_path: Path) -> None:
    data = opened(tmp_path)

    def half_done(tx: object) -> None:
        tx.put("user", "bob", {"pwhash": HASH})  # type: ignore[attr-defined]
        raise RuntimeError("crash between two writes")

    with pytest.raises(RuntimeError):
        data.database.write("half", None, half_done)
    assert data.user("bob") is None
    assert opened(tmp_path).user("bob") is None


def test_another_process_change_is_seen_on_catch_up(tmp_path: Path) -> None:
    one, two = opened(tmp_path), opened(tmp_path)
    initialize(one, HASH, None, "x")
    assert two.user("root") is None
    assert two.catch_up()
    assert two.user("root") is not None and two.serial == 0
    seen = []
    two.database.listeners.append(lambda event: seen.append(event.serial))
    one.create_user("carol", NewUser("pw", None, {}), HASH, None)
    one.create_index("carol", "dev", {}, "carol")
    assert two.catch_up()
    assert seen == [1, 2]
    assert two.index("carol/dev") is not None
    assert not two.catch_up()  # nothing new: one PRAGMA, no reads


def test_conflicting_changes_from_two_processes_one_wins(tmp_path: Path) -> None:
    one, two = opened(tmp_path), opened(tmp_path)
    initialize(one, HASH, None, "x")
    one.create_user("dave", NewUser("pw", None, {}), HASH, None)
    # two has not caught up, but a write always sees the newest state
    with pytest.raises(Refused) as refused:
        two.create_user("dave", NewUser("pw", None, {}), HASH, None)
    assert refused.value.code == 409
    assert two.serial == 1


def test_user_changes_and_deletes(tmp_path: Path) -> None:
    data = opened(tmp_path)
    initialize(data, HASH, None, "x")
    data.create_user("erin", NewUser("pw", None, {"title": "T"}), HASH, None)
    changed, _ = data.modify_user(
        "erin", parse_user_patch({"email": "e@x", "title": ""}), None, "erin"
    )
    assert changed
    record = data.user("erin")
    assert record is not None
    assert record["email"] == "e@x" and "title" not in record and "modified" in record
    unchanged, serial = data.modify_user("erin", parse_user_patch({"email": "e@x"}), None, None)
    assert not unchanged and serial == data.serial
    data.create_index("erin", "prod", {"volatile": False}, "erin")
    with pytest.raises(Refused) as refused:
        data.delete_user("erin", "erin")
    assert refused.value.message == "user 'erin' has non-volatile index: prod"
    data.patch_index("erin/prod", ["volatile=True"], "erin")
    data.add_token("tok1", "erin", {"digest": "d"}, "erin")
    data.delete_user("erin", "erin")
    assert data.user("erin") is None and data.index("erin/prod") is None
    assert "tok1" not in data.tokens()
    with pytest.raises(Refused):
        data.delete_user("root", None)


def test_every_record_survives_reopening(tmp_path: Path) -> None:
    data = opened(tmp_path)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    data.create_user("fay", NewUser("pw", None, {}), HASH, None)
    data.create_index("fay", "dev", {"bases": ["root/pypi"]}, "fay")
    data.set_version("fay/dev", "hello", "1.0", {"name": "hello", "version": "1.0"}, "fay")
    data.database.close()
    again = opened(tmp_path)
    assert again.serial == data.serial
    assert again.index("fay/dev") == data.index("fay/dev")
    assert again.versions("fay/dev", "hello") == {"1.0": {"name": "hello", "version": "1.0"}}
    assert again.has_private_project("fay/dev", "hello")
    assert again.projects("fay/dev") == ["hello"]
    assert again.database.uuid == data.database.uuid and len(again.database.uuid) == 32


def test_a_damaged_database_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "private.sqlite").write_bytes(b"this is not a database" * 100)
    database = PrivateDatabase(tmp_path / "private.sqlite")
    with pytest.raises(DatabaseError) as error:
        database.open()
    assert "private.sqlite" in str(error.value) and "\n" not in str(error.value)


def test_the_log_is_append_only_and_matches_the_records(tmp_path: Path) -> None:
    data = opened(tmp_path)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    for n in range(5):
        data.create_user(f"u{n}", NewUser("pw", None, {}), HASH, None)
        data.create_index(f"u{n}", "dev", {"bases": "root/pypi"}, None)
    data.delete_index("u2/dev", None)
    replayed: dict[tuple[str, str], object] = {}
    for event in data.database.iter_events():
        for change in event.changes:
            if change.value is None:
                replayed.pop((change.kind, change.name), None)
            else:
                replayed[(change.kind, change.name)] = change.value
    db = sqlite3.connect(tmp_path / "private.sqlite")
    stored = {(k, n) for k, n in db.execute("SELECT kind, name FROM records")}
    assert stored == set(replayed)
