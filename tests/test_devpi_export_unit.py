"""The devpi export converter on small hand-made exports, and devpi's legacy passwords.

Each export here is what ``devpi-export`` writes (``dataindex.json`` and the files at the
``relpath`` it names), cut down to what a test looks at; the real one is made by a real
devpi-server in ``test_from_devpi.py``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from devpid.auth.passwords import (
    PasswordChecker,
    hash_password,
    legacy_password_hash,
    verify_password,
)
from devpid.private.indexconfig import new_index_config
from devpid.tools.bundle.format import (
    HEADER,
    MANIFEST,
    RECORD_KINDS,
    RECORDS,
    Header,
    hash_file,
    parse_manifest,
    path_problem,
)
from devpid.tools.devpi_export import DevpiExportError, convert
from tests.fixtures.distbuilder import build_repository

WHEEL = "devpid_demo_lib-2.0-py3-none-any.whl"
SDIST = "devpid_demo_lib-2.0.tar.gz"
ALICE_HASH = hash_password("alice-pw")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _filedesc(kind: str, relpath: str, sha256: str | None, **more: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = {"last_modified": "Fri, 04 Dec 2026 16:25:58 GMT"}
    if sha256 is not None:
        mapping["hash_spec"] = f"sha256={sha256}"
    return {
        "version": "2.0",
        "entrymapping": mapping,
        "log": [{"what": "upload", "who": "alice", "when": [2026, 12, 4, 16, 25, 58]}],
        "type": kind,
        "projectname": "devpid-demo-lib",
        "relpath": relpath,
        **more,
    }


def make_export(root: Path) -> dict[str, Any]:
    """A devpi export: two users, a stage with a wheel, an sdist, docs and a tox result, a
    plugin's index, and a mirror; returns its dataindex (also written)."""
    repo = build_repository(root / "repo")
    export = root / "export"
    release_dir = export / "alice/dev/devpid-demo-lib/2.0"
    release_dir.mkdir(parents=True)
    for name in (WHEEL, SDIST):
        (release_dir / name).write_bytes(repo.path(name).read_bytes())
    wheel_sha = _sha256(release_dir / WHEEL)
    (export / "alice/dev/devpid-demo-lib-2.0.doc.zip").write_bytes(
        repo.path(WHEEL).read_bytes()  # any zip will do
    )
    tox_dir = export / f"alice/dev/devpid-demo-lib/sha256={wheel_sha}"
    tox_dir.mkdir(parents=True)
    tox_name = f"{WHEEL}.toxresult-20261204162600-0"
    (tox_dir / tox_name).write_text('{"reportversion": "1"}')
    versiondata = {
        "name": "devpid_demo_lib",
        "version": "2.0",
        "summary": "the lib",
        "requires_python": ">=3.8",
        "yanked": True,
        "+elinks": [],
        "some_plugin_key": "x",
    }
    dataindex = {
        "dumpversion": "2",
        "devpi_server": "6.20.3",
        "pythonversion": [3, 11, 7, "final", 0],
        "users": {
            "root": {"pwhash": ALICE_HASH, "username": "root", "created": "2026-01-01T00:00:00Z"},
            "alice": {
                "pwhash": ALICE_HASH,
                "email": "alice@example.org",
                "title": "",
                "username": "alice",
                "indexes": {},
                "created": "2026-01-02T00:00:00Z",
            },
            "carol": {"pwsalt": "c2FsdA==", "pwhash": legacy_password_hash("c2FsdA==", "pw")},
            "bad name!": {"pwhash": ALICE_HASH},
        },
        "indexes": {
            "alice/dev": {
                "indexconfig": {
                    "type": "stage",
                    "bases": ["root/pypi", "alice/gone", "alice/plugin"],
                    "volatile": "False",
                    "acl_upload": ["alice", ":anonymous:"],
                    "acl_toxresult_upload": [":ANONYMOUS:"],
                    "pypi_whitelist": ["Devpid_Demo_Lib"],
                    "uploadtrigger_jenkins": None,
                    "push_target": "somewhere",
                    "title": "Dev",
                },
                "projects": {"devpid-demo-lib": {"2.0": versiondata}},
                "files": [
                    _filedesc("releasefile", f"alice/dev/devpid-demo-lib/2.0/{WHEEL}", wheel_sha),
                    _filedesc("releasefile", f"alice/dev/devpid-demo-lib/2.0/{SDIST}", None),
                    _filedesc(
                        "toxresult",
                        f"alice/dev/devpid-demo-lib/sha256={wheel_sha}/{tox_name}",
                        # devpi-server 6.5-6.8 recorded the release's hash for a tox result
                        wheel_sha,
                        for_entrypath=f"alice/dev/+f/{wheel_sha[:3]}/{wheel_sha[3:16]}/{WHEEL}",
                    ),
                    _filedesc("doczip", "alice/dev/devpid-demo-lib-2.0.doc.zip", None),
                ],
            },
            "alice/plugin": {"indexconfig": {"type": "constrained"}},
            "alice/vetted": {
                "indexconfig": {
                    "type": "constrained",
                    "bases": ["root/pypi"],
                    "constraints": ["pip<8,>4", "*"],
                    "acl_upload": ["alice"],
                }
            },
            "root/pypi": {
                "indexconfig": {
                    "type": "mirror",
                    "volatile": False,
                    "mirror_url": "http://127.0.0.1:9/simple/",
                    "mirror_cache_expiry": "600",
                },
                "projects": {},
                "files": [{"type": "releasefile", "relpath": "root/pypi/x/1.0/x-1.0.tar.gz"}],
            },
        },
    }
    (export / "dataindex.json").write_text(json.dumps(dataindex, indent=2))
    return dataindex


