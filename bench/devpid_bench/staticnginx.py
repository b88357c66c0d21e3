"""nginx serving a directory as it is: the static-server baseline of the issue-17 benches.

One worker (the machine has 2 cores, shared with devpid and wrk), ``sendfile on``, no
access log, a bare ``root``; every file is sent with the one Content-Type given (and
``Content-Encoding: gzip`` when the files are gzipped bodies), so that nginx answers
with the same headers devpid does.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from devpid_bench.procs import free_port
from tests.fixtures.ports import accepts_connections, wait_until

NGINX = "/usr/sbin/nginx"

CONF = """\
{user}worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    client_body_temp_path {dir}/tmp;
    proxy_temp_path {dir}/tmp;
    fastcgi_temp_path {dir}/tmp;
    uwsgi_temp_path {dir}/tmp;
    scgi_temp_path {dir}/tmp;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            root {root};
            types {{ }}
            default_type {content_type};
{extra}        }}
    }}
}}
"""


@attrs.frozen
class StaticNginx:
    url: str
    #: Its one worker process (whose CPU the file bench reads).
    worker_pid: int


def have_nginx() -> bool:
    return os.access(NGINX, os.X_OK)


@contextmanager
def static_nginx(
    workdir: Path,
    root: Path,
    content_type: str = "application/octet-stream",
    gzipped: bool = False,
) -> Iterator[StaticNginx]:
    """nginx serving the files of ``root``, stopped on leaving."""
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    # as root, its worker would be nobody, who may not read the temporary directory
    user = "user root;\n" if os.geteuid() == 0 else ""
    extra = "            add_header Content-Encoding gzip;\n" if gzipped else ""
    conf = prefix / "nginx.conf"
    conf.write_text(
        CONF.format(
            user=user, dir=prefix, port=port, root=root, content_type=content_type, extra=extra
        )
    )
    argv = [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    process = subprocess.Popen(
        [*argv, "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_until(lambda: process.poll() is not None or accepts_connections(port), 20):
            raise RuntimeError("nginx did not listen")
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited: {(prefix / 'error.log').read_text()[-500:]}")
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        worker = wait_until(lambda: children.read_text().split(), 10)
        if not worker:
            raise RuntimeError("nginx started no worker")
        yield StaticNginx(f"http://127.0.0.1:{port}", int(worker[0]))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
