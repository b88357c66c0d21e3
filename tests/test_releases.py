"""Releases as transactions: storing files, devpi's volatile rules, the race, deleting, pushing,
yanking, and the indexes the records keep by project and by file."""

from __future__ import annotations

from pathlib import Path

import pytest

from devpid.private.data import PrivateData, Refused
from devpid.private.database import PrivateDatabase
from devpid.private.init import initialize
from devpid.private.releases import (
    DOCZIP,
    RELEASE,
    TOXRESULT,
    NewFile,
    Releases,
    Stored,
    entrypath,
)
from devpid.private.userconfig import NewUser

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"
SHA_A = "a" * 64
SHA_B = "b" * 64


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


def opened(path: Path) -> tuple[PrivateData, Releases]:
    database = PrivateDatabase(path / "private.sqlite")
    database.open()
    data = PrivateData(database)
    return data, Releases(database, Clock())


@pytest.fixture
def setup(tmp_path: Path) -> tuple[PrivateData, Releases]:
    data, releases = opened(tmp_path)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    data.create_user("alice", NewUser("pw", None, {}), HASH, None)
    data.create_index("alice", "dev", {"bases": "root/pypi"}, "alice")
    data.create_index("alice", "prod", {"volatile": False}, "alice")
    return data, releases


def wheel(index: str, sha: str = SHA_A, version: str = "1.0") -> NewFile:
    return NewFile(RELEASE, entrypath(index, sha, f"hello-{version}-py3-none-any.whl"), sha, 10)


META = {"name": "Hello", "version": "1.0", "summary": "hi", "bogus": "dropped"}


def test_a_first_upload_registers_the_version_with_defaults(setup: tuple) -> None:
    data, releases = setup
    change = releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    assert change.stored is Stored.NEW and change.unlinked == ()
    value = data.versions("alice/dev", "hello")["1.0"]
    assert value["name"] == "Hello" and value["summary"] == "hi" and "bogus" not in value
    assert value["classifiers"] == [] and value["home_page"] == ""
    (link,) = value["+links"]
    assert link["entrypath"] == "alice/dev/+f/aaa/aaaaaaaaaaaaa/hello-1.0-py3-none-any.whl"
    assert [entry["what"] for entry in link["log"]] == ["upload"]
    assert link["log"][0]["who"] == "alice" and len(link["log"][0]["when"]) == 6
    assert link["serial"] == change.serial
    assert data.version_of_file(link["entrypath"]) == "alice/dev/hello/1.0"
    assert data.projects("alice/dev") == ["hello"]
    assert data.project_serial("alice/dev", "hello") == change.serial


def test_volatile_overwrite_logs_and_unlinks_the_old_file(setup: tuple) -> None:
    data, releases = setup
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    serial = data.serial
    change = releases.store(
        "alice/dev", "hello", "1.0", META, wheel("alice/dev", SHA_B), "alice", serial
    )
    (link,) = data.versions("alice/dev", "hello")["1.0"]["+links"]
    assert link["hashes"]["sha256"] == SHA_B
    assert [entry["what"] for entry in link["log"]] == ["overwrite", "upload"]
    assert link["log"][0]["count"] == 1
    old = entrypath("alice/dev", SHA_A, "hello-1.0-py3-none-any.whl")
    assert change.unlinked == (old,)
    assert data.tombstone(old) is not None and data.version_of_file(old) is None


def test_non_volatile_identical_is_200_and_different_is_409(setup: tuple) -> None:
    data, releases = setup
    releases.store("alice/prod", "hello", "1.0", META, wheel("alice/prod"), "alice", -1)
    serial = data.serial
    again = releases.store("alice/prod", "hello", "1.0", META, wheel("alice/prod"), None, serial)
    assert again.stored is Stored.IDENTICAL and again.serial == serial
    with pytest.raises(Refused) as refused:
        releases.store("alice/prod", "hello", "1.0", META, wheel("alice/prod", SHA_B), None, 9)
    assert refused.value.code == 409
    assert "already exists in non-volatile index" in refused.value.message


def test_an_upload_that_started_before_another_finished_loses(setup: tuple) -> None:
    data, releases = setup
    started = data.serial  # both uploads start now
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", started)
    with pytest.raises(Refused) as refused:
        releases.store(
            "alice/dev", "hello", "1.0", META, wheel("alice/dev", SHA_B), "alice", started
        )
    assert refused.value.code == 409 and "at the same time" in refused.value.message


def test_mirrors_and_missing_stages_take_no_uploads(setup: tuple) -> None:
    _, releases = setup
    with pytest.raises(Refused) as refused:
        releases.store("root/pypi", "hello", "1.0", META, wheel("root/pypi"), None, -1)
    assert refused.value.code == 404 and "mirror" in refused.value.message
    with pytest.raises(Refused):
        releases.store("nobody/x", "hello", "1.0", META, wheel("nobody/x"), None, -1)


