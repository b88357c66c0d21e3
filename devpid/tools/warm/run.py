"""One ``devpid warm``, in order: check, resolve per target, find sdists, fetch, sum up.

1. devpid is asked for the index (a one-line error if it is not there).
2. pip resolves the requirements once per target through the relay (see
   ``relay``); the files it downloads doing so are counted from what devpid answered.
3. With ``sdists``, each resolved release's sdist is looked up on devpid's JSON page
   of its project.
4. Every file not yet counted is fetched, ``jobs`` at a time; each file once, however
   many targets chose it.
"""

from __future__ import annotations

import http.client
import json
import tempfile
import time
from pathlib import Path

import attrs

from devpid.tools.warm.fetch import Wanted, fetch_all
from devpid.tools.warm.http import USER_AGENT, Origin, file_key, path_of
from devpid.tools.warm.pages import PageError, page_url, read_page, sdists_of
from devpid.tools.warm.progress import Progress
from devpid.tools.warm.relay import Relay, Relayed, running_relay
from devpid.tools.warm.requirements import Requirements
from devpid.tools.warm.resolve import PipRunner, Resolver, run_pip_subprocess
from devpid.tools.warm.summary import FileResult, ResolutionFailure, Summary
from devpid.tools.warm.targets import Target

DEFAULT_INDEX_URL = "http://localhost:3141/root/pypi/+simple/"


class CannotWarm(RuntimeError):
    """devpid or its index cannot be reached: nothing was tried."""


@attrs.frozen
class WarmRequest:
    """Everything one warm needs to know."""

    index_url: str
    requirements: Requirements
    targets: tuple[Target, ...] = (Target(),)
    sdists: bool = False
    jobs: int = 4
    timeout: float = 60.0
    pip_options: tuple[str, ...] = ()


def check_index(origin: Origin, index_url: str, timeout: float) -> None:
    """CannotWarm unless devpid answers for the index (``…/+simple/`` URLs only)."""
    path = path_of(index_url)
    if not path.endswith("/+simple/"):
        return
    index_path = path[: -len("/+simple/")]
    connection = origin.connect(timeout)
    try:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        connection.request("GET", index_path, headers=headers)
        response = connection.getresponse()
        response.read(1 << 16)
    except (OSError, http.client.HTTPException) as e:
        raise CannotWarm(f"cannot reach devpid at {origin.url}: {e}") from None
    finally:
        connection.close()
    if response.status == 404:
        raise CannotWarm(f"devpid at {origin.url} has no index {index_path.lstrip('/')}")


def _relayed_result(relayed: Relayed, origin: Origin) -> FileResult:
    error = relayed.error
    if error is None and relayed.status != 200:
        error = f"HTTP {relayed.status}"
    elif error is None and not relayed.complete:
        error = f"{relayed.size} bytes received, {relayed.expected_size} expected"
    filename = file_key(relayed.path).rsplit("/", 1)[-1]
    return FileResult(
        filename, origin.url + relayed.path, relayed.size, relayed.cache, error, "pip"
    )


def warm(
    request: WarmRequest, progress: Progress, runner: PipRunner = run_pip_subprocess
) -> Summary:
    """Warm ``request.index_url``; the summary (CannotWarm if devpid is not there)."""
    started = time.monotonic()
    origin = Origin.of(request.index_url)
    check_index(origin, request.index_url, request.timeout)
    wanted: dict[str, Wanted] = {}
    releases: dict[tuple[str, str], None] = {}
    failures: list[ResolutionFailure] = []
    notes = list(request.requirements.notes)
    relay = Relay(origin, progress, request.timeout)
    with (
        tempfile.TemporaryDirectory(prefix="devpid-warm-") as workdir,
        running_relay(relay) as relay_url,
    ):
        resolver = Resolver(
            relay_url + path_of(request.index_url),
            Path(workdir),
            request.pip_options,
            runner,
        )
        for target in request.targets:
            progress.status(f"resolving for {target.label()}")
            files, target_failures = resolver.resolve(target, request.requirements)
            for unit, reason in target_failures:
                failures.append(
                    ResolutionFailure(
                        target.label(),
                        unit.requirement if unit else None,
                        unit.origin if unit else None,
                        reason,
                    )
                )
            for file in files:
                if file.is_direct or not file.url.startswith(relay_url + "/"):
                    notes.append(f"{file.filename}: not from the index (a direct URL): not warmed")
                    continue
                path = file.url[len(relay_url) :]
                wanted.setdefault(
                    file_key(path), Wanted(origin.url + path, file.filename, file.sha256)
                )
                releases.setdefault((file.project, file.version))
    missing_sdists: list[str] = []
    if request.sdists:
        progress.status("finding sdists")
        missing_sdists = _add_sdists(request, origin, releases, wanted, failures)
    progress.status("fetching")
    records = dict(relay.records)
    results = [
        _relayed_result(record, origin)
        for key, record in records.items()
        if record.complete or key not in wanted
    ]
    counted = {key for key, record in records.items() if record.complete}
    to_fetch = [file for key, file in wanted.items() if key not in counted]
    results += fetch_all(
        to_fetch, origin, jobs=request.jobs, timeout=request.timeout, progress=progress
    )
    return Summary(
        index_url=request.index_url,
        targets=tuple(target.label() for target in request.targets),
        files=tuple(results),
        resolution_failures=tuple(failures),
        missing_sdists=tuple(missing_sdists),
        notes=tuple(notes),
        seconds=time.monotonic() - started,
    )


def _add_sdists(
    request: WarmRequest,
    origin: Origin,
    releases: dict[tuple[str, str], None],
    wanted: dict[str, Wanted],
    failures: list[ResolutionFailure],
) -> list[str]:
    """Add each release's sdist to ``wanted``; the releases that have none."""
    missing: list[str] = []
    versions: dict[str, list[str]] = {}
    for project, version in releases:
        versions.setdefault(project, []).append(version)
    for project, project_versions in versions.items():
        url = page_url(request.index_url, project)
        try:
            page = read_page(origin, url, request.timeout)
        except PageError as e:
            failures.append(ResolutionFailure("--sdists", project, None, f"no project page: {e}"))
            continue
        for version in project_versions:
            sdists = sdists_of(page, project, version)
            if not sdists:
                missing.append(f"{project} {version}")
            for sdist in sdists:
                key = file_key(path_of(sdist.url))
                wanted.setdefault(key, Wanted(sdist.url, sdist.filename, sdist.sha256, sdist.size))
    return missing


def summary_json(summary: Summary) -> str:
    return json.dumps(summary.to_json(), indent=1)
