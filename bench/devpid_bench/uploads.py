"""The uploads section (issue 13): uploads, merged pages of stage indexes, project JSON and
``pip install`` of private packages, for devpid and devpi-server in the same run.

Each server is started fresh for this section (its own serverdir, ``root`` with the
empty password, ``root/pypi`` mirroring the upstream) and stopped at its end. On each,
the user ``alice`` gets the indexes the figures use:

- ``alice/dev`` (bases ``root/pypi``): twine's 200 wheels, the big upload, the project
  with thousands of versions and the 10 private packages pip installs;
- ``alice/base1`` (the project with 2,000 files), ``alice/base2`` (empty) and
  ``alice/merged`` (bases ``alice/base1,alice/base2,root/pypi``), whose page merges them.

devpi-server gets ``--max-request-body-size`` and devpid ``--max-upload-size`` above the
big file (both default to 1 GiB and refuse the 2 GiB upload with 413). See
bench/README.md, section "uploads".
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import attrs

from devpid_bench import devpi
from devpid_bench.http import PIP_ACCEPT, http_get
from devpid_bench.private import Client, call, devpi_init, login
from devpid_bench.procinfo import reset_peak, status_kib
from devpid_bench.procs import (
    BenchError,
    ProcessGroup,
    Server,
    Upstream,
    devpid_help,
    free_port,
    start_devpid,
    wait_for_http,
)
from devpid_bench.report import Results, Row
from devpid_bench.session import check_children, say
from devpid_bench.wrk import run_wrk
from tests.fixtures.distbuilder import write_wheel

MiB = 2**20
GiB = 2**30
MB = 1e6
USER = "alice"
PASSWORD = "alicepw"  # a throwaway password of a throwaway server
#: Goals of issue 13.
TWINE_SPEEDUP = 3.0  # devpid at least 3x faster
BIG_RSS_MB = 150.0  # devpid's peak RSS during the big upload
BIG_VS_CP = 0.5  # upload MB/s at least half of cp's
MERGED_RATIO = 20.0  # merged page req/s at least 20x devpi's
JSON_MS = 100.0  # one warm project JSON under 100 ms
PIP_VS_NGINX = 1.1  # pip install through devpid at most 1.1x the static directory
#: How long filling a server for one figure may take before it stops (and says so): devpi's
#: time per upload grows with the files the project has (about 1 s each past 1,000 files).
POPULATE_BUDGET = 1500.0
CHUNK = 1 << 20
#: One POST of a form: its fields, the file's name (None: no file) and its body, made when sent.
Form = tuple[list[tuple[str, str]], str | None, Callable[[], bytes]]


@attrs.frozen
class UploadSettings:
    twine_wheels: int
    big_size: int
    merged_versions: int  # an sdist and a wheel each
    json_versions: int
    private_packages: int
    pip_runs: int
    load_seconds: float
    connections: int
    json_runs: int


def settings_for(quick: bool) -> UploadSettings:
    return UploadSettings(
        twine_wheels=40 if quick else 200,
        big_size=256 * MiB if quick else 2 * GiB,
        merged_versions=100 if quick else 1000,
        json_versions=500 if quick else 5000,
        private_packages=10,
        pip_runs=3,
        load_seconds=3 if quick else 10,
        connections=50,
        json_runs=5,
    )


@attrs.define
class Target:
    """One server under test, with alice's login token on it."""

    label: str
    server: Server
    token: str = ""

    @property
    def auth(self) -> dict[str, str]:
        """devpi's own header, as devpi-client sends it: no password hashing per request."""
        return {"X-Devpi-Auth": base64.b64encode(f"{USER}:{self.token}".encode()).decode()}

    def index_url(self, index: str) -> str:
        return f"{self.server.url}{USER}/{index}/"


# --- distributions -------------------------------------------------------------------------


def metadata(name: str, version: str, requires: Sequence[str] = ()) -> bytes:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {name}",
        f"Version: {version}",
        f"Summary: devpid upload benchmark {name}",
        *(f"Requires-Dist: {r}" for r in requires),
    ]
    return ("\n".join(lines) + "\n\n").encode()


def wheel_name(name: str, version: str) -> str:
    return f"{name.replace('-', '_')}-{version}-py3-none-any.whl"


