"""nginx, supervisord, systemd, pip and uv files for one installation (``devpid gen-config``).

Like devpi-gen-config, the files name this installation: the ``twistd`` beside
this Python, the serverdir, the workers' ports and the Redis they share, so
they work as written. ``devpid gen-config --example --out etc`` writes the
examples shipped in ``etc/``; a test keeps those equal to this module's output.
The command line, and the checks of its options, are devpid.cli.gen_config.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import attrs

from devpid.config import DEFAULTS, _as_size

FILES = (
    "nginx-devpid.conf",
    "supervisord.conf",
    "devpid.service",
    "devpid@.service",
    "pip.conf",
    "uv.toml",
)
DEFAULT_LOGDIR = "/var/log/devpid"
DEFAULT_RUNDIR = "/run/devpid"
#: How much longer than ``--shutdown-grace`` a supervisor waits before it kills devpid.
STOP_MARGIN = 10.0
#: Seconds a supervisord worker must stay up to count as started (devpid listens in < 1 s).
START_SECONDS = 3
#: devpid's ``--max-upload-size`` when not given, in bytes.
DEFAULT_MAX_UPLOAD_SIZE = _as_size("max-upload-size", DEFAULTS["max-upload-size"][0], 1024)
#: How long nginx waits for devpid's answer to an upload once the body is sent: devpid
#: fsyncs and checks the file then, which for a big file on a slow disk takes a while.
UPLOAD_READ_TIMEOUT = 300
#: Characters that need no quoting in systemd.
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_@%+=:,./~-]+")


@attrs.frozen
class Deployment:
    """Everything the generated files depend on."""

    twistd: tuple[str, ...]  # the command that runs twistd
    serverdir: str
    user: str
    logdir: str = DEFAULT_LOGDIR
    rundir: str = DEFAULT_RUNDIR
    port: int = 3141  # the first worker's; the others follow
    workers: int = 2
    nginx_port: int = 80
    nginx_address: str | None = None  # None: every address
    server_names: tuple[str, ...] = ("localhost", "$hostname")
    path_prefix: str = ""  # "" or "/pypi": where nginx serves devpid
    outside_url: str | None = None  # a fixed URL for links instead of the request's host
    redis: str | None = None
    upstream: str | None = None
    shutdown_grace: float = 30.0
    max_upload_size: int = DEFAULT_MAX_UPLOAD_SIZE  # bytes: devpid's limit, and nginx's
    devpid_args: tuple[str, ...] = ()  # more devpid options, given after ``--``
    #: This host's devpid is a read-only replica of this primary: nginx sends it the writes.
    primary_url: str | None = None
    #: The secret a primary shares with its replicas (``--replication-secret-file``).
    replication_secret_file: str | None = None
    #: ``--require-auth``: devpid, and nginx before each file it serves, want credentials.
    require_auth: bool = False

    @property
    def worker_ports(self) -> range:
        return range(self.port, self.port + self.workers)

    @property
    def stop_timeout(self) -> int:
        """Seconds a supervisor waits after SIGTERM: longer than the grace."""
        return math.ceil(self.shutdown_grace + STOP_MARGIN)

    @property
    def index_url(self) -> str:
        """The simple index clients use: through nginx."""
        if self.outside_url is not None:
            return f"{self.outside_url}/root/pypi/+simple/"
        host = "localhost"
        if (
            self.nginx_address is not None
            and not ipaddress.ip_address(self.nginx_address).is_unspecified
        ):
            host = _host_literal(self.nginx_address)
        port = "" if self.nginx_port == 80 else f":{self.nginx_port}"
        return f"http://{host}{port}{self.path_prefix}/root/pypi/+simple/"

    @property
    def insecure_host(self) -> str | None:
        """The host pip and uv must trust for plain HTTP, or None for HTTPS."""
        parts = urlsplit(self.index_url)
        return parts.hostname if parts.scheme == "http" else None

    def devpid_command(self, listen: str) -> list[str]:
        """``twistd -n devpid ...``: in the foreground, no pid file, logging to stdout."""
        command = [*self.twistd, "-n", "--pidfile=", "devpid", "--listen", listen]
        command += ["--serverdir", self.serverdir]
        if self.redis is not None:
            command += ["--redis", self.redis]
        if self.upstream is not None:
            command += ["--upstream", self.upstream]
        if self.shutdown_grace != DEFAULTS["shutdown-grace"][0]:
            command += ["--shutdown-grace", _number(self.shutdown_grace)]
        if self.max_upload_size != DEFAULT_MAX_UPLOAD_SIZE:
            command += ["--max-upload-size", size_text(self.max_upload_size)]
        if self.primary_url is not None:
            command += ["--primary-url", self.primary_url]
        if self.replication_secret_file is not None:
            command += ["--replication-secret-file", self.replication_secret_file]
        if self.require_auth:
            command += ["--require-auth"]
        return command + list(self.devpid_args)


def _host_literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _number(value: float) -> str:
    """A number as written by hand: 30, 2.5, 1234567 (never 1.23457e+06)."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _seconds(value: float) -> str:
    return f"{_number(value)} s"


