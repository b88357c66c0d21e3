"""``devpid fsck`` of ``private.sqlite``: the records against the event log, and references.

Each test builds real private data through PrivateDatabase, damages it the way
a bug, a hand edit or a bad restore would (straight SQL on the file), and
checks what fsck says: an error names the record and says it is not repaired.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devpid.ops.fsck import EXIT_CLEAN, EXIT_PROBLEMS, Report, check
from devpid.ops.fsck.private import MAX_LISTED
from devpid.private.database import FILENAME, PrivateDatabase, Transaction
from tests.test_fsck import run_fsck


def put(database: PrivateDatabase, kind: str, name: str, value: dict[str, Any]) -> int:
    def change(tx: Transaction) -> None:
        tx.put(kind, name, value)

    return database.write(f"put {kind} {name}", "root", change)[1]


def delete(database: PrivateDatabase, kind: str, name: str) -> int:
    def change(tx: Transaction) -> None:
        tx.delete(kind, name)

    return database.write(f"delete {kind} {name}", "root", change)[1]


@pytest.fixture
def serverdir(tmp_path: Path) -> Iterator[Path]:
    """A serverdir whose private data has users, indexes, a token, a version and a deletion."""
    serverdir = tmp_path / "serverdir"
    serverdir.mkdir()
    database = PrivateDatabase.in_serverdir(serverdir)
    database.open()
    put(database, "user", "root", {"pwhash": "x"})
    put(database, "index", "root/pypi", {"type": "mirror", "volatile": False})
    put(database, "user", "alice", {"email": "a@example.com"})
    put(database, "index", "alice/dev", {"type": "stage", "bases": ["root/pypi"]})
    put(database, "index", "alice/tmp", {"type": "stage", "bases": []})
    delete(database, "index", "alice/tmp")
    put(database, "token", "t1", {"user": "alice", "digest": "d"})
    put(database, "version", "alice/dev/hello/1.0", {"name": "hello", "version": "1.0"})
    put(database, "index", "alice/dev", {"type": "stage", "bases": ["root/pypi"], "title": "x"})
    database.close()
    yield serverdir


def sql(serverdir: Path, *statements: str) -> None:
    db = sqlite3.connect(serverdir / FILENAME, isolation_level=None)
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


def private_lines(report: Report) -> list[str]:
    return [p.line() for p in report.problems if p.kind == "private"]


def test_clean_private_data_has_no_problems(serverdir: Path) -> None:
    report = check(serverdir)
    assert private_lines(report) == []
    assert report.exit_status == EXIT_CLEAN


def test_no_private_data_is_fine_and_is_not_created(tmp_path: Path) -> None:
    report = check(tmp_path)
    assert report.problems == [] and report.exit_status == EXIT_CLEAN
    assert not (tmp_path / FILENAME).exists()


def test_a_gap_in_the_serials_is_an_error(serverdir: Path) -> None:
    sql(serverdir, "DELETE FROM events WHERE serial IN (3, 4)")
    lines = private_lines(check(serverdir))
    assert any("event serials jump from 2 to 5: 3-4 missing" in line for line in lines), lines
    assert all(line.startswith("error private private.sqlite: private data: ") for line in lines)
    assert all(line.endswith("(not repaired: restore from a backup)") for line in lines)


def test_serials_must_start_at_zero(serverdir: Path) -> None:
    sql(serverdir, "DELETE FROM events WHERE serial = 0")
    lines = private_lines(check(serverdir))
    assert any("jump from -1 to 1: 0 missing" in line for line in lines), lines


def test_a_changed_record_is_an_error_naming_it(serverdir: Path) -> None:
    value = json.dumps({"email": "evil@example.com"})
    sql(serverdir, f"UPDATE records SET value = '{value}' WHERE kind = 'user' AND name = 'alice'")
    report = check(serverdir)
    assert report.exit_status == EXIT_PROBLEMS
    assert private_lines(report) == [
        "error private private.sqlite: private data: record user 'alice': differs from what "
        "event 2 wrote (not repaired: restore from a backup)"
    ]


def test_key_order_and_spacing_do_not_matter(serverdir: Path) -> None:
    value = json.dumps({"title": "x", "bases": ["root/pypi"], "type": "stage"}, indent=2)
    sql(serverdir, f"UPDATE records SET value = '{value}' WHERE name = 'alice/dev'")
    assert private_lines(check(serverdir)) == []


def test_a_missing_and_an_extra_record_are_errors(serverdir: Path) -> None:
    sql(
        serverdir,
        "DELETE FROM records WHERE kind = 'token'",
        "INSERT INTO records VALUES ('user', 'mallory', '{}', 1)",
    )
    lines = private_lines(check(serverdir))
    assert len(lines) == 2, lines
    assert "record token 't1': written by event 6 but absent from the records" in lines[0]
    assert "record user 'mallory': in the records but no event leaves it there" in lines[1]


def test_a_deleted_record_coming_back_is_an_error(serverdir: Path) -> None:
    sql(serverdir, "INSERT INTO records VALUES ('index', 'alice/tmp', '{\"type\": \"stage\"}', 4)")
    lines = private_lines(check(serverdir))
    assert lines and "record index 'alice/tmp': in the records but no event" in lines[0]


def test_a_record_that_is_not_json_is_an_error(serverdir: Path) -> None:
    sql(serverdir, "UPDATE records SET value = '{half' WHERE name = 'alice'")
    lines = private_lines(check(serverdir))
    assert len(lines) == 1 and "record user 'alice': not JSON" in lines[0], lines


def test_an_event_that_cannot_be_read_is_an_error(serverdir: Path) -> None:
    sql(serverdir, "UPDATE events SET changes = 'nope' WHERE serial = 3")
    lines = private_lines(check(serverdir))
    assert len(lines) == 1 and "event 3 cannot be read" in lines[0], lines


def test_a_record_from_the_future_is_an_error(serverdir: Path) -> None:
    sql(serverdir, "UPDATE records SET serial = 99 WHERE name = 'alice'")
    lines = private_lines(check(serverdir))
    assert any("serial 99 is after the last event's (8)" in line for line in lines), lines


def test_a_wrong_serial_mark_is_a_warning(serverdir: Path) -> None:
    sql(serverdir, "UPDATE records SET serial = 0 WHERE name = 'alice'")
    report = check(serverdir)
    assert private_lines(report) == [
        "warning private private.sqlite: private data: record user 'alice': marked serial 0, "
        "last written by event 2"
    ]
    assert report.exit_status == EXIT_CLEAN


def test_an_index_without_its_owner_is_an_error(serverdir: Path) -> None:
    database = PrivateDatabase.in_serverdir(serverdir)
    database.open()
    delete(database, "user", "alice")
    database.close()
    report = check(serverdir)
    lines = private_lines(report)
    assert any("index 'alice/dev': its owner 'alice' is no user" in line for line in lines)
    assert any(line.startswith("warning") and "token 't1'" in line for line in lines), lines
    assert report.exit_status == EXIT_PROBLEMS


def test_a_missing_base_is_a_warning(serverdir: Path) -> None:
    database = PrivateDatabase.in_serverdir(serverdir)
    database.open()
    put(database, "index", "alice/dev", {"type": "stage", "bases": ["alice/gone"]})
    database.close()
    report = check(serverdir)
    assert private_lines(report) == [
        "warning private private.sqlite: private data: index 'alice/dev': its base "
        "'alice/gone' is no index"
    ]
    assert report.exit_status == EXIT_CLEAN


def test_many_mismatches_are_listed_up_to_a_limit(serverdir: Path) -> None:
    rows = ", ".join(f"('user', 'u{n}', '{{}}', 1)" for n in range(MAX_LISTED + 5))
    sql(serverdir, f"INSERT INTO records VALUES {rows}")
    lines = private_lines(check(serverdir))
    assert len(lines) == MAX_LISTED + 1
    assert lines[-1].endswith("5 more record mismatches not listed")


def test_a_damaged_file_fails_the_integrity_check(serverdir: Path) -> None:
    path = serverdir / FILENAME
    sql(serverdir, "PRAGMA wal_checkpoint(TRUNCATE)")
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) > 2 * page
    data[page + 100 : 2 * page] = b"\xff" * (page - 100)  # a b-tree page's content
    path.write_bytes(bytes(data))
    report = check(serverdir)
    lines = private_lines(report)
    assert lines and all(line.startswith("error private") for line in lines), lines
    assert report.exit_status == EXIT_PROBLEMS


def test_not_a_database_is_an_error(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"not sqlite at all, just some bytes " * 200)
    lines = private_lines(check(tmp_path))
    assert len(lines) == 1 and "private data: cannot read it" in lines[0], lines


def test_the_command_exits_1_and_repair_changes_nothing(serverdir: Path) -> None:
    assert run_fsck(serverdir).returncode == EXIT_CLEAN
    sql(serverdir, "DELETE FROM events WHERE serial = 5")
    before = (serverdir / FILENAME).read_bytes()
    result = run_fsck(serverdir, "--repair")
    assert result.returncode == EXIT_PROBLEMS, result.stdout + result.stderr
    assert "(not repaired: restore from a backup)" in result.stdout
    assert (serverdir / FILENAME).read_bytes() == before