@pytest.fixture
def export(tmp_path: Path) -> Path:
    make_export(tmp_path)
    return tmp_path / "export"


def _bundle(tmp_path: Path, name: str = "bundle") -> Path:
    bundle = tmp_path / name
    bundle.mkdir()
    return bundle


def read_records(bundle: Path) -> dict[str, dict[str, Any]]:
    records: dict[str, dict[str, Any]] = {kind: {} for kind in RECORD_KINDS}
    kinds_in_order = []
    for line in (bundle / RECORDS).read_bytes().splitlines():
        record = json.loads(line)
        kinds_in_order.append(record["kind"])
        records[record["kind"]][record["name"]] = record["value"]
    assert kinds_in_order == sorted(kinds_in_order, key=RECORD_KINDS.index)
    return records


def assert_whole(bundle: Path) -> None:
    """The bundle as the format says: header, manifest of every other file, hashes right."""
    header = Header.from_bytes((bundle / HEADER).read_bytes())
    assert hash_file(bundle / MANIFEST)[1] == header.manifest_sha256
    entries = parse_manifest((bundle / MANIFEST).read_bytes())
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if not p.is_dir()}
    assert on_disk == {HEADER, MANIFEST, *(e.path for e in entries)}
    for entry in entries:
        assert path_problem(entry.path) is None, entry.path
        assert hash_file(bundle / entry.path) == (entry.size, entry.sha256)
    assert header.counts == {
        "records": len((bundle / RECORDS).read_bytes().splitlines()),
        "files": len(entries),
        "bytes": sum(e.size for e in entries),
    }