def size_text(size: int) -> str:
    """Bytes in the largest unit that divides them: 1G, 512M, 1536K, 1000.

    devpid reads it back to the same number (``_as_size``: powers of 1024), and
    nginx too once in lower case (``1g``): both sides of the proxy agree.
    """
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


# -- nginx -------------------------------------------------------------------------


def render_nginx(d: Deployment) -> str:
    prefix = d.path_prefix
    pattern = re.escape(prefix)
    listen = str(d.nginx_port)
    if d.nginx_address is not None:
        listen = f"{_host_literal(d.nginx_address)}:{d.nginx_port}"
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in d.worker_ports)
    outside = d.outside_url or f"$scheme://$http_host{prefix}"
    where = f"under {prefix}/" if prefix else "at the root"
    strip = f"        rewrite ^{pattern}(/.*)$ $1 break;\n" if prefix else ""
    if prefix:
        locations = (
            f"    location {prefix}/ {{\n{strip}        proxy_pass http://devpid;\n    }}\n\n"
            f"    location @devpid {{\n{strip}        proxy_pass http://devpid;\n    }}\n\n"
            "    # The rest of this host is not devpid's.\n"
            "    location / {\n        return 404;\n    }\n"
        )
    else:
        locations = (
            "    location / {\n        proxy_pass http://devpid;\n    }\n\n"
            "    location @devpid {\n        proxy_pass http://devpid;\n    }\n"
        )
    return f"""\
# nginx in front of devpid, written by `devpid gen-config` (see docs/deployment.md).
# It holds http-level blocks: include it inside http {{ }}, e.g. on Debian as
# /etc/nginx/conf.d/devpid.conf, then `nginx -t && nginx -s reload`.
# devpid is served {where}. nginx serves cached and uploaded files itself from
# the serverdir {d.serverdir}, so its worker user (www-data) must be able to read it.

upstream devpid {{
{servers}    # Idle connections kept open to the workers, per nginx worker process: more
    # than the requests in flight at once, or nginx opens a connection per request.
    keepalive 128;
    keepalive_requests 100000;
    keepalive_timeout 60s;
}}

server {{
    listen {listen};
    server_name {" ".join(d.server_names)};
    # Uploads to private indexes: devpid's --max-upload-size, which it enforces too.
    client_max_body_size {size_text(d.max_upload_size).lower()};

    # Every request nginx passes on: keep-alive to the workers, links in devpid's
    # pages under the URL the client used, cache misses streamed as they arrive
    # (devpid also sends X-Accel-Buffering: no).
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Outside-URL {outside};
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_buffering off;
{_replica_writes(d)}{lockdown_block(d, outside)}
    # Downloads in progress are never served.
    location ~* \\.devpid-partial {{
        return 404;
    }}

    # A file's path under +files/ is its URL, for mirrors' cached files and stages'
    # uploaded ones: nginx serves it from disk, as bytes, without asking devpid. A
    # file not there (not cached yet, or deleted: 410) goes to devpid, and so do
    # DELETE, tox results POSTed to a file and devpi's JSON about a file.
    location ~ ^{pattern}(?<devpid_file>/[^/]+/[^/]+/\\+f/[^/]+/[^/]+/[^/]+)$ {{
        error_page 418 = @devpid;
        if ($request_method !~ ^(GET|HEAD)$) {{
            return 418;
        }}
        if ($http_accept ~ application/json) {{
            return 418;
        }}
        root {d.serverdir}/+files;
        types {{ }}
        default_type application/octet-stream;
        add_header Cache-Control "max-age=31536000, immutable";
        try_files $devpid_file @devpid;
    }}

    # Uploads (POST /<user>/<index>/) stream through to devpid as they arrive,
    # which writes them to the serverdir once: not first to nginx's disk.
    location ~ ^{pattern}/[^+/][^/]*/[^+/][^/]*/?$ {{
{strip}        proxy_request_buffering off;
        proxy_read_timeout {UPLOAD_READ_TIMEOUT}s;
        proxy_pass http://devpid;
    }}

{locations}{_primary_location(d)}}}
"""


