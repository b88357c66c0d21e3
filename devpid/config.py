"""One frozen settings object, built from command-line options and an INI file.

The default upstream is whatever index pip on this machine is configured to
use, resolved when devpid starts; devpid itself never names an index host.
"""

from __future__ import annotations

import configparser
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs


class ConfigError(Exception):
    """A setting has a value devpid cannot run with; the message is one line."""


#: Every setting: name -> (default, one-line help). Command-line flags, the INI
#: file's keys and ``Settings`` fields use these names (dashes for flags/keys).
DEFAULTS: dict[str, tuple[Any, str]] = {
    "listen": (
        "tcp:3141:interface=127.0.0.1:backlog=1024",
        "a Twisted endpoint string to listen on",
    ),
    "serverdir": ("~/.devpid", "where pages, files and state are stored"),
    "upstream": (None, "the simple index to mirror (default: the index pip is configured to use)"),
    "cache-expiry": (1800.0, "seconds a cached project page counts as fresh"),
    "upstream-timeout": (10.0, "seconds to wait for the upstream before serving stale or 502"),
    "changelog-interval": (
        60.0,
        "seconds between asks for the upstream's changelog (0: never; rely on --cache-expiry)",
    ),
    "offline": (False, "never contact the upstream; serve only what is cached"),
    "outside-url": (None, "the URL clients see when devpid is behind a proxy"),
    "redis": (
        None,
        "a redis://host:port/db URL: keep state in Redis instead of the embedded store",
    ),
    "redis-prefix": ("devpid:", "the prefix of every Redis key, so deployments can share one"),
    "shutdown-grace": (
        30.0,
        "seconds SIGTERM lets running downloads finish before it aborts them",
    ),
    "lock-ttl": (
        10.0,
        "seconds a download lock outlives its holder: how long other processes wait "
        "before taking over the download of one that died",
    ),
    "max-header-size": (
        16384,
        "bytes a request's header fields may take in all (431 beyond); at least 1024",
    ),
    "max-url-length": (8192, "bytes a request's URL may take (414 beyond); at least 256"),
    "max-body-size": (65536, "bytes a request body may take (413 beyond; 0: no limit)"),
    "max-connections-per-client": (
        0,
        "connections one client address may hold open at once (503 beyond; 0: no limit; "
        "behind a proxy every client is the proxy)",
    ),
    "idle-timeout": (
        75.0,
        "seconds a connection may sit idle, and a request may take to arrive, "
        "before the connection is closed (0: never)",
    ),
}

INI_SECTION = "devpid"
#: The longest any seconds setting may be (a year): infinity would overflow the timers.
MAX_SECONDS = 365 * 24 * 3600.0


@attrs.frozen
class Settings:
    listen: str
    serverdir: Path
    upstream: str
    cache_expiry: float
    upstream_timeout: float
    offline: bool
    outside_url: str | None
    redis: str | None = None
    redis_prefix: str = "devpid:"
    changelog_interval: float = 60.0
    lock_ttl: float = 10.0
    shutdown_grace: float = 30.0
    max_header_size: int = 16384
    max_url_length: int = 8192
    max_body_size: int = 65536
    max_connections_per_client: int = 0
    idle_timeout: float = 75.0


def pip_index_url(environ: Mapping[str, str] | None = None) -> str:
    """The index pip would use here: its environment, its config files, else its default."""
    environ = os.environ if environ is None else environ
    if environ.get("PIP_INDEX_URL"):
        return environ["PIP_INDEX_URL"]
    try:
        from pip._internal.configuration import Configuration
        from pip._internal.models.index import PyPI
    except ImportError as e:
        raise ConfigError(
            "no --upstream given and pip is not importable to say which index it uses"
        ) from e
    configuration = Configuration(isolated=False)
    try:
        configuration.load()
        for key in ("install.index-url", "global.index-url", ":env:.index-url"):
            try:
                value = configuration.get_value(key)
            except Exception:
                continue
            if value:
                return str(value).split()[0]
    except Exception:
        pass
    return str(PyPI.simple_url)


