"""``devpid init``, ``devpid passwd`` and ``devpid token``, run as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devpid.auth.passwords import verify_password
from devpid.auth.tokens import api_token_digest
from devpid.private.data import PrivateData
from devpid.private.database import PrivateDatabase
from tests.fixtures.devpid_process import REPO_ROOT

UPSTREAM = "http://localhost:9/simple/"


def devpid(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(
        [sys.executable, "-m", "devpid.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def data_of(serverdir: Path) -> PrivateData:
    database = PrivateDatabase(serverdir / "private.sqlite")
    database.open()
    return PrivateData(database)


def test_init_passwd_and_tokens(tmp_path: Path) -> None:
    serverdir = tmp_path / "srv"
    done = devpid(
        "init", "--serverdir", str(serverdir), "--root-passwd", "s3cret", "--upstream", UPSTREAM
    )
    assert done.returncode == 0, done.stderr
    assert "root and root/pypi" in done.stdout
    # read before this process opens it with SQLite: closing another descriptor of
    # the file would drop SQLite's POSIX locks on it
    assert b"s3cret" not in (serverdir / "private.sqlite").read_bytes()
    data = data_of(serverdir)
    root = data.user("root")
    assert root is not None and verify_password(root["pwhash"], "s3cret")
    assert data.index("root/pypi") is not None
    again = devpid("init", "--serverdir", str(serverdir), "--upstream", UPSTREAM)
    assert again.returncode == 1 and "already initialised" in again.stderr

    done = devpid("passwd", "--serverdir", str(serverdir), "root", stdin="n3w\n")
    assert done.returncode == 0, done.stderr
    data.catch_up()
    root = data.user("root")
    assert root is not None and verify_password(root["pwhash"], "n3w")
    assert devpid("passwd", "--serverdir", str(serverdir), "nobody", stdin="x\n").returncode == 1

    # options may follow the user, as people type them
    created = devpid(
        "token",
        "--serverdir",
        str(serverdir),
        "create",
        "root",
        "--index",
        "root/pypi",
        "--description",
        "CI",
    )
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("devpid_")
    data.catch_up()
    [(token_id, record)] = data.tokens_of("root").items()
    assert record["digest"] == api_token_digest(token) and token not in str(record)
    assert record["indexes"] == ["root/pypi"] and record["description"] == "CI"
    listed = devpid("token", "--serverdir", str(serverdir), "list", "root")
    assert token_id in listed.stdout and token not in listed.stdout
    bad = devpid("token", "--serverdir", str(serverdir), "create", "root", "--index", "no/such")
    assert bad.returncode == 1 and "no index" in bad.stderr
    revoked = devpid("token", "--serverdir", str(serverdir), "revoke", "root", token_id)
    assert revoked.returncode == 0, revoked.stderr
    data.catch_up()
    assert data.tokens_of("root") == {}


def test_init_without_root_pypi_and_with_a_hash(tmp_path: Path) -> None:
    from devpid.auth.passwords import hash_password

    pwhash = hash_password("hashed")
    serverdir = tmp_path / "srv"
    done = devpid(
        "init",
        "--serverdir",
        str(serverdir),
        "--no-root-pypi",
        "--root-passwd-hash",
        pwhash,
        "--upstream",
        UPSTREAM,
    )
    assert done.returncode == 0, done.stderr
    data = data_of(serverdir)
    assert data.index("root/pypi") is None
    root = data.user("root")
    assert root is not None and root["pwhash"] == pwhash
    bad = devpid("init", "--serverdir", str(tmp_path / "other"), "--root-passwd-hash", "plain")
    assert bad.returncode == 1 and "argon2" in bad.stderr
