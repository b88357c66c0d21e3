"""devpi-server in a throwaway venv, its root/pypi mirror pointed at the local upstream.

The setup, as the commands it runs (each also saved in the JSON's ``devpi_setup``)::

    python -m venv VENV && VENV/bin/pip install devpi-server devpi-client   # once, then reused
    VENV/bin/devpi-init --serverdir DIR --no-root-pypi
    VENV/bin/devpi-server --serverdir DIR --host 127.0.0.1 --port PORT
    VENV/bin/devpi use --clientdir CDIR http://127.0.0.1:PORT/
    VENV/bin/devpi login --clientdir CDIR root --password ''
    VENV/bin/devpi index --clientdir CDIR -c root/pypi type=mirror mirror_url=UPSTREAM/simple/
    VENV/bin/devpi index --clientdir CDIR -c root/slow type=mirror mirror_url=SLOW_UPSTREAM/simple/

``--no-root-pypi`` keeps devpi-server from ever creating the default root/pypi,
whose mirror_url is the public index; the mirror is created already pointing at
the loopback upstream, so devpi never reaches for the network.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from devpid_bench.procs import BenchError, ProcessGroup, Server, free_port, wait_for_http

DEFAULT_VENV = Path("/tmp/devpid-bench-venv")


def ensure_venv(venv: Path, log: list[str]) -> Path:
    """Create ``venv`` with devpi-server and devpi-client unless it already has them."""
    bin_dir = venv / "bin"
    if all((bin_dir / tool).exists() for tool in ("devpi-server", "devpi-init", "devpi")):
        return bin_dir
    _run(log, [sys.executable, "-m", "venv", str(venv)], timeout=120)
    _run(
        log,
        [str(bin_dir / "pip"), "install", "--quiet", "devpi-server", "devpi-client"],
        timeout=900,
    )
    return bin_dir


def devpi_version(bin_dir: Path) -> str:
    result = subprocess.run(
        [str(bin_dir / "devpi-server"), "--version"], capture_output=True, text=True, timeout=60
    )
    return (result.stdout or result.stderr).strip()


def server_argv(bin_dir: Path, port: int, serverdir: Path) -> list[str]:
    """devpi-server on loopback with its defaults (argon2 included), as users run it."""
    return [
        str(bin_dir / "devpi-server"),
        "--serverdir",
        str(serverdir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def start_devpi(
    procs: ProcessGroup,
    bin_dir: Path,
    workdir: Path,
    mirrors: dict[str, str],
    log: list[str],
) -> Server:
    """Start devpi-server with a fresh serverdir; ``mirrors`` maps index name to mirror_url."""
    serverdir = workdir / "devpi-serverdir"
    clientdir = workdir / "devpi-clientdir"
    _run(log, [str(bin_dir / "devpi-init"), "--serverdir", str(serverdir), "--no-root-pypi"])
    port = free_port()
    argv = server_argv(bin_dir, port, serverdir)
    log.append(" ".join(argv))
    child = procs.start("devpi-server", argv, cwd=workdir)
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(child, url + "+api", timeout=120.0)
    client = [str(bin_dir / "devpi")]
    _run(log, [*client, "use", "--clientdir", str(clientdir), url])
    _run(log, [*client, "login", "--clientdir", str(clientdir), "root", "--password", ""])
    for index, mirror_url in mirrors.items():
        _run(
            log,
            [
                *client,
                "index",
                "--clientdir",
                str(clientdir),
                "-c",
                index,
                "type=mirror",
                f"mirror_url={mirror_url}",
            ],
        )
    return Server(child=child, url=url)


def _run(log: list[str], argv: Sequence[str], timeout: float = 120) -> None:
    log.append(" ".join(arg if arg else "''" for arg in argv))
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"{argv[0]} did not finish within {timeout}s") from exc
    if result.returncode != 0:
        raise BenchError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout[-1500:]}"
            f"{result.stderr[-1500:]}"
        )
