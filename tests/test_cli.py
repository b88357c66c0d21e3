"""The first things a new user types: --version, --help, devpi-server's options."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from twisted.copyright import version as twisted_version
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher

from devpid import __version__
from devpid.config import ConfigError
from devpid.service import CacheService
from devpid.tap import Options, check_writable, makeService
from tests.fixtures.devpid_process import devpid_env

UPSTREAM = "http://127.0.0.1:1/simple/"


def run_devpid(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``devpid`` console command, as ``python -m devpid.cli``."""
    return subprocess.run(
        [sys.executable, "-m", "devpid.cli", *args],
        cwd=tmp_path,
        env=devpid_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_version_names_devpid_and_twisted(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--version"])
    assert exit.value.code == 0
    assert capsys.readouterr().out == f"devpid {__version__} (Twisted {twisted_version})\n"


def test_devpid_version_command(tmp_path: Path) -> None:
    result = run_devpid(tmp_path, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"devpid {__version__} (Twisted {twisted_version})"


def test_devpid_help_names_the_subcommands_and_the_example_ini(tmp_path: Path) -> None:
    result = run_devpid(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[:3]
    assert [line.split()[:2] for line in first] == [
        ["devpid", "[options]"],
        ["devpid", "gen-config"],
        ["devpid", "fsck"],
    ]
    assert "--listen" in result.stdout and "--version" in result.stdout
    assert "etc/devpid.ini in devpid's source" in " ".join(result.stdout.split())


@pytest.mark.parametrize("subcommand", ["gen-config", "fsck"])
def test_subcommand_help_still_works(tmp_path: Path, subcommand: str) -> None:
    result = run_devpid(tmp_path, subcommand, "--help")
    assert result.returncode == 0, result.stderr
    assert "devpid [options]" not in result.stdout  # not the main command's preamble


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["--port", "3142"], "--port is devpi-server's option; devpid's is --listen tcp:3142"),
        (["--port=3142"], "devpid's is --listen tcp:3142"),
        (["--host", "0.0.0.0"], "devpid's is --listen tcp:PORT:interface=0.0.0.0"),
        (["--host"], "devpid's is --listen tcp:PORT:interface=HOST"),
        (["--offline-mode"], "--offline-mode is devpi-server's option; devpid's is --offline"),
        (["--init"], "not needed: devpid prepares an empty --serverdir at start"),
    ],
)
def test_devpi_server_options_get_devpids_equivalent_and_status_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], hint: str
) -> None:
    with pytest.raises(SystemExit) as exit:
        Options().parseOptions(["--serverdir", "/tmp/x", *argv])
    assert exit.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and hint in lines[0], lines


def test_serverdir_is_spelled_as_devpi_server_spells_it() -> None:
    options = Options()
    options.parseOptions(["--serverdir=/srv/devpid"])
    assert options["serverdir"] == "/srv/devpid"


def make(reactor: Any, *argv: str) -> Any:
    options = Options()
    options.parseOptions(["--upstream", UPSTREAM, *argv])
    return makeService(options, reactor)


def test_a_bare_port_number_asks_did_you_mean_tcp(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit:
        make(MemoryReactor(), "--listen", "3142", "--serverdir", str(tmp_path / "sd"))
    assert str(exit.value.code).endswith("did you mean tcp:3142?")
    assert not (tmp_path / "sd").exists()


def test_an_unwritable_serverdir_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(SystemExit) as exit:
        make(MemoryReactor(), "--listen", "tcp:0", "--serverdir", str(tmp_path))
    assert exit.value.code == f"twistd devpid: error: --serverdir {tmp_path} is not writable: " + (
        "Permission denied"
    )


def test_check_writable_leaves_nothing_behind(tmp_path: Path) -> None:
    check_writable(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="is not writable"):
        check_writable(tmp_path / "missing")


def test_a_start_that_creates_the_serverdir_says_so(tmp_path: Path) -> None:
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        make(MemoryReactor(), "--listen", "tcp:0", "--serverdir", str(tmp_path / "new"))
        make(MemoryReactor(), "--listen", "tcp:0", "--serverdir", str(tmp_path / "new"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    created = [e for e in events if e.get("log_format") == "created serverdir {path}"]
    assert [e["path"] for e in created] == [str(tmp_path / "new")]  # the first start only


class _Downloads:
    def __init__(self, count: int) -> None:
        self.running = {f"file-{n}": object() for n in range(count)}

    def drain(self) -> Any:
        return succeed(None)

    def unlocked(self) -> Any:
        return succeed(None)


class _Store:
    async def close(self) -> None:
        pass


class _Census:
    stopping = False


class _Files:
    """What stopping uses of the file store: its census, told to stop walking."""

    census = _Census()


@pytest.mark.parametrize(("count", "said"), [(1, "1 download"), (2, "2 downloads")])
def test_waiting_for_downloads_is_singular_for_one(count: int, said: str) -> None:
    service: Any = CacheService(
        _Files(),
        _Store(),
        None,
        _Downloads(count),
        None,
        Clock(),
        shutdown_grace=5.0,  # type: ignore[arg-type]
    )

    async def no_stats() -> None:
        pass

    service.flush_stats = no_stats
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        service.stopService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    texts = [formatEvent(e) for e in events]
    assert f"waiting up to 5.0s for {said}" in texts, texts