def test_a_small_export_becomes_a_whole_bundle(export: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    convert(export, bundle)
    assert_whole(bundle)
    header = json.loads((bundle / HEADER).read_bytes())
    assert header["source"]["kind"] == "devpi-server"
    assert header["source"]["version"] == "6.20.3"
    assert header["mirror"] == "none"


def test_users_keep_their_hashes_and_lose_devpis_computed_keys(
    export: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path)
    warnings = convert(export, bundle)
    users = read_records(bundle)["user"]
    assert sorted(users) == ["alice", "carol", "root"]
    assert users["alice"] == {
        "pwhash": ALICE_HASH,
        "email": "alice@example.org",
        "created": "2026-01-02T00:00:00Z",
    }
    assert users["carol"]["pwsalt"] == "c2FsdA=="
    assert verify_password(users["carol"]["pwhash"], "pw", users["carol"]["pwsalt"])
    assert users["carol"]["created"] == "1970-01-01T00:00:00Z"
    assert any("'bad name!' not carried over" in w for w in warnings)
    assert any("carol" in w and "legacy" in w for w in warnings)


def test_index_configurations_are_stored_as_devpid_stores_them(
    export: Path, tmp_path: Path
) -> None:
    bundle = _bundle(tmp_path)
    warnings = convert(export, bundle)
    indexes = read_records(bundle)["index"]
    assert sorted(indexes) == ["alice/dev", "alice/vetted", "root/pypi"]
    dev = indexes["alice/dev"]
    assert dev == {
        "type": "stage",
        "volatile": False,
        "bases": ["root/pypi"],
        "acl_upload": ["alice", ":ANONYMOUS:"],
        "acl_toxresult_upload": [":ANONYMOUS:"],
        "mirror_whitelist": ["devpid-demo-lib"],
        "mirror_whitelist_inheritance": "intersection",
        "title": "Dev",
    }
    assert indexes["root/pypi"] == {
        "type": "mirror",
        "volatile": False,
        "mirror_url": "http://127.0.0.1:9/simple/",
        "mirror_cache_expiry": 600,
    }
    # stored as devpid stores it: creating it again gives it back unchanged
    for name, config in indexes.items():
        again = new_index_config(
            name.partition("/")[0], config, index_exists=lambda _: True, default_cache_expiry=0
        )
        assert again == config
    assert any("alice/plugin not carried over" in w and "constrained" in w for w in warnings)
    assert "alice/plugin" not in indexes and "alice/plugin" not in indexes["alice/dev"]["bases"]
    assert indexes["alice/vetted"]["type"] == "constrained"
    assert indexes["alice/vetted"]["constraints"] == ["pip<8,>4", "*"]
    assert any("push_target" in w for w in warnings)
    assert any("alice/gone" in w for w in warnings)
    assert any("1 cached files of the mirror" in w for w in warnings)


def test_versions_link_their_files_where_devpi_had_them(export: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    warnings = convert(export, bundle)
    versions = read_records(bundle)["version"]
    assert list(versions) == ["alice/dev/devpid-demo-lib/2.0"]
    value = versions["alice/dev/devpid-demo-lib/2.0"]
    assert value["name"] == "devpid_demo_lib" and value["summary"] == "the lib"
    assert value["yanked"] is True
    assert value["classifiers"] == [] and value["license"] == ""  # devpi's defaults
    assert "+elinks" not in value and "some_plugin_key" not in value
    assert any("some_plugin_key" in w for w in warnings)
    rels = [link["rel"] for link in value["+links"]]
    assert rels == ["releasefile", "toxresult", "releasefile", "doczip"]
    for link in value["+links"]:
        path = bundle / "files" / link["entrypath"]
        sha256 = _sha256(path)
        assert link["hashes"] == {"sha256": sha256}
        assert link["size"] == path.stat().st_size
        if link["rel"] != "toxresult":  # which lives beside its release
            h3, h13 = link["entrypath"].split("/")[3:5]
            assert sha256.startswith(h3 + h13)
        assert link["serial"] == 0
        assert link["log"][0]["who"] == "alice"
        assert link["upload_time"] == "2026-12-04T16:25:58.000000Z"
    wheel, tox, sdist, doc = value["+links"]
    assert wheel["entrypath"].endswith("/" + WHEEL)
    metadata = bundle / "files" / (wheel["entrypath"] + ".metadata")
    assert wheel["core_metadata"] == {"sha256": _sha256(metadata)}
    assert metadata.read_bytes().startswith(b"Metadata-Version")
    assert "core_metadata" not in sdist
    assert tox["for_entrypath"] == wheel["entrypath"]
    assert tox["entrypath"] == wheel["entrypath"] + ".toxresult-20261204162600-0"
    assert doc["entrypath"].endswith("/devpid-demo-lib-2.0.doc.zip")


def test_converting_twice_gives_the_same_records_and_files(export: Path, tmp_path: Path) -> None:
    first, second = _bundle(tmp_path, "one"), _bundle(tmp_path, "two")
    assert convert(export, first) == convert(export, second)
    assert (first / RECORDS).read_bytes() == (second / RECORDS).read_bytes()
    assert (first / MANIFEST).read_bytes() == (second / MANIFEST).read_bytes()


def test_files_are_hard_linked_or_copied(
    export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    linked = _bundle(tmp_path, "linked")
    convert(export, linked)
    wheel = next(linked.rglob(WHEEL))
    assert os.path.samefile(wheel, export / "alice/dev/devpid-demo-lib/2.0" / WHEEL)

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    copied = _bundle(tmp_path, "copied")
    convert(export, copied)
    assert_whole(copied)
    assert (linked / MANIFEST).read_bytes() == (copied / MANIFEST).read_bytes()
    assert not os.path.samefile(next(copied.rglob(WHEEL)), wheel)


def test_a_damaged_file_is_refused(export: Path, tmp_path: Path) -> None:
    wheel = export / "alice/dev/devpid-demo-lib/2.0" / WHEEL
    data = bytearray(wheel.read_bytes())
    data[100] ^= 1
    wheel.write_bytes(bytes(data))
    with pytest.raises(DevpiExportError, match=f"{WHEEL}: its sha256 is .* the export says"):
        convert(export, _bundle(tmp_path))


def test_a_missing_file_is_refused(export: Path, tmp_path: Path) -> None:
    (export / "alice/dev/devpid-demo-lib/2.0" / SDIST).unlink()
    with pytest.raises(DevpiExportError, match=f"{SDIST}: listed in the export but missing"):
        convert(export, _bundle(tmp_path))


def test_a_path_outside_the_export_is_refused(export: Path, tmp_path: Path) -> None:
    dataindex = json.loads((export / "dataindex.json").read_text())
    dataindex["indexes"]["alice/dev"]["files"][1]["relpath"] = "../repo/files/" + SDIST
    (export / "dataindex.json").write_text(json.dumps(dataindex))
    with pytest.raises(DevpiExportError, match="outside itself"):
        convert(export, _bundle(tmp_path))


@pytest.mark.parametrize("dumpversion", ["3", None])
def test_an_unknown_dumpversion_is_refused(
    export: Path, tmp_path: Path, dumpversion: str | None
) -> None:
    dataindex = json.loads((export / "dataindex.json").read_text())
    dataindex["dumpversion"] = dumpversion
    (export / "dataindex.json").write_text(json.dumps(dataindex))
    with pytest.raises(DevpiExportError, match=f"dumpversion {dumpversion!r} is not one"):
        convert(export, _bundle(tmp_path))


def test_not_an_export_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DevpiExportError, match=r"has no dataindex\.json"):
        convert(tmp_path / "empty", _bundle(tmp_path))


def test_dumpversion_1_files_take_their_version_from_their_name(
    export: Path, tmp_path: Path
) -> None:
    dataindex = json.loads((export / "dataindex.json").read_text())
    dataindex["dumpversion"] = "1"
    files = dataindex["indexes"]["alice/dev"]["files"]
    for filedesc in files:
        filedesc.pop("version")
        filedesc["entrymapping"].pop("last_modified")
    dataindex["indexes"]["alice/dev"]["files"] = files[:2]  # release files only
    (export / "dataindex.json").write_text(json.dumps(dataindex))
    bundle = _bundle(tmp_path)
    convert(export, bundle)
    links = read_records(bundle)["version"]["alice/dev/devpid-demo-lib/2.0"]["+links"]
    assert [link["entrypath"].rpartition("/")[2] for link in links] == [WHEEL, SDIST]
    # the time of the log entry, without devpi's last_modified
    assert links[0]["last_modified"] == 1796401558.0


def test_a_non_empty_bundle_directory_is_refused(export: Path, tmp_path: Path) -> None:
    bundle = _bundle(tmp_path)
    (bundle / "something").write_text("x")
    with pytest.raises(DevpiExportError, match="is not empty"):
        convert(export, bundle)


# -- devpi's legacy passwords ------------------------------------------------------------


def test_legacy_hashes_are_devpis_salted_sha256() -> None:
    salt = "c2FsdA=="
    assert (
        legacy_password_hash(salt, "pässword")
        == hashlib.sha256(salt.encode("ascii") + "pässword".encode()).hexdigest()
    )
    pwhash = legacy_password_hash(salt, "right")
    assert verify_password(pwhash, "right", salt)
    assert not verify_password(pwhash, "wrong", salt)
    assert not verify_password(pwhash, "right", "other-salt")
    assert not verify_password(pwhash.upper(), "right", salt)  # devpi wrote lower case hex
    assert not verify_password(pwhash, "right", "sälz")
    assert not verify_password(pwhash, "right")  # without the salt it is no argon2 hash
    assert not verify_password(ALICE_HASH, "alice-pw", salt)


def test_the_password_checker_checks_legacy_hashes_and_remembers_them() -> None:
    calls: list[bool] = []

    def offload(work: Any) -> Deferred[bool]:
        calls.append(work())
        return succeed(calls[-1])

    checker = PasswordChecker(offload=offload, clock=Clock())
    pwhash = legacy_password_hash("c2FsdA==", "pw")

    def check(password: str, salt: str | None) -> bool:
        result: list[bool] = []
        Deferred.fromCoroutine(checker.check("carol", pwhash, password, salt)).addCallback(
            result.append
        )
        return result[0]

    assert check("pw", "c2FsdA==")
    assert check("pw", "c2FsdA==")
    assert not check("nope", "c2FsdA==")
    assert not check("pw", None)  # the same hash read as argon2: another key, and wrong
    assert calls == [True, False, False]


def test_a_symlink_out_of_the_export_is_refused(export: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / SDIST).write_bytes(b"not from the export")
    release_dir = export / "alice/dev/devpid-demo-lib/2.0"
    (release_dir / SDIST).unlink()
    release_dir.rename(export / "moved")
    release_dir.symlink_to(outside)
    with pytest.raises(DevpiExportError, match="outside itself"):
        convert(export, _bundle(tmp_path))