def lockdown_block(d: Deployment, outside: str) -> str:
    """With ``--require-auth``: nginx's ``auth_request`` to devpid's ``/+authcheck`` before
    every request, the files it serves from disk included (devpid-lockdown's layout)."""
    if not d.require_auth:
        return ""
    return f"""
    # --require-auth: before every request, the files served from disk below
    # included, nginx asks devpid's /+authcheck with the request's own headers:
    # 2xx goes on, 401 (with devpid's WWW-Authenticate) or 403 is the answer.
    auth_request /+devpid-authcheck;

    location = /+devpid-authcheck {{
        internal;
        proxy_pass http://devpid/+authcheck;
        proxy_pass_request_body off;
        proxy_set_header Content-Length "";
        proxy_set_header X-Original-URI $request_uri;
        proxy_set_header X-Original-Method $request_method;
        # A location's own proxy_set_header drops the server's: the same again.
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Outside-URL {outside};
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
    }}
"""


def _replica_writes(d: Deployment) -> str:
    if d.primary_url is None:
        return ""
    return f"""
    # devpid here is a read-only replica of {d.primary_url}: every method
    # but GET, HEAD and OPTIONS (uploads, logins, changes) goes to the primary.
    error_page 418 = @primary;
    if ($request_method !~ ^(GET|HEAD|OPTIONS)$) {{
        return 418;
    }}
"""


def _primary_location(d: Deployment) -> str:
    if d.primary_url is None:
        return ""
    parts = urlsplit(d.primary_url)
    path = parts.path.rstrip("/")
    rewrite = ""
    if path or d.path_prefix:
        pattern = re.escape(d.path_prefix)
        rewrite = f"        rewrite ^{pattern}(/.*)$ {path}$1 break;\n"
    return f"""
    location @primary {{
{rewrite}        proxy_request_buffering off;
        proxy_read_timeout {UPLOAD_READ_TIMEOUT}s;
        proxy_pass {parts.scheme}://{parts.netloc};
    }}
"""


# -- supervisord ---------------------------------------------------------------------


def _supervisor_value(word: str) -> str:
    return shlex.quote(word).replace("%", "%%")


def render_supervisord(d: Deployment) -> str:
    command = d.devpid_command("tcp:PORT:interface=127.0.0.1")
    line = " ".join(_supervisor_value(word) for word in command)
    line = line.replace("tcp:PORT:", "tcp:%(process_num)d:")
    first, last = d.worker_ports[0], d.worker_ports[-1]
    ports = f"port {first}" if d.workers == 1 else f"ports {first}-{last}"
    sharing = "one serverdir and one Redis" if d.redis else "the serverdir"
    log = f"{d.logdir}/%(program_name)s-%(process_num)d.log"
    return f"""\
; supervisord for devpid, written by `devpid gen-config` (see docs/deployment.md).
;   supervisord -c /etc/devpid/supervisord.conf
;   supervisorctl -c /etc/devpid/supervisord.conf status|stop|start|restart 'devpid:*'
; {d.workers} devpid process{"es" if d.workers > 1 else ""} on {ports} sharing {sharing}.
; {d.logdir} and {d.rundir} must exist.

[unix_http_server]
file = {d.rundir}/supervisor.sock
chmod = 0700

[supervisorctl]
serverurl = unix://{d.rundir}/supervisor.sock

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisord]
logfile = {d.logdir}/supervisord.log
logfile_maxbytes = 10MB
logfile_backups = 5
pidfile = {d.rundir}/supervisord.pid
childlogdir = {d.logdir}

[program:devpid]
; One process per port: process_num counts the ports from numprocs_start.
numprocs = {d.workers}
numprocs_start = {first}
process_name = %(program_name)s-%(process_num)d
command = {line}
user = {d.user}
; Cached files readable by nginx.
umask = 022
; devpid ignores this host's pip configuration (it may name devpid itself):
; its upstream is --upstream, else pip's built-in default.
environment = PIP_CONFIG_FILE="/dev/null"
autostart = true
autorestart = unexpected
exitcodes = 0
startsecs = {START_SECONDS}
; SIGTERM lets running downloads finish for up to --shutdown-grace
; ({_seconds(d.shutdown_grace)}), then devpid exits 0: wait longer than that.
stopsignal = TERM
stopwaitsecs = {d.stop_timeout}
; twistd -n logs to stdout: supervisord writes one file per process, rotated.
redirect_stderr = true
stdout_logfile = {log}
stdout_logfile_maxbytes = 50MB
stdout_logfile_backups = 10
"""


