"""``devpid gen-config``: its options, checked into a ``Deployment``, and the files written.

Every option is checked before anything is written, and an option that
cannot be used is one line (``ConfigError``): what goes into the files must
need no quoting in nginx, supervisord or systemd. The files themselves are
rendered by devpid.ops.genconfig.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.python import usage

from devpid.config import DEFAULTS, ConfigError, _as_float, _as_size, _http_url, _redis_url
from devpid.ops.genconfig import DEFAULT_LOGDIR, DEFAULT_RUNDIR, FILES, Deployment, write

#: The command, and what its callers need (``FILES``: the names ``main`` writes).
__all__ = ["FILES", "Options", "default_twistd", "deployment_from_options", "main"]

PROGRAM = "devpid gen-config"
#: What ``--example`` assumes about an installation (docs/deployment.md's): devpid in
#: a virtualenv in /opt/devpid, running as the system user ``devpid``.
EXAMPLE = {
    "twistd": "/opt/devpid/bin/twistd",
    "serverdir": "/srv/devpid",
    "user": "devpid",
    "redis": "redis://127.0.0.1:6379/0",
}
MAX_WORKERS = 64
#: Options whose values go into the files for devpid: gen-config sets them itself.
_MANAGED = frozenset(
    {
        "listen",
        "serverdir",
        "redis",
        "upstream",
        "outside-url",
        "shutdown-grace",
        "max-upload-size",
        "primary-url",
        "replication-secret-file",
        "require-auth",
    }
)
#: Characters that would need a different quoting in nginx, supervisord and systemd.
_UNSAFE = re.compile(r"[\s\"'\\;#{}$`]")
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_SERVER_NAME = re.compile(r"[A-Za-z0-9*_.~-]+|\$hostname")


def default_twistd() -> tuple[str, ...]:
    """The ``twistd`` script beside this Python, else the same entry point through it."""
    script = Path(sys.executable).parent / "twistd"
    if script.is_file():
        return (str(script),)
    return (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")


def current_user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _integer(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"--{name} must be a whole number from {low} to {high}, not {raw!r}")
    return value


def _safe(name: str, value: str) -> str:
    if not value or _UNSAFE.search(value):
        raise ConfigError(
            f"--{name} must not be empty or contain spaces, quotes or any of ;#{{}}$\\`, "
            f"not {value!r}"
        )
    return value


def _path(name: str, raw: str) -> str:
    # Checked once expanded: ~ and the current directory are part of what is written.
    path = _safe(name, os.path.abspath(os.path.expanduser(raw)) if raw else raw)
    if "%" in path:
        raise ConfigError(f"--{name} must not contain %, not {raw!r}")
    return path


def _path_prefix(raw: str) -> str:
    segments = [s for s in raw.strip().split("/") if s]
    for segment in segments:
        if not _PATH_SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise ConfigError(
                f"--path-prefix must be a URL path like /pypi (letters, digits, ._~-), not {raw!r}"
            )
    return "".join(f"/{s}" for s in segments)


def _outside_url(raw: str) -> tuple[str, str]:
    """The URL without a trailing /, and its path: the prefix nginx serves devpid under."""
    url = _http_url("outside-url", _safe("outside-url", raw.strip()))
    parts = urlsplit(url)
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"--outside-url must be a plain http(s) URL with a path, not {raw!r}")
    return url.rstrip("/"), _path_prefix(parts.path)


def _devpid_args(args: Sequence[str]) -> tuple[str, ...]:
    known = {*DEFAULTS, "config", "c"}
    for arg in args:
        _safe("devpid option", arg)
        if arg.startswith("-"):
            name = arg.lstrip("-").partition("=")[0]
            if name not in known:
                raise ConfigError(f"{arg} is not a devpid option (see: twistd devpid --help)")
            if name in _MANAGED:
                raise ConfigError(f"give --{name} to gen-config itself, before --")
    return tuple(args)


class Options(usage.Options):
    synopsis = "Usage: devpid gen-config [options] [-- devpid options]"
    longdesc = (
        "Write nginx, supervisord, systemd, pip and uv configuration files for devpid "
        "on this host into a directory. Options after -- are added to devpid's command "
        "line (e.g. -- --cache-expiry 600). --example writes the examples in etc/."
    )
    optParameters = [
        ["out", "o", "gen-config", "the directory to write the files into"],
        ["serverdir", None, None, "devpid's serverdir [default: ~/.devpid]"],
        ["port", None, "3141", "the first worker's port (127.0.0.1); the others follow"],
        ["workers", None, "2", "how many devpid processes (consecutive ports)"],
        ["redis", None, None, "the Redis the workers share (required with --workers > 1)"],
        ["upstream", None, None, "the simple index devpid mirrors [default: pip's]"],
        ["nginx-port", None, "80", "the port nginx listens on"],
        ["nginx-address", None, None, "the address nginx listens on [default: all]"],
        ["path-prefix", None, None, "serve devpid under this path, e.g. /pypi"],
        ["outside-url", None, None, "a fixed URL clients use, e.g. https://host/pypi"],
        ["user", None, None, "the user devpid runs as [default: the current user]"],
        ["logdir", None, DEFAULT_LOGDIR, "where supervisord writes its and devpid's logs"],
        ["rundir", None, DEFAULT_RUNDIR, "where supervisord keeps its socket and pid file"],
        ["shutdown-grace", None, "30", "devpid's --shutdown-grace: seconds on SIGTERM"],
        [
            "max-upload-size",
            None,
            DEFAULTS["max-upload-size"][0],
            "devpid's --max-upload-size (1G, 512M, bytes), nginx's client_max_body_size",
        ],
        ["twistd", None, None, "the twistd to run [default: the one beside this Python]"],
        [
            "primary-url",
            None,
            None,
            "devpid here is a read-only replica of this primary; nginx sends it the writes",
        ],
        [
            "replication-secret-file",
            None,
            None,
            "the secret a primary shares with its replicas (required with --primary-url)",
        ],
    ]
    optFlags = [
        ["example", None, "the documented example installation, as in etc/"],
        [
            "require-auth",
            None,
            "devpid --require-auth, and nginx asks devpid's /+authcheck before every request",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["server-names"] = []
        self["devpid-args"] = ()

    def opt_server_name(self, name: str) -> None:
        """nginx server_name, repeatable [default: localhost $hostname]"""
        self["server-names"].append(name)

    def parseArgs(self, *args: str) -> None:
        self["devpid-args"] = args


def deployment_from_options(options: Mapping[str, Any]) -> Deployment:
    """Validate the options; ConfigError (one line) for any that cannot be used."""

    def given(name: str) -> str | None:
        value = options.get(name)
        if value is None and options.get("example"):
            value = EXAMPLE.get(name)
        return None if value is None else str(value)

    workers = _integer("workers", str(given("workers") or 2), 1, MAX_WORKERS)
    port = _integer("port", str(given("port") or 3141), 1, 65536 - workers)
    nginx_port = _integer("nginx-port", str(given("nginx-port") or 80), 1, 65535)
    if nginx_port in range(port, port + workers):
        raise ConfigError(f"--nginx-port {nginx_port} is one of the workers' ports")
    nginx_address = given("nginx-address")
    if nginx_address is not None:
        try:
            nginx_address = str(ipaddress.ip_address(nginx_address.strip("[]")))
        except ValueError:
            raise ConfigError(
                f"--nginx-address must be an IP address, not {nginx_address!r}"
            ) from None
    redis = given("redis")
    if redis is not None:
        redis = _redis_url(_safe("redis", redis.strip()))
    elif workers > 1:
        raise ConfigError(
            f"--redis is required with --workers {workers}: "
            "processes sharing a serverdir share one Redis"
        )
    upstream = given("upstream")
    if upstream is not None:
        upstream = _http_url("upstream", _safe("upstream", upstream.strip()))
    prefix = _path_prefix(given("path-prefix") or "")
    outside_url = None
    raw_outside = given("outside-url")
    if raw_outside is not None:
        outside_url, outside_prefix = _outside_url(raw_outside)
        if given("path-prefix") is not None and outside_prefix != prefix:
            raise ConfigError(
                f"--path-prefix {prefix or '/'} is not the path of --outside-url {outside_url}"
            )
        prefix = outside_prefix
    server_names = tuple(str(name) for name in options.get("server-names") or ())
    for name in server_names:
        if not _SERVER_NAME.fullmatch(name):
            raise ConfigError(f"--server-name must be a host name, not {name!r}")
    if not server_names:
        server_names = ("localhost", "$hostname")
        if outside_url is not None:
            host = urlsplit(outside_url).hostname
            if host and host not in server_names:
                server_names += (host,)
    user = given("user") or current_user()
    if not _USER.fullmatch(user):
        raise ConfigError(f"--user must be a user name, not {user!r}")
    twistd_path = given("twistd")
    twistd = (_path("twistd", twistd_path),) if twistd_path is not None else default_twistd()
    shutdown_grace = _as_float("shutdown-grace", given("shutdown-grace") or "30", 0)
    max_upload_size = _as_size(
        "max-upload-size", given("max-upload-size") or DEFAULTS["max-upload-size"][0], 1024
    )
    devpid_args = options.get("devpid-args") or ()
    primary_url = given("primary-url")
    if primary_url is not None:
        primary_url = _http_url("primary-url", _safe("primary-url", primary_url.strip()))
        parts = urlsplit(primary_url)
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigError(f"--primary-url must be a plain http(s) URL, not {primary_url!r}")
        primary_url = primary_url.rstrip("/")
    secret_file = given("replication-secret-file")
    if secret_file is not None:
        secret_file = _path("replication-secret-file", secret_file)
    elif primary_url is not None:
        raise ConfigError("--primary-url needs --replication-secret-file (the primary's secret)")
    return Deployment(
        twistd=twistd,
        serverdir=_path("serverdir", given("serverdir") or str(DEFAULTS["serverdir"][0])),
        user=user,
        logdir=_path("logdir", given("logdir") or DEFAULT_LOGDIR),
        rundir=_path("rundir", given("rundir") or DEFAULT_RUNDIR),
        port=port,
        workers=workers,
        nginx_port=nginx_port,
        nginx_address=nginx_address,
        server_names=server_names,
        path_prefix=prefix,
        outside_url=outside_url,
        redis=redis,
        upstream=upstream,
        shutdown_grace=shutdown_grace,
        max_upload_size=max_upload_size,
        devpid_args=_devpid_args([str(arg) for arg in devpid_args]),
        primary_url=primary_url,
        replication_secret_file=secret_file,
        require_auth=bool(options.get("require-auth")),
    )


def main(argv: Sequence[str]) -> None:
    options = Options()
    try:
        options.parseOptions(list(argv))
        deployment = deployment_from_options(options)
        written = write(deployment, Path(options["out"]))
    except usage.UsageError as e:
        raise SystemExit(f"{PROGRAM}: error: {e} (see: {PROGRAM} --help)") from None
    except ConfigError as e:
        raise SystemExit(f"{PROGRAM}: error: {e}") from None
    except OSError as e:
        raise SystemExit(f"{PROGRAM}: error: cannot write {e.filename}: {e.strerror}") from None
    for path in written:
        print(f"wrote {path}")