def test_deleting_a_release_takes_its_toxresults_and_then_the_version(setup: tuple) -> None:
    data, releases = setup
    release = wheel("alice/dev")
    releases.store("alice/dev", "hello", "1.0", META, release, "alice", -1)
    tox = NewFile(
        TOXRESULT, release.entrypath + ".toxresult-1-0", SHA_B, 3, None, release.entrypath
    )
    releases.store_toxresult("alice/dev", release.entrypath, tox, None)
    links = data.versions("alice/dev", "hello")["1.0"]["+links"]
    assert [link["rel"] for link in links] == [RELEASE, TOXRESULT]
    change = releases.delete_file("alice/dev", release.entrypath, False, "alice")
    assert set(change.unlinked) == {release.entrypath, tox.entrypath}
    assert data.versions("alice/dev", "hello") == {}
    assert data.projects("alice/dev") == []
    with pytest.raises(Refused) as refused:
        releases.delete_file("alice/dev", release.entrypath, False, "alice")
    assert refused.value.code == 410


def test_non_volatile_deletes_need_force(setup: tuple) -> None:
    data, releases = setup
    releases.store("alice/prod", "hello", "1.0", META, wheel("alice/prod"), "alice", -1)
    for attempt in (
        lambda force: releases.delete_project("alice/prod", "hello", force, "alice"),
        lambda force: releases.delete_version("alice/prod", "hello", "1.0", force, "alice"),
    ):
        with pytest.raises(Refused) as refused:
            attempt(False)
        assert refused.value.code == 403
    change = releases.delete_version("alice/prod", "hello", "1.0", True, "alice")
    assert len(change.unlinked) == 1 and data.projects("alice/prod") == []
    with pytest.raises(Refused) as refused:
        releases.delete_project("alice/prod", "hello", True, "alice")
    assert refused.value.code == 404


def test_push_copies_logs_without_overwrites_and_appends_push(setup: tuple) -> None:
    data, releases = setup
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev", SHA_B), "alice", 99)
    doc = NewFile(DOCZIP, entrypath("alice/dev", SHA_A, "hello-1.0.doc.zip"), SHA_A, 5)
    releases.store("alice/dev", "hello", "1.0", META, doc, "alice", 99)
    source = data.versions("alice/dev", "hello")["1.0"]
    copies = [
        (link, "alice/prod/" + link["entrypath"].split("/", 2)[2]) for link in source["+links"]
    ]
    change, actions = releases.push("alice/dev", "alice/prod", "hello", "1.0", copies, "alice")
    assert [row[1] for row in actions] == ["register", "store_releasefile", "store_doczip"]
    pushed = data.versions("alice/prod", "hello")["1.0"]
    assert pushed["summary"] == "hi"
    release_log = [entry["what"] for entry in pushed["+links"][0]["log"]]
    assert release_log == ["upload", "push"]
    assert pushed["+links"][0]["log"][1] | {"when": None} == {
        "what": "push",
        "who": "alice",
        "src": "alice/dev",
        "dst": "alice/prod",
        "when": None,
    }
    # non-volatile target: pushing again is refused even with the same content
    with pytest.raises(Refused) as refused:
        releases.push("alice/dev", "alice/prod", "hello", "1.0", copies, "alice")
    assert refused.value.code == 409
    assert change.serial == data.serial


def test_yank_and_unyank(setup: tuple) -> None:
    data, releases = setup
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    releases.yank("alice/dev", "hello", "1.0", "broken", "alice")
    assert data.versions("alice/dev", "hello")["1.0"]["yanked"] == "broken"
    releases.yank("alice/dev", "hello", "1.0", False, "alice")
    assert "yanked" not in data.versions("alice/dev", "hello")["1.0"]
    with pytest.raises(Refused):
        releases.yank("alice/dev", "hello", "9.9", True, "alice")


def test_another_process_sees_the_indexes_after_catching_up(tmp_path: Path) -> None:
    data, releases = opened(tmp_path)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    data.create_user("alice", NewUser("pw", None, {}), HASH, None)
    data.create_index("alice", "dev", {}, "alice")
    other, _ = opened(tmp_path)
    releases.store("alice/dev", "hello", "1.0", META, wheel("alice/dev"), "alice", -1)
    assert other.projects("alice/dev") == []
    assert other.catch_up()
    assert other.projects("alice/dev") == ["hello"]
    assert other.project_serial("alice/dev", "hello") == data.serial
    path = entrypath("alice/dev", SHA_A, "hello-1.0-py3-none-any.whl")
    assert other.version_of_file(path) == "alice/dev/hello/1.0"
    # and one that starts now loads the same indexes from the records
    fresh, _ = opened(tmp_path)
    assert fresh.version_of_file(path) == "alice/dev/hello/1.0"
    assert fresh.project_serial("alice/dev", "hello") == data.serial
    # deleting the stage removes its versions from every index
    data.delete_index("alice/dev", "alice")
    assert other.catch_up() and other.projects("alice/dev") == []
    assert other.version_of_file(path) is None


def test_one_file_links_one_version(setup: tuple) -> None:
    _, releases = setup
    path = entrypath("alice/dev", SHA_A, "hello-1.0.zip")
    releases.store("alice/dev", "hello", "1.0", META, NewFile(RELEASE, path, SHA_A, 3), None, -1)
    with pytest.raises(Refused) as refused:
        releases.store("alice/dev", "hello", "1", META, NewFile(RELEASE, path, SHA_A, 3), None, -1)
    assert refused.value.code == 409 and "hello 1.0" in refused.value.message