# -- systemd -------------------------------------------------------------------------


def _systemd_word(word: str) -> str:
    if not _PLAIN_WORD.fullmatch(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word.replace("%", "%%").replace("$", "$$")


def render_unit(d: Deployment, template: bool) -> str:
    listen = "tcp:PORT:interface=127.0.0.1"
    command = " ".join(_systemd_word(word) for word in d.devpid_command(listen))
    port = "%i" if template else str(d.port)
    command = command.replace("tcp:PORT:", f"tcp:{port}:")
    after = "network.target redis-server.service" if d.redis else "network.target"
    if template:
        ports = " ".join(f"devpid@{p}" for p in d.worker_ports)
        intro = (
            "# A template for devpid workers, the instance being the port,\n"
            f"# written by `devpid gen-config` (see docs/deployment.md):\n"
            f"#   cp devpid@.service /etc/systemd/system/ && systemctl daemon-reload\n"
            f"#   systemctl enable --now {ports}\n"
        )
        description = "devpid worker on port %i"
    else:
        intro = (
            "# One devpid process, written by `devpid gen-config` (see docs/deployment.md):\n"
            "#   cp devpid.service /etc/systemd/system/ && systemctl daemon-reload\n"
            "#   systemctl enable --now devpid\n"
        )
        description = f"devpid on port {d.port}"
    return f"""\
{intro}
[Unit]
Description={description}
After={after}

[Service]
Type=simple
User={_systemd_word(d.user)}
# Cached files readable by nginx.
UMask=0022
# devpid ignores this host's pip configuration (it may name devpid itself):
# its upstream is --upstream, else pip's built-in default.
Environment=PIP_CONFIG_FILE=/dev/null
ExecStart={command}
# SIGTERM lets running downloads finish for up to --shutdown-grace
# ({_seconds(d.shutdown_grace)}), then devpid exits 0: wait longer than that.
KillSignal=SIGTERM
TimeoutStopSec={d.stop_timeout}
Restart=on-failure
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""


# -- clients -------------------------------------------------------------------------


def render_pip_conf(d: Deployment) -> str:
    trusted = f"trusted-host = {d.insecure_host}\n" if d.insecure_host else ""
    return f"""\
# pip configuration for devpid's clients, e.g. ~/.config/pip/pip.conf,
# /etc/pip.conf, or pip.conf in a virtualenv: devpid behind nginx, written by
# `devpid gen-config` (see docs/deployment.md). For devpid alone, without
# nginx, use http://localhost:3141/root/pypi/+simple/ (docs/quickstart.md).
# If devpid itself runs as a user that reads this file, start it with
# --upstream (or PIP_CONFIG_FILE=/dev/null), or it will mirror itself.
[global]
index-url = {d.index_url}
{trusted}"""


def render_uv_toml(d: Deployment) -> str:
    insecure = f'allow-insecure-host = ["{d.insecure_host}"]\n\n' if d.insecure_host else ""
    return f"""\
# uv configuration for devpid's clients, e.g. ~/.config/uv/uv.toml,
# /etc/uv/uv.toml, or uv.toml in a project: devpid behind nginx, written by
# `devpid gen-config` (see docs/deployment.md). For devpid alone, without
# nginx, use http://localhost:3141/root/pypi/+simple/ (docs/quickstart.md).
# Top-level keys must come before the [[index]] table.
{insecure}[[index]]
url = "{d.index_url}"
default = true
"""


def render(d: Deployment) -> dict[str, str]:
    """Every file, by name."""
    return {
        "nginx-devpid.conf": render_nginx(d),
        "supervisord.conf": render_supervisord(d),
        "devpid.service": render_unit(d, template=False),
        "devpid@.service": render_unit(d, template=True),
        "pip.conf": render_pip_conf(d),
        "uv.toml": render_uv_toml(d),
    }


def write(d: Deployment, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render(d).items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
