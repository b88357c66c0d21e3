"""The private side (devpi's JSON API): logins, authenticated reads, index round trips and
start-up with many users, for devpid and devpi-server in the same run.

Each server is started fresh for this section (its own serverdir, ``root`` with the
empty password, ``root/pypi`` mirroring the fast upstream) and stopped at its end;
the start-up measurement uses two more serverdirs per server. See bench/README.md,
section "private", for what each row means.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from devpid_bench import devpi
from devpid_bench.http import PIP_ACCEPT, LoadResult, http_get, run_threads, threads_result
from devpid_bench.procs import (
    BenchError,
    Child,
    ProcessGroup,
    Server,
    Upstream,
    free_port,
    repo_env,
    start_devpid,
)
from devpid_bench.report import Results, Row
from devpid_bench.session import check_children, say
from devpid_bench.wrk import DONE_HOOK, run_wrk

#: devpi-client 7.3.0, outside the devpi-server venv (the venv's own ``devpi`` otherwise).
DEFAULT_CLIENT = Path("/tmp/dc-venv/bin/devpi")
USER = "benchuser"
PASSWORD = "bench-password-1"  # a throwaway password of a throwaway server
JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}
#: Fewer completed requests than this in a wrk run: measured again with the Python
#: loader, which waits for the requests still under way (devpi's argon2 takes seconds).
MIN_WRK_REQUESTS = 10
#: Targets from the issue: authenticated page at most 1.3x the anonymous cost, devpid
#: at least 3x faster on index round trips, start-up under 1 s.
AUTH_COST_TARGET = 1.3
ROUND_TRIP_TARGET = 3.0
STARTUP_TARGET_MS = 1000.0
#: How long populating devpi-server for the start-up run may take before giving up.
DEVPI_POPULATE_BUDGET = 300.0


@attrs.frozen
class PrivateSettings:
    load_seconds: float
    connections: int
    round_trips: int
    users: int
    indexes: int
    startups: int


def settings_for(quick: bool) -> PrivateSettings:
    return PrivateSettings(
        load_seconds=3 if quick else 10,
        connections=4,
        round_trips=20 if quick else 100,
        users=1000,
        indexes=2000,
        startups=3,
    )


@attrs.define
class Target:
    """One server under test, with the credentials this section made on it."""

    label: str
    server: Server
    root_token: str = ""
    user_token: str = ""

    def auth_header(self, user: str, token: str) -> dict[str, str]:
        return {"X-Devpi-Auth": base64.b64encode(f"{user}:{token}".encode()).decode()}


# --- HTTP --------------------------------------------------------------------------


class Client:
    """One keep-alive connection to a loopback server, for JSON requests."""

    def __init__(self, url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the benchmark only talks to loopback http URLs, not {url}")
        self._host, self._port, self._timeout = parts.hostname, parts.port, timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(
        self, method: str, path: str, body: object = None, headers: Mapping[str, str] = {}
    ) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more
            if self._conn is None:
                self._conn = http.client.HTTPConnection(
                    self._host, self._port, timeout=self._timeout
                )
            try:
                self._conn.request(method, path, body=data, headers={**JSON_HEADERS, **headers})
                response = self._conn.getresponse()
                answer = response.read()
                if response.will_close:
                    self.close()
                return response.status, answer
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def call(
    url: str, method: str, path: str, body: object = None, headers: Mapping[str, str] = {}
) -> Any:
    """One JSON request; its ``result`` (or the whole body); a BenchError unless 2xx."""
    client = Client(url)
    try:
        status, answer = client.request(method, path, body, headers)
    finally:
        client.close()
    if not 200 <= status < 300:
        raise BenchError(f"{method} {path} answered {status}: {answer[:300]!r}")
    data = json.loads(answer) if answer else {}
    return data.get("result", data) if isinstance(data, dict) else data


def login(url: str, user: str, password: str) -> str:
    result = call(url, "POST", "/+login", {"user": user, "password": password})
    token: str = result["password"]
    return token


# --- load ----------------------------------------------------------------------------


def post_script(directory: Path, name: str, path: str, body: object) -> Path:
    """A wrk script sending ``body`` as JSON with POST to ``path``, ending with the JSON hook."""
    script = directory / f"{name}.lua"
    script.write_text(
        f"wrk.method = 'POST'\nwrk.path = {json.dumps(path)}\n"
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        "wrk.headers['Accept'] = 'application/json'\n" + DONE_HOOK
    )
    return script


def python_load(
    url: str,
    connections: int,
    seconds: float,
    headers: Mapping[str, str],
    method: str = "GET",
    body: object = None,
) -> LoadResult:
    """A thread per connection asking until ``seconds`` have passed; the requests under way
    then are waited for (up to 180 s) and counted, over the time to the last answer.

    Slower than wrk on fast answers (a floor there), right on answers that take seconds.
    """
    path = urlsplit(url).path or "/"
    if urlsplit(url).query:
        path += "?" + urlsplit(url).query
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    latencies: list[float] = []
    totals = {"errors": 0, "bytes": 0}

    def worker() -> None:
        client = Client(url, timeout=180.0)
        try:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    status, answer = client.request(method, path, body, headers)
                except (OSError, http.client.HTTPException):
                    with lock:
                        totals["errors"] += 1
                    time.sleep(0.01)
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    totals["bytes"] += len(answer)
                    totals["errors"] += status >= 400
        finally:
            client.close()

    elapsed = run_threads(worker, connections, seconds + 180)
    return threads_result(connections, elapsed, latencies, totals)


@attrs.define
class Loader:
    settings: PrivateSettings
    wrk: str | None
    wrk_script: Path
    workdir: Path
    details: dict[str, Any]

    def rate(
        self,
        key: str,
        url: str,
        headers: Mapping[str, str],
        post: object = None,
    ) -> float:
        """req/s of ``url`` (a POST of ``post`` when given): wrk, or the Python loader when
        wrk is missing or finished fewer than MIN_WRK_REQUESTS requests."""
        seconds, connections = self.settings.load_seconds, self.settings.connections
        load: LoadResult | None = None
        if self.wrk:
            script = self.wrk_script
            if post is not None:
                script = post_script(self.workdir, key.replace("/", "_"), urlsplit(url).path, post)
            load = run_wrk(self.wrk, script, url, connections, seconds, headers)
            if load.requests < MIN_WRK_REQUESTS:
                self.details[f"{key} (wrk, too few)"] = attrs.asdict(load)
                load = None
        if load is None:
            method = "GET" if post is None else "POST"
            load = python_load(url, connections, seconds, headers, method, post)
        self.details[key] = attrs.asdict(load)
        if load.requests == 0:
            raise RuntimeError(f"no request completed ({load.errors} errors)")
        if load.errors:
            raise RuntimeError(f"{load.errors} errors in {load.requests} requests")
        return load.requests_per_second


def each(row: Row, targets: Mapping[str, Target], measure: Callable[[Target], float]) -> None:
    for label, target in targets.items():
        try:
            row.values[label] = measure(target)
        except Exception as exc:  # a failed measurement is a result too
            row.values[label] = None
            row.errors[label] = f"{type(exc).__name__}: {exc}"[:500]


# --- the servers -----------------------------------------------------------------------


def devpid_argv(port: int, serverdir: Path, upstream: Upstream) -> list[str]:
    """The command line ``procs.start_devpid`` uses."""
    return [
        sys.executable,
        "-m",
        "twisted",
        "--log-format",
        "text",
        "devpid",
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--serverdir",
        str(serverdir),
        "--upstream",
        upstream.simple_url,
    ]


def devpi_init(bin_dir: Path, serverdir: Path) -> None:
    subprocess.run(
        [
            str(bin_dir / "devpi-init"),
            "--serverdir",
            str(serverdir),
            "--root-passwd",
            "",
            "--no-root-pypi",
        ],
        check=True,
        capture_output=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def timed_start(
    group: ProcessGroup,
    name: str,
    argv: list[str],
    env: Mapping[str, str] | None,
    cwd: Path,
    port: int,
    timeout: float = 120.0,
) -> tuple[Child, float]:
    """Start ``argv``; seconds from the start to the first 200 of ``GET /+api`` (polled)."""
    started = time.perf_counter()
    child = group.start(name, argv, cwd=cwd, env=env)
    url = f"http://127.0.0.1:{port}/+api"
    while time.perf_counter() - started < timeout:
        if not child.alive():
            raise BenchError(f"{name} exited with {child.popen.returncode}:\n{child.log_tail()}")
        try:
            status, _, _ = http_get(url, 2.0, {"Accept": "application/json"})
            if status == 200:
                return child, time.perf_counter() - started
        except OSError:
            pass
        time.sleep(0.005)
    raise BenchError(f"{name} did not answer {url} within {timeout:.0f}s:\n{child.log_tail()}")


# --- the measurements --------------------------------------------------------------------


def prepare(target: Target, project: str) -> None:
    """Log in as root, create USER and log in as USER, warm the cached page."""
    url = target.server.url
    target.root_token = login(url, "root", "")
    root_auth = target.auth_header("root", target.root_token)
    call(url, "PUT", f"/{USER}", {"password": PASSWORD}, root_auth)
    target.user_token = login(url, USER, PASSWORD)
    for _ in range(5):
        status, _, _ = http_get(target.server.page_url(project), 60, {"Accept": PIP_ACCEPT})
        if status != 200:
            raise BenchError(f"{target.label}: page {project} answered {status}")


def auth_variants(target: Target) -> dict[str, dict[str, str]]:
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    return {
        "anonymous": {},
        "token": target.auth_header(USER, target.user_token),
        "Basic": {"Authorization": f"Basic {basic}"},
    }


def login_rate(results: Results, loader: Loader, targets: Mapping[str, Target]) -> None:
    row = results.row(
        "private_login_rps",
        f"POST /+login, {loader.settings.connections} conn",
        "req/s",
        True,
        table="private",
    )
    body = {"user": USER, "password": PASSWORD}
    each(row, targets, lambda t: loader.rate(f"login {t.label}", t.server.url + "+login", {}, body))
    row.note = (
        "each server's own password hashes: devpid argon2id m=19 MiB t=2 p=1 (checked once, "
        "then remembered), devpi passlib's argon2 m=64 MiB t=3 p=4 (every login)"
    )


def auth_reads(
    results: Results,
    loader: Loader,
    targets: Mapping[str, Target],
    what: str,
    path: str,
    accept: str,
) -> None:
    """req/s of GET ``path`` anonymous, with a login token and with Basic; the cost ratios."""
    rows = {}
    for variant in ("anonymous", "token", "Basic"):
        row = results.row(
            f"private_{what}_{variant}",
            f"{what}, {variant}, {loader.settings.connections} conn",
            "req/s",
            True,
            table="private",
        )

        def measure(target: Target, variant: str = variant) -> float:
            headers = {"Accept": accept, **auth_variants(target)[variant]}
            return loader.rate(
                f"{what} {variant} {target.label}", target.server.url + path.lstrip("/"), headers
            )

        each(row, targets, measure)
        rows[variant] = row
    for variant in ("token", "Basic"):
        cost = results.row(
            f"private_{what}_cost_{variant}",
            f"{what}, {variant}/anonymous cost",
            "x",
            False,
            table="private",
        )
        for label in targets:
            anon, auth = rows["anonymous"].values.get(label), rows[variant].values.get(label)
            if anon and auth:
                cost.values[label] = anon / auth
            else:
                cost.errors[label] = "not measured"
        mine = cost.values.get("devpid")
        if mine is not None:
            met = "met" if mine <= AUTH_COST_TARGET else "NOT MET"
            cost.note = f"target devpid <= {AUTH_COST_TARGET}x: {met}"
    rows["anonymous"].note = path


def client_round_trips(
    results: Results, targets: Mapping[str, Target], client: Path, count: int, workdir: Path
) -> None:
    """``devpi index -c`` then ``devpi use``, ``count`` times, with the real client."""
    total = results.row(
        "private_client_rt_total",
        f"devpi index -c + devpi use, x{count}",
        "s",
        False,
        table="private",
    )
    per = results.row(
        "private_client_rt",
        "devpi index -c + devpi use, per round trip",
        "ms",
        False,
        table="private",
    )

    def measure(target: Target) -> float:
        clientdir = Path(tempfile.mkdtemp(prefix=f"client-{target.label}-", dir=workdir))
        env = dict(os.environ, HOME=str(clientdir), PIP_CONFIG_FILE=os.devnull)

        def devpi_cmd(*args: str) -> None:
            argv = [str(client), *args[:1], "--clientdir", str(clientdir), *args[1:]]
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL
            )
            if done.returncode != 0:
                output = (done.stdout + done.stderr)[-400:]
                raise RuntimeError(f"devpi {args[0]} exited {done.returncode}: {output}")

        devpi_cmd("use", target.server.url)
        devpi_cmd("login", USER, "--password", PASSWORD)
        started = time.perf_counter()
        for i in range(count):
            devpi_cmd("index", "-c", f"{USER}/client-{i}")
            devpi_cmd("use", f"{USER}/client-{i}")
        elapsed = time.perf_counter() - started
        per.values[target.label] = elapsed / count * 1000
        return elapsed

    each(total, targets, measure)
    for label in targets:
        if label not in per.values:
            per.errors[label] = total.errors.get(label, "not measured")
    startup_ms = client_startup(client) * 1000
    results.details["private_client_startup_ms"] = startup_ms
    note_speedup(per, f"client start-up alone (devpi --version): 2 x {startup_ms:.0f} ms of it")


def client_startup(client: Path, times: int = 10) -> float:
    """Seconds ``devpi --version`` takes (the median): the client's cost without a request."""
    spent = []
    for _ in range(times):
        started = time.perf_counter()
        subprocess.run(
            [str(client), "--version"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL
        )
        spent.append(time.perf_counter() - started)
    return statistics.median(spent)


def http_round_trips(results: Results, targets: Mapping[str, Target], count: int) -> None:
    """The same two operations as raw HTTP on one keep-alive connection."""
    row = results.row(
        "private_http_rt",
        f"PUT /u/i + GET /u/i?no_projects=, x{count}, per round trip",
        "ms",
        False,
        table="private",
    )

    def measure(target: Target) -> float:
        client = Client(target.server.url)
        auth = target.auth_header(USER, target.user_token)
        try:
            started = time.perf_counter()
            for i in range(count):
                path = f"/{USER}/raw-{i}"
                for method, where, body in (
                    ("PUT", path, {}),
                    ("GET", f"{path}?no_projects=", None),
                ):
                    status, answer = client.request(method, where, body, auth)
                    if status != 200:
                        raise RuntimeError(f"{method} {where} answered {status}: {answer[:200]!r}")
            return (time.perf_counter() - started) / count * 1000
        finally:
            client.close()

    each(row, targets, measure)
    note_speedup(row, "one keep-alive connection, X-Devpi-Auth login token")


def note_speedup(row: Row, text: str) -> None:
    ratio = row.ratio("devpi", "devpid")
    if ratio is not None:
        met = "met" if ratio >= ROUND_TRIP_TARGET else "NOT MET"
        text += f"; target devpi/devpid >= {ROUND_TRIP_TARGET:.0f}x: {met}"
    row.note = text


# --- start-up ------------------------------------------------------------------------------


def populate(
    url: str, root_token: str, users: int, indexes: int, budget: float
) -> tuple[int, int, float]:
    """``users`` users (a ready argon2 hash each, so neither server hashes) and ``indexes``
    indexes spread over them, 16 requests at a time; (users, indexes, seconds) made
    before ``budget`` seconds ran out."""
    from argon2 import PasswordHasher, Type

    pwhash = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1, type=Type.ID).hash("x")
    root_auth = {"X-Devpi-Auth": base64.b64encode(f"root:{root_token}".encode()).decode()}
    started = time.perf_counter()
    local = threading.local()
    stop = threading.Event()

    def put(path: str, body: object, headers: Mapping[str, str]) -> bool:
        if stop.is_set() or time.perf_counter() - started > budget:
            stop.set()
            return False
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client(url)
        status, answer = client.request("PUT", path, body, headers)
        if status not in (200, 201):
            raise RuntimeError(f"PUT {path} answered {status}: {answer[:200]!r}")
        return True

    names = [f"u{i:04d}" for i in range(users)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        made_users = sum(
            pool.map(lambda n: put(f"/{n}", {"password": "x", "pwhash": pwhash}, {}), names)
        )
        paths = [f"/{names[i % users]}/ix{i // users}" for i in range(indexes)]
        made_indexes = sum(
            pool.map(lambda p: put(p, {"type": "stage"}, root_auth), paths)
            if made_users == users
            else []
        )
    return made_users, made_indexes, time.perf_counter() - started


@attrs.define
class Startup:
    """How to start one server on a serverdir, and how to fill one."""

    label: str
    start: Callable[[Path, int], tuple[list[str], Mapping[str, str] | None]]
    init: Callable[[Path], None]
    budget: float


def startup(
    results: Results,
    group: ProcessGroup,
    workdir: Path,
    kinds: list[Startup],
    settings: PrivateSettings,
    details: dict[str, Any],
) -> None:
    empty = results.row(
        "private_startup_empty",
        "start-up to GET /+api, empty serverdir",
        "ms",
        False,
        table="private",
    )
    full = results.row(
        "private_startup_full",
        f"start-up to GET /+api, {settings.users} users, {settings.indexes} indexes",
        "ms",
        False,
        table="private",
    )
    filling = results.row(
        "private_populate", "populating that serverdir over HTTP", "s", None, table="private"
    )
    notes: list[str] = []
    for kind in kinds:
        label = kind.label
        try:
            serverdir = workdir / f"{label}-startup-serverdir"
            kind.init(serverdir)
            port = free_port()
            argv, env = kind.start(serverdir, port)
            times = []
            for n in range(settings.startups):  # the first also creates root (devpid)
                child, seconds = timed_start(
                    group, f"{label}-startup-empty", argv, env, workdir, port
                )
                times.append(seconds)
                if n < settings.startups - 1:
                    group.stop(child)
            empty.values[label] = statistics.median(times) * 1000
            details[f"startup_empty {label}"] = times
            url = f"http://127.0.0.1:{port}/"
            token = login(url, "root", "")
            users, indexes, seconds = populate(
                url, token, settings.users, settings.indexes, kind.budget
            )
            filling.values[label] = seconds
            group.stop(child)
            times = []
            for _ in range(settings.startups):
                child, started = timed_start(
                    group, f"{label}-startup-full", argv, env, workdir, port
                )
                times.append(started)
                listed = call(url, "GET", "/")
                group.stop(child)
            found = sum(len(u.get("indexes", {})) for u in listed.values())
            details[f"startup_full {label}"] = times
            full.values[label] = statistics.median(times) * 1000
            if users < settings.users or indexes < settings.indexes:
                notes.append(
                    f"{label}: only {users} users, {indexes} indexes in {kind.budget:.0f}s"
                )
            if len(listed) < users + 1 or found < indexes:
                results.problems.append(
                    f"{label} after restart: {len(listed)} users, {found} indexes; "
                    f"expected {users + 1}, {indexes}"
                )
        except Exception as exc:  # a failed measurement is a result too
            for row in (empty, full, filling):
                if label not in row.values:
                    row.errors[label] = f"{type(exc).__name__}: {exc}"[:500]
    mine = full.values.get("devpid")
    met = "" if mine is None else ("met" if mine < STARTUP_TARGET_MS else "NOT MET")
    full.note = "; ".join(
        [
            f"median of {settings.startups}; target devpid < {STARTUP_TARGET_MS:.0f} ms: {met}",
            *notes,
        ]
    )
    empty.note = (
        f"median of {settings.startups}; devpi derives its signing key with its --argon2-* "
        "defaults (512 MiB, t=16, p=8) at each start"
    )
    filling.note = "16 PUTs at a time; users with a ready argon2 hash, indexes as root (token)"


# --- the section ------------------------------------------------------------------------------


def measure_private(
    workdir: Path,
    upstream: Upstream,
    project: str,
    results: Results,
    *,
    quick: bool,
    wrk: str | None,
    wrk_script: Path,
    devpi_venv: Path | None,
    skip_devpid: bool = False,
) -> None:
    """Start a devpid and a devpi-server (``devpi_venv``; None: devpid only), measure, stop."""
    settings = settings_for(quick)
    here = workdir / "private"
    here.mkdir(exist_ok=True)
    details: dict[str, Any] = {}
    results.details["private"] = details
    results.meta["private_settings"] = attrs.asdict(settings)
    own = ProcessGroup(log_dir=here)
    try:
        targets: dict[str, Target] = {}
        bin_dir: Path | None = None
        if not skip_devpid:
            server = start_devpid(own, "devpid-private", here / "devpid-serverdir", upstream)
            targets["devpid"] = Target("devpid", server)
        if devpi_venv is not None:
            setup: list[str] = results.meta.setdefault("devpi_setup", [])
            bin_dir = devpi.ensure_venv(devpi_venv, setup)
            server = devpi.start_devpi(
                own, bin_dir, here, {"root/pypi": upstream.simple_url}, setup
            )
            targets["devpi"] = Target("devpi", server)
        for label, target in list(targets.items()):
            try:
                prepare(target, project)
            except (BenchError, OSError, KeyError, ValueError) as exc:
                results.problems.append(f"private: {label} not measured: {exc}")
                del targets[label]
        say(f"private: servers {', '.join(f'{t.label} {t.server.url}' for t in targets.values())}")
        loader = Loader(settings, wrk, wrk_script, here, details)
        say("private: POST /+login")
        login_rate(results, loader, targets)
        say("private: cached page, anonymous / token / Basic")
        auth_reads(
            results, loader, targets, "cached page", f"/root/pypi/+simple/{project}/", PIP_ACCEPT
        )
        say("private: GET /+api, anonymous / token / Basic")
        auth_reads(results, loader, targets, "GET /+api", "/+api", "application/json")
        client = DEFAULT_CLIENT if DEFAULT_CLIENT.exists() else None
        if client is None and bin_dir is not None:
            client = bin_dir / "devpi"
        if client is None or shutil.which(str(client)) is None:
            results.problems.append("private: no devpi client; client round trips not measured")
        else:
            say(f"private: {settings.round_trips} client round trips ({client})")
            client_round_trips(results, targets, client, settings.round_trips, here)
            results.meta["private_devpi_client"] = str(client)
        say(f"private: {settings.round_trips} HTTP round trips")
        http_round_trips(results, targets, settings.round_trips)
        check_children(own, results)  # early exits, tracebacks in devpid's log
        for target in targets.values():
            own.stop(target.server.child)
        kinds = []
        if not skip_devpid:
            kinds.append(
                Startup(
                    "devpid",
                    lambda d, port: (devpid_argv(port, d, upstream), repo_env()),
                    lambda d: d.mkdir(parents=True, exist_ok=True),
                    budget=600.0,
                )
            )
        if bin_dir is not None and "devpi" in targets:
            devpi_bin = bin_dir
            kinds.append(
                Startup(
                    "devpi",
                    lambda d, port: (devpi.server_argv(devpi_bin, port, d), None),
                    lambda d: devpi_init(devpi_bin, d),
                    budget=DEVPI_POPULATE_BUDGET,
                )
            )
        say(f"private: start-up, {settings.users} users and {settings.indexes} indexes")
        startup(results, own, here, kinds, settings, details)
        for row in results.rows:
            ratio = row.ratio("devpi", "devpid") if row.table == "private" else None
            if ratio is not None and ratio < 0.05:  # the column shows 0.0x: say it the other way
                row.note = "; ".join(filter(None, [f"devpid/devpi {1 / ratio:,.0f}x", row.note]))
    finally:
        own.close()