def _as_float(name: str, raw: Any, minimum: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} must be a number of seconds, not {raw!r}") from None
    if not value >= minimum:
        raise ConfigError(f"--{name} must be at least {minimum:g}, not {raw!r}")
    if not math.isfinite(value) or value > MAX_SECONDS:
        raise ConfigError(f"--{name} must be at most {MAX_SECONDS:g} seconds, not {raw!r}")
    return value


def _as_int(name: str, raw: Any, minimum: int) -> int:
    try:
        value = int(str(raw).strip())
    except ValueError:
        raise ConfigError(f"--{name} must be a whole number, not {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"--{name} must be at least {minimum}, not {raw!r}")
    return value


def _as_bool(name: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {raw!r}")


def _http_url(name: str, raw: str) -> str:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ConfigError(f"--{name} must be an http:// or https:// URL, not {raw!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--{name} must be an http:// or https:// URL, not {raw!r}")
    return raw


def _redis_url(raw: str) -> str:
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ConfigError("--redis must be a redis:// or rediss:// URL") from None
    shown = raw if not parts.password else raw.replace(parts.password, "***")
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"--redis must be a redis:// or rediss:// URL, not {shown!r}")
    try:
        parts.port  # noqa: B018 (raises ValueError for a bad port)
        db = parts.path.strip("/")
        if db:
            int(db)
    except ValueError:
        raise ConfigError(
            f"--redis {shown!r} needs a numeric port and database (redis://host:port/db)"
        ) from None
    return raw


def read_ini(path: str) -> dict[str, str]:
    """The ``[devpid]`` section of an INI file, as raw strings."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    except configparser.Error as e:
        first_line = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid INI: {first_line}") from None
    if not parser.has_section(INI_SECTION):
        raise ConfigError(f"config file {path} has no [{INI_SECTION}] section")
    values = dict(parser.items(INI_SECTION))
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown key {unknown[0]!r}")
    return values


def build_settings(
    given: Mapping[str, Any],
    ini: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge command line (``given``, None meaning not given) over INI over defaults."""
    ini = ini or {}

    def pick(name: str) -> Any:
        value = given.get(name)
        if value is None or value is False:
            value = ini.get(name, value)
        if value is None:
            value = DEFAULTS[name][0]
        return value

    listen = str(pick("listen")).strip()
    if not listen:
        raise ConfigError("--listen must not be empty")
    serverdir = Path(os.path.expanduser(str(pick("serverdir")))).absolute()
    if serverdir.exists() and not serverdir.is_dir():
        raise ConfigError(f"--serverdir {serverdir} exists and is not a directory")
    upstream = pick("upstream")
    if upstream is None:
        upstream = pip_index_url(environ)
    upstream = _http_url("upstream", str(upstream).strip())
    if not upstream.endswith("/"):
        upstream += "/"
    outside_url = pick("outside-url")
    if outside_url is not None:
        outside_url = _http_url("outside-url", str(outside_url).strip()).rstrip("/")
    redis = pick("redis")
    if redis is not None:
        redis = _redis_url(str(redis).strip())
    redis_prefix = str(pick("redis-prefix"))
    if not redis_prefix:
        raise ConfigError("--redis-prefix must not be empty")
    return Settings(
        listen=listen,
        serverdir=serverdir,
        upstream=upstream,
        cache_expiry=_as_float("cache-expiry", pick("cache-expiry"), 0),
        upstream_timeout=_as_float("upstream-timeout", pick("upstream-timeout"), 0.1),
        offline=_as_bool("offline", pick("offline")),
        outside_url=outside_url,
        redis=redis,
        redis_prefix=redis_prefix,
        changelog_interval=_as_float("changelog-interval", pick("changelog-interval"), 0),
        lock_ttl=_as_float("lock-ttl", pick("lock-ttl"), 1),
        shutdown_grace=_as_float("shutdown-grace", pick("shutdown-grace"), 0),
        max_header_size=_as_int("max-header-size", pick("max-header-size"), 1024),
        max_url_length=_as_int("max-url-length", pick("max-url-length"), 256),
        max_body_size=_as_int("max-body-size", pick("max-body-size"), 0),
        max_connections_per_client=_as_int(
            "max-connections-per-client", pick("max-connections-per-client"), 0
        ),
        idle_timeout=_as_float("idle-timeout", pick("idle-timeout"), 0),
    )
