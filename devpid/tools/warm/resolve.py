"""One pip resolution per target, through devpid, read from pip's ``--report``.

The command (pip 22.2 or later, the pip of this interpreter)::

    python -m pip install --dry-run --ignore-installed --report FILE --target DIR
        --index-url RELAY/<index path> --cache-dir SHARED [target options] REQUIREMENT...

``--target`` because pip before 23.3 refuses the platform options without it (nothing
is installed: ``--dry-run``); ``--isolated`` and ``PIP_CONFIG_FILE=/dev/null`` so that
no configuration adds another index or constraints; one pip HTTP cache shared by the
targets of a run, so a pure-Python wheel pip downloaded for one target is not asked of
devpid again for the next (pip caches only answers from https or trusted hosts, so
the relay is trusted).

When the requirements do not resolve together (one does not exist, say), each is
resolved alone, so the others are still warmed and the summary names the one that
failed with pip's own words.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from devpid.tools.warm.requirements import Requirements, Unit
from devpid.tools.warm.targets import Target

#: ``--report`` and ``--dry-run`` came in pip 22.2.
MINIMUM_PIP = Version("22.2")
_MAX_REASON = 600


class PipMissing(RuntimeError):
    """No usable pip for this interpreter, with what to do about it."""


def check_pip() -> str:
    """The version of this interpreter's pip; PipMissing when absent or older than 22.2."""
    python = sys.executable
    try:
        version = metadata.version("pip")
    except metadata.PackageNotFoundError:
        raise PipMissing(
            f"pip is not installed for {python}: devpid warm resolves with it "
            f"(install it with: {python} -m ensurepip --upgrade)"
        ) from None
    try:
        too_old = Version(version) < MINIMUM_PIP
    except InvalidVersion:
        too_old = False
    if too_old:
        raise PipMissing(
            f"pip {version} is too old: devpid warm needs pip {MINIMUM_PIP} or later "
            f"for --report (upgrade with: {python} -m pip install -U pip)"
        )
    return version


@attrs.frozen
class ReportedFile:
    """One file pip chose: its URL (at the relay), project, version and sha256."""

    url: str
    filename: str
    project: str
    version: str
    sha256: str | None
    is_direct: bool = False


def files_from_report(report: Any) -> list[ReportedFile]:
    """The files of pip's installation report (format version 1)."""
    if not isinstance(report, dict) or not isinstance(report.get("install"), list):
        raise ValueError("pip's report has no install list")
    files = []
    for item in report["install"]:
        info = item.get("download_info") or {}
        url = info.get("url")
        meta = item.get("metadata") or {}
        if not isinstance(url, str) or not url:
            continue
        archive = info.get("archive_info") or {}
        hashes = archive.get("hashes") or {}
        sha256 = hashes.get("sha256")
        if sha256 is None and str(archive.get("hash", "")).startswith("sha256="):
            sha256 = archive["hash"].split("=", 1)[1]
        filename = url.split("#", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        files.append(
            ReportedFile(
                url=url.split("#", 1)[0],
                filename=filename,
                project=str(canonicalize_name(str(meta.get("name", filename)))),
                version=str(meta.get("version", "")),
                sha256=sha256 if isinstance(sha256, str) else None,
                is_direct=bool(item.get("is_direct")) or "archive_info" not in info,
            )
        )
    return files


def reason_from(stderr: str) -> str:
    """pip's ``ERROR:`` lines in one line (else its last line), kept short."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("ERROR: ") for line in lines if line.startswith("ERROR:")]
    reason = "; ".join(errors) if errors else (lines[-1] if lines else "pip failed, saying nothing")
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 3] + "..."


def pip_environment() -> dict[str, str]:
    """This environment without pip's settings and proxies: pip only talks to the relay."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith("PIP_") and "PROXY" not in key.upper()
    }
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


@attrs.frozen
class PipRun:
    """One pip resolution: its files, or why it failed."""

    files: tuple[ReportedFile, ...] = ()
    failure: str | None = None


#: Runs pip with these arguments and returns (exit status, stderr).
PipRunner = Callable[[Sequence[str]], tuple[int, str]]


def run_pip_subprocess(arguments: Sequence[str], python: str = sys.executable) -> tuple[int, str]:
    done = subprocess.run(
        [python, "-m", "pip", *arguments],
        env=pip_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        check=False,
    )
    return done.returncode, done.stderr


@attrs.define
class Resolver:
    """Resolves requirements for targets through ``index_url`` (the relay's)."""

    index_url: str
    workdir: Path
    extra_pip_arguments: Sequence[str] = ()
    runner: PipRunner = run_pip_subprocess

    def pip_arguments(self, target: Target, requirements: Sequence[str], report: Path) -> list[str]:
        return [
            "install",
            "--dry-run",
            "--ignore-installed",
            "--isolated",
            "--quiet",
            "--no-input",
            "--progress-bar",
            "off",
            "--report",
            str(report),
            "--target",
            str(self.workdir / "target"),
            "--cache-dir",
            str(self.workdir / "pip-cache"),
            "--index-url",
            self.index_url,
            # pip caches HTTP answers only from https and trusted hosts: the relay is one.
            "--trusted-host",
            urllib.parse.urlsplit(self.index_url).netloc,
            *target.pip_options(),
            *self.extra_pip_arguments,
            *requirements,
        ]

    def run(self, target: Target, requirements: Sequence[str]) -> PipRun:
        with tempfile.TemporaryDirectory(dir=self.workdir) as scratch:
            report_path = Path(scratch) / "report.json"
            status, stderr = self.runner(self.pip_arguments(target, requirements, report_path))
            if status != 0:
                return PipRun(failure=reason_from(stderr))
            try:
                with report_path.open(encoding="utf-8") as f:
                    files = files_from_report(json.load(f))
            except (OSError, ValueError) as e:
                return PipRun(failure=f"pip's report could not be read: {e}")
        return PipRun(files=tuple(files))

    def resolve(
        self, target: Target, requirements: Requirements
    ) -> tuple[list[ReportedFile], list[tuple[Unit | None, str]]]:
        """All files for ``target``; failures as ``(unit or None for all, reason)``."""
        together = self.run(target, requirements.pip_arguments())
        if together.failure is None:
            return list(together.files), []
        if len(requirements.units) <= 1:
            unit = requirements.units[0] if requirements.units else None
            return [], [(unit, together.failure)]
        files: list[ReportedFile] = []
        failures: list[tuple[Unit | None, str]] = []
        for unit in requirements.units:
            alone = self.run(target, requirements.pip_arguments([unit]))
            if alone.failure is None:
                files += alone.files
            else:
                failures.append((unit, alone.failure))
        if not failures:
            failures.append((None, f"not resolvable together: {together.failure}"))
        return files, failures