def write_small_wheel(
    path: Path | io.BytesIO, name: str, version: str, requires: Sequence[str] = ()
) -> None:
    """A valid pure-Python wheel: one module, METADATA, WHEEL and a hashed RECORD."""
    module = name.replace("-", "_")
    write_wheel(
        path,  # type: ignore[arg-type]  # zipfile takes a file object as well as a path
        f"{module}-{version}.dist-info",
        metadata(name, version, requires),
        {f"{module}/__init__.py": f'VERSION = "{version}"\n'.encode()},
    )


def wheel_bytes(name: str, version: str, requires: Sequence[str] = ()) -> bytes:
    buffer = io.BytesIO()
    write_small_wheel(buffer, name, version, requires)
    return buffer.getvalue()


def sdist_bytes(name: str, version: str) -> bytes:
    """A tiny sdist: ``PKG-INFO`` and a ``pyproject.toml`` under ``{name}-{version}/``."""
    stem = f"{name.replace('-', '_')}-{version}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for member, data in (
            ("PKG-INFO", metadata(name, version)),
            ("pyproject.toml", f'[project]\nname = "{name}"\nversion = "{version}"\n'.encode()),
        ):
            info = tarfile.TarInfo(f"{stem}/{member}")
            info.size, info.mtime = len(data), 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def upload_fields(
    name: str, version: str, filetype: str, requires: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """The form fields twine sends with a file (less the client-side digests)."""
    return [
        (":action", "file_upload"),
        ("protocol_version", "1"),
        ("metadata_version", "2.1"),
        ("name", name),
        ("version", version),
        ("summary", f"devpid upload benchmark {name}"),
        ("filetype", filetype),
        ("pyversion", "py3" if filetype == "bdist_wheel" else "source"),
        *(("requires_dist", r) for r in requires),
    ]


# --- multipart over http.client -----------------------------------------------------------


@attrs.frozen
class Multipart:
    """A multipart/form-data body around one file: ``head``, the file's bytes, ``tail``."""

    boundary: str
    head: bytes
    tail: bytes

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def length(self, file_size: int) -> int:
        return len(self.head) + file_size + len(self.tail)


def multipart(fields: Iterable[tuple[str, str]], filename: str | None) -> Multipart:
    """The body's parts; the file (when ``filename``) comes last, as field ``content``."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
        for key, value in fields
    ]
    if filename is None:
        return Multipart(boundary, "".join(parts).encode(), f"--{boundary}--\r\n".encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    )
    return Multipart(boundary, "".join(parts).encode(), f"\r\n--{boundary}--\r\n".encode())


class Poster:
    """Form POSTs on one keep-alive connection (opened again when the server closes it)."""

    def __init__(self, url: str, headers: Mapping[str, str], timeout: float = 600.0) -> None:
        host, port = url.split("/")[2].split(":")
        self._address = (host, int(port), timeout)
        self._headers = dict(headers)
        self._conn: http.client.HTTPConnection | None = None

    def post(
        self,
        path: str,
        fields: Sequence[tuple[str, str]],
        filename: str | None = None,
        data: bytes = b"",
    ) -> tuple[int, str]:
        """POST the form; (status, reason and the start of the body) for the messages."""
        form = multipart(fields, filename)
        body = form.head + data + form.tail
        headers = {**self._headers, "Content-Type": form.content_type, "Accept": "*/*"}
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more
            if self._conn is None:
                host, port, timeout = self._address
                self._conn = http.client.HTTPConnection(host, port, timeout=timeout)
            try:
                self._conn.request("POST", path, body=body, headers=headers)
                response = self._conn.getresponse()
                answer = response.read()
                if response.will_close:
                    self.close()
                return response.status, f"{response.reason} {answer[:200]!r}"
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def expect_ok(status: int, what: str, answer: str) -> None:
    if status != 200:
        raise RuntimeError(f"{what} answered {status} {answer}")


def stream_upload(
    url: str, path: Path, fields: Sequence[tuple[str, str]], headers: Mapping[str, str]
) -> tuple[float, int, str]:
    """POST ``path`` as a form, streamed from the disk in 1 MiB reads with a Content-Length
    (as twine sends it); (seconds to the answer, status, reason and body start)."""
    form = multipart(fields, path.name)
    host, port = url.split("/")[2].split(":")
    target = "/" + url.split("/", 3)[3]
    conn = http.client.HTTPConnection(host, int(port), timeout=1800)
    try:
        started = time.perf_counter()
        conn.putrequest("POST", target)
        for key, value in {
            **headers,
            "Content-Type": form.content_type,
            "Content-Length": str(form.length(path.stat().st_size)),
            "Accept": "*/*",
        }.items():
            conn.putheader(key, value)
        conn.endheaders()
        conn.send(form.head)
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as source:
            while n := source.readinto(buffer):
                conn.send(view[:n])
        conn.send(form.tail)
        response = conn.getresponse()
        answer = response.read()
        return time.perf_counter() - started, response.status, f"{response.reason} {answer[:200]!r}"
    finally:
        conn.close()


def each(row: Row, targets: Mapping[str, Target], measure: Callable[[Target], float]) -> None:
    """``measure`` each target into ``row``; a failure is a result too (in ``row.errors``)."""
    for label, target in targets.items():
        try:
            row.values[label] = measure(target)
        except Exception as exc:
            row.values[label] = None
            row.errors[label] = f"{type(exc).__name__}: {exc}"[:600]


# --- the servers --------------------------------------------------------------------------


def start_devpi_uploads(
    group: ProcessGroup,
    bin_dir: Path,
    here: Path,
    upstream: Upstream,
    max_body: int,
    log: list[str],
) -> Server:
    """devpi-server with its defaults but ``--max-request-body-size``, ``root/pypi`` made
    over its JSON API as a mirror of the local upstream; what it ran goes to ``log``."""
    serverdir = here / "devpi-serverdir"
    devpi_init(bin_dir, serverdir)
    port = free_port()
    argv = [*devpi.server_argv(bin_dir, port, serverdir), "--max-request-body-size", str(max_body)]
    log += [
        f"{bin_dir / 'devpi-init'} --serverdir {serverdir} --root-passwd '' --no-root-pypi",
        " ".join(argv),
        f'PUT /root/pypi {{"type": "mirror", "mirror_url": "{upstream.simple_url}"}}',
    ]
    child = group.start("devpi-server-uploads", argv, cwd=here)
    url = f"http://127.0.0.1:{port}/"
    wait_for_http(child, url + "+api", timeout=120.0)
    token = login(url, "root", "")
    root_auth = {"X-Devpi-Auth": base64.b64encode(f"root:{token}".encode()).decode()}
    call(
        url,
        "PUT",
        "/root/pypi",
        {"type": "mirror", "mirror_url": upstream.simple_url},
        root_auth,
    )
    return Server(child=child, url=url)


def prepare(target: Target) -> None:
    """alice (made by root), her login token and her indexes."""
    url = target.server.url
    root_token = login(url, "root", "")
    root_auth = {"X-Devpi-Auth": base64.b64encode(f"root:{root_token}".encode()).decode()}
    call(url, "PUT", f"/{USER}", {"password": PASSWORD}, root_auth)
    target.token = login(url, USER, PASSWORD)
    for index, bases in (
        ("dev", "root/pypi"),
        ("base1", ""),
        ("base2", ""),
        ("merged", f"{USER}/base1,{USER}/base2,root/pypi"),
    ):
        call(url, "PUT", f"/{USER}/{index}", {"type": "stage", "bases": bases}, target.auth)


# --- 1. twine upload --------------------------------------------------------------------------


def twine_upload(
    results: Results,
    targets: Mapping[str, Target],
    twine: Path,
    here: Path,
    count: int,
    details: dict[str, Any],
) -> None:
    row = results.row(
        "uploads_twine", f"twine upload, {count} small wheels, 1 process", "s", False, "uploads"
    )
    wheels = here / "twine-wheels"
    wheels.mkdir(exist_ok=True)
    paths = []
    for i in range(count):
        name = f"bench-twine-{i:03d}"
        path = wheels / wheel_name(name, "1.0")
        write_small_wheel(path, name, "1.0")
        paths.append(path)
    home = here / "twine-home"
    home.mkdir(exist_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(("TWINE_", "PIP_")) and "PROXY" not in k.upper()
    }
    env.update(HOME=str(home), PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring")

    def measure(target: Target) -> float:
        argv = [
            str(twine),
            "upload",
            "--non-interactive",
            "--disable-progress-bar",
            "--repository-url",
            target.index_url("dev"),
            "-u",
            USER,
            "-p",
            PASSWORD,
            *map(str, paths),
        ]
        started = time.perf_counter()
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=1800, env=env, stdin=subprocess.DEVNULL
        )
        elapsed = time.perf_counter() - started
        details[f"twine {target.label}"] = {"seconds": elapsed, "exit": done.returncode}
        if done.returncode != 0:
            output = re.sub(r"\s+", " ", done.stdout + done.stderr)[-600:]
            raise RuntimeError(f"twine exited {done.returncode}: {output}")
        status, _, page = http_get(
            target.server.url + f"{USER}/dev/+simple/bench-twine-000/", 60, {"Accept": PIP_ACCEPT}
        )
        if status != 200 or b"bench_twine_000-1.0" not in page:
            raise RuntimeError(f"after twine, GET /{USER}/dev/+simple/bench-twine-000/ {status}")
        return elapsed

    each(row, targets, measure)
    speedup = row.ratio("devpi", "devpid")
    row.note = "Basic auth (twine's), all files in one twine process"
    if speedup is not None:
        met = "met" if speedup >= TWINE_SPEEDUP else "NOT MET"
        row.note += f"; devpid {speedup:.1f}x faster, goal >= {TWINE_SPEEDUP:.0f}x: {met}"


# --- 2. one big upload ------------------------------------------------------------------------


def big_upload(
    results: Results,
    targets: Mapping[str, Target],
    here: Path,
    size: int,
    details: dict[str, Any],
) -> None:
    human = f"{size / GiB:.0f} GiB" if size >= GiB else f"{size / MiB:.0f} MiB"
    rss = results.row("uploads_big_rss", f"{human} upload: peak RSS", "MB", False, "uploads")
    speed = results.row("uploads_big_mbps", f"{human} upload: MB/s", "MB/s", True, "uploads")
    name, version = "bench-big-upload", "1.0"
    path = here / "big" / wheel_name(name, version)
    path.parent.mkdir(exist_ok=True)
    say(f"uploads: writing the {human} wheel")
    write_wheel(
        str(path),
        f"bench_big_upload-{version}.dist-info",
        metadata(name, version),
        {"bench_big_upload/__init__.py": b""},
        blob=("bench_big_upload/blob.bin", size, 13),
    )
    file_size = path.stat().st_size
    copy = path.with_name("cp-copy.whl")
    started = time.perf_counter()
    subprocess.run(["cp", str(path), str(copy)], check=True, timeout=900)
    cp_seconds = time.perf_counter() - started
    copy.unlink()
    speed.values["baseline"] = file_size / cp_seconds / MB
    fields = upload_fields(name, version, "bdist_wheel")

    def measure(target: Target) -> float:
        pid = target.server.child.pid
        before = status_kib(pid, "VmRSS")
        if not reset_peak(pid):
            raise RuntimeError(f"cannot reset VmHWM of {pid}")
        seconds, status, answer = stream_upload(target.index_url("dev"), path, fields, target.auth)
        peak = status_kib(pid, "VmHWM")
        details[f"big {target.label}"] = {
            "seconds": seconds,
            "status": status,
            "rss_before_kib": before,
            "hwm_kib": peak,
        }
        if peak is not None:
            rss.values[target.label] = peak * 1024 / MB
        if status != 200:
            rss.errors[target.label] = f"the upload answered {status}: peak while refusing it"
        expect_ok(status, f"POST /{USER}/dev/ ({human} {path.name})", answer)
        return file_size / seconds / MB

    each(speed, targets, measure)
    for label in targets:
        if label not in rss.values:
            rss.errors[label] = speed.errors.get(label, "not measured")
    mine = rss.values.get("devpid")
    rss.note = "VmHWM of the server process, reset before the upload"
    if mine is not None:
        met = "met" if mine <= BIG_RSS_MB else "NOT MET"
        rss.note += f"; goal devpid <= {BIG_RSS_MB:.0f} MB: {met}"
    speed.note = "streamed from disk, Content-Length; baseline: cp of the file on the same disk"
    ratio = speed.ratio("devpid", "baseline")
    if ratio is not None:
        met = "met" if ratio >= BIG_VS_CP else "NOT MET"
        speed.note += f"; goal devpid/cp >= {BIG_VS_CP}x: {met}"
    details["big_cp_seconds"] = cp_seconds
    details["big_file_bytes"] = file_size


# --- 3. merged page ------------------------------------------------------------------------------


def populate(
    target: Target,
    index: str,
    items: Iterable[Form],
    budget: float,
) -> tuple[int, float]:
    """POST each form (fields, filename, body maker) on one connection; (done, seconds)."""
    poster = Poster(target.server.url, target.auth)
    path = f"/{USER}/{index}/"
    started = time.perf_counter()
    done = 0
    try:
        for fields, filename, make in items:
            if time.perf_counter() - started > budget:
                break
            status, answer = poster.post(path, fields, filename, make() if filename else b"")
            expect_ok(status, f"POST {path} ({filename or dict(fields).get(':action')})", answer)
            done += 1
            if done % 500 == 0:
                spent = time.perf_counter() - started
                say(f"  {target.label}: {done} POSTs to {path} in {spent:.0f}s")
    finally:
        poster.close()
    return done, time.perf_counter() - started


def merged_files(project: str, versions: int) -> list[Form]:
    """An sdist and a wheel of each of ``versions`` versions of ``project``."""
    items: list[Form] = []
    module = project.replace("-", "_")
    for i in range(versions):
        version = f"1.{i}"
        items.append(
            (
                upload_fields(project, version, "sdist"),
                f"{module}-{version}.tar.gz",
                partial(sdist_bytes, project, version),
            )
        )
        items.append(
            (
                upload_fields(project, version, "bdist_wheel"),
                wheel_name(project, version),
                partial(wheel_bytes, project, version),
            )
        )
    return items


def page_files(body: bytes, content_type: str) -> int:
    """How many files a simple page (PEP 691 JSON or HTML) lists."""
    if "json" in content_type:
        return len(json.loads(body)["files"])
    return len(re.findall(rb"<a\s", body, re.IGNORECASE))


def merged_page(
    results: Results,
    targets: Mapping[str, Target],
    settings: UploadSettings,
    wrk: str | None,
    wrk_script: Path,
    details: dict[str, Any],
) -> None:
    files = settings.merged_versions * 2
    project = "bench-merged"
    label = f"merged page, {files} files, 3 bases"
    p50 = results.row("uploads_merged_p50", f"{label}: p50, 1 conn", "ms", False, "uploads")
    p99 = results.row("uploads_merged_p99", f"{label}: p99, 1 conn", "ms", False, "uploads")
    rps = results.row(
        "uploads_merged_rps", f"{label}: {settings.connections} conn", "req/s", True, "uploads"
    )
    filling = results.row(
        "uploads_merged_fill", f"uploading those {files} files", "s", None, "uploads"
    )
    latency: dict[str, float] = {}

    def measure(target: Target) -> float:
        done, seconds = populate(
            target, "base1", merged_files(project, settings.merged_versions), POPULATE_BUDGET
        )
        filling.values[target.label] = seconds
        details[f"merged fill {target.label}"] = {"files": done, "seconds": seconds}
        if done < files:
            filling.note += f"{target.label}: only {done} files in {POPULATE_BUDGET:.0f}s; "
        url = f"{target.index_url('merged')}+simple/{project}/"
        for _ in range(5):
            status, headers, body = http_get(url, 120, {"Accept": PIP_ACCEPT})
            if status != 200:
                raise RuntimeError(f"GET /{USER}/merged/+simple/{project}/ answered {status}")
        found = page_files(body, headers.get("content-type", ""))
        if found != done:
            results.problems.append(
                f"uploads: {target.label}'s merged page lists {found} files, {done} uploaded"
            )
        if wrk is None:
            raise RuntimeError("no wrk")
        one = run_wrk(wrk, wrk_script, url, 1, settings.load_seconds, {"Accept": PIP_ACCEPT})
        many = run_wrk(
            wrk,
            wrk_script,
            url,
            settings.connections,
            settings.load_seconds,
            {"Accept": PIP_ACCEPT},
        )
        details[f"merged {target.label}"] = {"1": attrs.asdict(one), "many": attrs.asdict(many)}
        for load in (one, many):
            if load.errors or not load.requests:
                raise RuntimeError(f"wrk: {load.errors} errors in {load.requests} requests")
        latency[target.label] = one.p99_ms
        p50.values[target.label] = one.p50_ms
        return many.requests_per_second

    each(rps, targets, measure)
    for label in targets:
        p99.values[label] = latency.get(label)
        for row in (p50, p99, filling):
            if label not in row.values:
                row.errors[label] = rps.errors.get(label, "not measured")
    ratio = rps.ratio("devpid", "devpi")
    rps.note = f"wrk, pip's Accept header, {settings.load_seconds:.0f} s"
    if ratio is not None:
        met = "met" if ratio >= MERGED_RATIO else "NOT MET"
        rps.note += f"; goal devpid/devpi >= {MERGED_RATIO:.0f}x: {met}"
    filling.note += "one keep-alive connection, multipart POSTs, X-Devpi-Auth"


# --- 4. project JSON ------------------------------------------------------------------------------


def register_versions(
    target: Target, project: str, versions: int, budget: float
) -> tuple[int, str]:
    """``versions`` versions of ``project`` in alice/dev: ``:action=submit`` (register) when
    the server takes it, else one tiny sdist per version; (done, how)."""
    fields = [("metadata_version", "2.1"), ("name", project), ("summary", "many versions")]
    poster = Poster(target.server.url, target.auth)
    path = f"/{USER}/dev/"
    try:
        status, answer = poster.post(path, [(":action", "submit"), *fields, ("version", "0.0")])
    finally:
        poster.close()
    if status == 200:
        items: list[Form] = [
            ([(":action", "submit"), *fields, ("version", f"0.{i}")], None, lambda: b"")
            for i in range(1, versions)
        ]
        done, _ = populate(target, "dev", items, budget)
        return done + 1, "register (:action=submit)"
    module = project.replace("-", "_")
    items2: list[Form] = [
        (
            upload_fields(project, f"0.{i}", "sdist"),
            f"{module}-0.{i}.tar.gz",
            partial(sdist_bytes, project, f"0.{i}"),
        )
        for i in range(versions)
    ]
    done, _ = populate(target, "dev", items2, budget)
    return done, f"one sdist per version (:action=submit answered {status} {answer[:120]})"


def project_json(
    results: Results,
    targets: Mapping[str, Target],
    settings: UploadSettings,
    details: dict[str, Any],
) -> None:
    versions = settings.json_versions
    project = "bench-json"
    row = results.row(
        "uploads_json",
        f"project JSON, {versions} versions, one warm GET",
        "ms",
        False,
        "uploads",
    )
    hows: dict[str, str] = {}

    def measure(target: Target) -> float:
        started = time.perf_counter()
        done, how = register_versions(target, project, versions, POPULATE_BUDGET)
        hows[target.label] = f"{how}, {done} in {time.perf_counter() - started:.0f}s"
        client = Client(target.server.url, timeout=300)
        path = f"/{USER}/dev/{project}"
        times = []
        try:
            for n in range(settings.json_runs + 2):  # the first two warm up
                started = time.perf_counter()
                status, body = client.request("GET", path, headers={"Accept": "application/json"})
                spent = time.perf_counter() - started
                if status != 200:
                    raise RuntimeError(f"GET {path} (Accept: application/json) answered {status}")
                if n >= 2:
                    times.append(spent)
        finally:
            client.close()
        found = len(json.loads(body).get("result", {}))
        if found != done:
            results.problems.append(f"uploads: {target.label} {path} has {found} versions, {done}")
        details[f"json {target.label}"] = {"versions": done, "times": times, "how": how}
        return statistics.median(times) * 1000

    each(row, targets, measure)
    mine = row.values.get("devpid")
    notes = [f"median of {settings.json_runs}, keep-alive"]
    notes += [f"{label}: {how}" for label, how in hows.items()]
    if mine is not None:
        notes.append(f"goal devpid < {JSON_MS:.0f} ms: {'met' if mine < JSON_MS else 'NOT MET'}")
    row.note = "; ".join(notes)


# --- 5. pip install of private packages --------------------------------------------------------


def private_packages(count: int, requirements: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``bench-private-<i>``, each requiring one of the upstream's projects."""
    return [(f"bench-private-{i}", [requirements[i % len(requirements)]]) for i in range(count)]


def static_directory(
    static: Path, upstream_root: Path, wheels: Mapping[str, Path], requirements: Sequence[str]
) -> None:
    """The upstream's pages and files (files linked, not copied) plus a page per private
    package: a static simple index for nginx."""
    simple, files = static / "simple", static / "files"
    shutil.copytree(upstream_root / "simple", simple)
    files.mkdir()
    for path in (upstream_root / "files").iterdir():
        (files / path.name).symlink_to(path)
    for project, path in wheels.items():
        shutil.copy2(path, files / path.name)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        page = simple / project
        page.mkdir()
        (page / "index.html").write_text(
            f'<!DOCTYPE html>\n<html><body>\n<a href="../../files/{path.name}#sha256={digest}">'
            f"{path.name}</a><br/>\n</body></html>\n"
        )
    (simple / "index.json").unlink(missing_ok=True)


def start_nginx(group: ProcessGroup, here: Path, static: Path) -> str:
    from tests.fixtures.nginx import Nginx, nginx_path

    if nginx_path() is None:
        raise BenchError("nginx missing (apt-get install -y nginx)")
    port = free_port()
    include = here / "nginx-static.conf"
    include.write_text(
        f"server {{\n    listen 127.0.0.1:{port};\n    root {static};\n"
        "    index index.html;\n    access_log off;\n}\n"
    )
    nginx = Nginx.start(here / "nginx", include, port)
    group.adopt("nginx-static", nginx.process)
    return f"http://127.0.0.1:{port}/simple/"


def pip_private(
    results: Results,
    targets: Mapping[str, Target],
    group: ProcessGroup,
    here: Path,
    upstream_root: Path,
    requirements: Sequence[str],
    settings: UploadSettings,
    details: dict[str, Any],
) -> None:
    packages = private_packages(settings.private_packages, requirements)
    row = results.row(
        "uploads_pip",
        f"warm pip install of {len(packages)} private packages + their deps",
        "s",
        False,
        "uploads",
    )
    wheels_dir = here / "private-wheels"
    wheels_dir.mkdir(exist_ok=True)
    wheels = {}
    for name, requires in packages:
        path = wheels_dir / wheel_name(name, "1.0")
        write_small_wheel(path, name, "1.0", requires)
        wheels[name] = path
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith("PIP_") and "PROXY" not in k.upper()
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    names = [name for name, _ in packages]

    def once(index_url: str) -> float:
        venv = Path(tempfile.mkdtemp(prefix="pip-venv-", dir=here))
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
        )
        argv = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--isolated",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--quiet",
            "--index-url",
            index_url,
            *names,
        ]
        started = time.perf_counter()
        try:
            done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        finally:
            elapsed = time.perf_counter() - started
            shutil.rmtree(venv, ignore_errors=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip exited {done.returncode}: {done.stderr[-800:]}")
        return elapsed

    def timed(label: str, index_url: str) -> float:
        warm = once(index_url)
        times = [once(index_url) for _ in range(settings.pip_runs)]
        details[f"pip {label}"] = {"index_url": index_url, "warm_up": warm, "runs": times}
        return statistics.median(times)

    def measure(target: Target) -> float:
        poster = Poster(target.server.url, target.auth)
        try:
            for name, requires in packages:
                status, answer = poster.post(
                    f"/{USER}/dev/",
                    upload_fields(name, "1.0", "bdist_wheel", requires),
                    wheels[name].name,
                    wheels[name].read_bytes(),
                )
                expect_ok(status, f"POST /{USER}/dev/ ({wheels[name].name})", answer)
        finally:
            poster.close()
        return timed(target.label, f"{target.index_url('dev')}+simple/")

    each(row, targets, measure)
    try:
        static = here / "static"
        static_directory(static, upstream_root, wheels, requirements)
        row.values["baseline"] = timed("nginx", start_nginx(group, here, static))
    except Exception as exc:  # a failed measurement is a result too
        row.errors["baseline"] = f"{type(exc).__name__}: {exc}"[:500]
    ratio = row.ratio("devpid", "baseline")
    row.note = (
        f"median of {settings.pip_runs} after 1 warm-up, a fresh venv each, --no-cache-dir; "
        "baseline: nginx serving a static simple index of the same files"
    )
    if ratio is not None:
        met = "met" if ratio <= PIP_VS_NGINX else "NOT MET"
        row.note += f"; goal devpid/nginx <= {PIP_VS_NGINX}x: {met}"


# --- the section ------------------------------------------------------------------------------


def measure_uploads(
    workdir: Path,
    upstream: Upstream,
    upstream_root: Path,
    requirements: Sequence[str],
    results: Results,
    *,
    quick: bool,
    wrk: str | None,
    wrk_script: Path,
    devpi_venv: Path | None,
    skip_devpid: bool = False,
) -> None:
    """Start a devpid and a devpi-server (``devpi_venv``; None: devpid only), measure, stop.

    ``upstream`` serves ``upstream_root``, which holds ``requirements``: the public
    projects the private packages depend on."""
    settings = settings_for(quick)
    here = workdir / "uploads"
    here.mkdir(exist_ok=True)
    details: dict[str, Any] = {}
    results.details["uploads"] = details
    results.meta["uploads_settings"] = attrs.asdict(settings)
    own = ProcessGroup(log_dir=here)
    try:
        targets: dict[str, Target] = {}
        twine: Path | None = None
        if not skip_devpid:
            server = start_devpid(
                own,
                "devpid-uploads",
                here / "devpid-serverdir",
                upstream,
                devpid_upload_limit(settings.big_size + 64 * MiB),
            )
            targets["devpid"] = Target("devpid", server)
        if devpi_venv is not None:
            setup: list[str] = results.meta.setdefault("devpi_setup", [])
            bin_dir = devpi.ensure_venv(devpi_venv, setup)
            results.meta.setdefault("devpi_server_version", devpi.devpi_version(bin_dir))
            server = start_devpi_uploads(
                own, bin_dir, here, upstream, settings.big_size + 64 * MiB, setup
            )
            targets["devpi"] = Target("devpi", server)
            twine = ensure_twine(bin_dir)
        elif (devpi.DEFAULT_VENV / "bin" / "twine").exists():
            twine = devpi.DEFAULT_VENV / "bin" / "twine"
        for label, target in list(targets.items()):
            try:
                prepare(target)
            except (BenchError, OSError, KeyError, ValueError) as exc:
                results.problems.append(f"uploads: {label} not measured: {exc}")
                del targets[label]
        say(f"uploads: servers {', '.join(f'{t.label} {t.server.url}' for t in targets.values())}")
        if twine is None:
            results.problems.append("uploads: no twine (it comes with the devpi venv)")
        else:
            say(f"uploads: twine upload of {settings.twine_wheels} wheels")
            twine_upload(results, targets, twine, here, settings.twine_wheels, details)
        say("uploads: one big upload")
        big_upload(results, targets, here, settings.big_size, details)
        say(f"uploads: merged page of {settings.merged_versions * 2} files")
        merged_page(results, targets, settings, wrk, wrk_script, details)
        say(f"uploads: project JSON of {settings.json_versions} versions")
        project_json(results, targets, settings, details)
        say(f"uploads: pip install of {settings.private_packages} private packages")
        pip_private(results, targets, own, here, upstream_root, requirements, settings, details)
        check_children(own, results)
    finally:
        own.close()
        shutil.rmtree(here / "big", ignore_errors=True)


def devpid_upload_limit(size: int) -> list[str]:
    """``--max-upload-size`` above the big file (devpid's default, 1G, answers 413 to the
    2 GiB upload), when this devpid has the option; the same room devpi-server gets."""
    return ["--max-upload-size", str(size)] if "--max-upload-size" in devpid_help() else []


def ensure_twine(bin_dir: Path) -> Path:
    """twine in the devpi venv (installed there when missing): the real upload client."""
    twine = bin_dir / "twine"
    if not twine.exists():
        subprocess.run(
            [str(bin_dir / "pip"), "install", "--quiet", "twine"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return twine
