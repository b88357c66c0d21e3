"""One frozen settings object, built from command-line options and an INI file.

The default upstream is whatever index pip on this machine is configured to
use, resolved at the first start on a serverdir and remembered there
(``upstream.json``): once the user points pip at devpid, as the README says,
later starts keep mirroring the real index instead of finding devpid itself.
devpid itself never names an index host.
"""

from __future__ import annotations

import configparser
import json
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

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
    "max-body-size": (
        65536,
        "bytes a request body may take (413 beyond; 0: no limit); uploads have their own",
    ),
    "max-upload-size": (
        "1G",
        "bytes an upload may take (413 beyond), with an optional K, M or G suffix; "
        "uploads are streamed to disk, never held in memory",
    ),
    "max-connections-per-client": (
        0,
        "connections one client address may hold open at once (503 beyond; 0: no limit; "
        "behind a proxy every client is the proxy)",
    ),
    "secretfile": (
        None,
        "the file of the secret that signs login tokens, shared by every worker "
        "(default: .secret in the serverdir, created once with mode 0600)",
    ),
    "restrict-modify": (
        None,
        "comma-separated users (or :groups) who alone may create, modify and delete "
        "users and indexes (default: anyone for themselves, root for all)",
    ),
    "require-auth": (
        False,
        "every request needs credentials (a password, login or API token), except logging "
        "in, +api and the /+status?check=1 health check",
    ),
    "idle-timeout": (
        75.0,
        "seconds a connection may sit idle, and a request may take to arrive, "
        "before the connection is closed (0: never)",
    ),
    "cache-max-size": (
        None,
        "bound the mirror indexes' cached files to this size (for example 500M or 50G), "
        "evicting the least recently used ones; stage files never count nor go "
        "[default: no limit]",
    ),
    "evict-interval": (
        60.0,
        "advanced: seconds between checks of the mirror cache against --cache-max-size",
    ),
    "evict-grace": (
        600.0,
        "advanced: seconds after its last use or download during which a file is never evicted",
    ),
    "primary-url": (
        None,
        "run as a read-only replica of the devpid at this URL: follow its event log, "
        "fetch its stage files, refuse writes (needs --replication-secret-file)",
    ),
    "replication-secret-file": (
        None,
        "a file with the secret a primary shares with its replicas (one line of at least 32 "
        "printable characters, mode 0600); a primary answers replicas only with it",
    ),
    "webhook-retry-for": (
        86400.0,
        "seconds a webhook delivery is retried, with exponential back-off, before it "
        "counts as failed (0: one attempt)",
    ),
    "webhook-timeout": (10.0, "seconds a webhook receiver has to answer one POST"),
    "webhook-backoff-max": (
        300.0,
        "advanced: the longest wait, in seconds, between two attempts of one webhook delivery",
    ),
}

INI_SECTION = "devpid"
#: The longest any seconds setting may be (a year): infinity would overflow the timers.
MAX_SECONDS = 365 * 24 * 3600.0
#: The serverdir's record of the upstream pip named at the first start.
REMEMBERED_UPSTREAM = "upstream.json"


@attrs.frozen
class UpstreamOrigin:
    """Where the upstream URL came from: said in the start-up log line and in errors."""

    #: ``option``: the command line or the INI file; ``pip``: asked now (and to be
    #: remembered); ``remembered``: read from the serverdir.
    kind: Literal["option", "pip", "remembered"] = "option"
    #: What named the URL: ``--upstream``, ``PIP_INDEX_URL``, ``pip's configuration``, ...
    source: str = "--upstream"
    #: The serverdir's ``upstream.json`` (kinds ``pip`` and ``remembered``).
    path: Path | None = None
    #: When it was remembered (kind ``remembered``), as written in the file.
    at: str = ""

    def describe(self) -> str:
        """The parenthesis of the start-up line: one sentence saying why this upstream."""
        if self.kind == "remembered":
            when = f" on {self.at}" if self.at else ""
            return (
                f"remembered in {self.path} from {self.source} at first start{when}; "
                f"to change it, give --upstream or delete that file"
            )
        if self.kind == "pip":
            return (
                f"from {self.source}; remembered in {self.path}, so later starts keep it "
                "even once pip is configured to use devpid"
            )
        return f"from {self.source}"

    def brief(self) -> str:
        """A few words for the error that refuses an upstream that is devpid itself."""
        if self.kind == "remembered":
            return f"remembered in {self.path}"
        if self.kind == "pip":
            return "pip here is configured to use devpid"
        return f"from {self.source}"


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
    max_upload_size: int = 1 << 30
    max_connections_per_client: int = 0
    idle_timeout: float = 75.0
    upstream_origin: UpstreamOrigin = UpstreamOrigin()
    secretfile: Path | None = None
    restrict_modify: frozenset[str] | None = None
    #: ``--require-auth``: nobody anonymous reads anything (devpi-lockdown's lockdown).
    require_auth: bool = False
    #: ``--cache-max-size`` in bytes; None: the mirror cache grows without a bound.
    cache_max_size: int | None = None
    evict_interval: float = 60.0
    evict_grace: float = 600.0
    #: ``--primary-url``: this devpid is a read-only replica of that primary.
    primary_url: str | None = None
    #: ``--replication-secret-file``: the secret shared by a primary and its replicas.
    replication_secret_file: Path | None = None
    #: Webhooks: how long a delivery is retried, each POST's timeout, the longest back-off.
    webhook_retry_for: float = 86400.0
    webhook_timeout: float = 10.0
    webhook_backoff_max: float = 300.0
    #: The settings given on the command line or in the INI file (not defaults).
    given: frozenset[str] = attrs.field(default=frozenset(), eq=False)

    @property
    def secret_path(self) -> Path:
        return self.secretfile if self.secretfile is not None else self.serverdir / ".secret"


def shown_url(url: str) -> str:
    """``url`` fit for a log line or an error: a password in it becomes ``***``."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostport}"))


def pip_index_url(environ: Mapping[str, str] | None = None) -> str:
    """The index pip would use here: its environment, its config files, else its default."""
    return pip_index(environ)[0]


def pip_index(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The index pip would use here, and what named it (for the start-up log line).

    Only reads the environment and pip's configuration files: nothing is fetched.
    """
    environ = os.environ if environ is None else environ
    if environ.get("PIP_INDEX_URL"):
        return environ["PIP_INDEX_URL"], "PIP_INDEX_URL"
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
                return str(value).split()[0], "pip's configuration"
    except Exception:
        pass
    return str(PyPI.simple_url), "pip's default index"


def read_remembered_upstream(serverdir: Path) -> tuple[str, UpstreamOrigin] | None:
    """The upstream an earlier start remembered in ``serverdir``, or None if none did."""
    path = serverdir / REMEMBERED_UPSTREAM
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"cannot read the remembered upstream {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        text = ""
    try:
        data = json.loads(text)
        url, source, at = data["url"], data.get("from", "pip"), data.get("at", "")
        if not all(isinstance(value, str) for value in (url, source, at)):
            raise TypeError
        _http_url("upstream", url)
    except (ValueError, KeyError, TypeError, ConfigError):
        raise ConfigError(
            f"the remembered upstream {path} is damaged (delete it to ask pip again, "
            "or give --upstream)"
        ) from None
    return url, UpstreamOrigin("remembered", source, path, at)


def remember_upstream(settings: Settings, now: float | None = None) -> None:
    """Write an upstream resolved from pip to the serverdir, for later starts.

    Only an upstream from pip is written: an explicit ``--upstream`` is for its
    run alone. Written to a temporary file, flushed to disk, then renamed, so a
    crash leaves the old file or the new one, never half of one.
    """
    origin = settings.upstream_origin
    if origin.kind != "pip" or origin.path is None:
        return
    path = origin.path
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    record = {"url": settings.upstream, "from": origin.source, "at": at}
    data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    # A URL with a password in it is for devpid's user alone.
    mode = 0o600 if urlsplit(settings.upstream).password else 0o644
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # whatever the umask
            rest = memoryview(data)
            while rest:
                rest = rest[os.write(fd, rest) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename, too, survives a power cut
        finally:
            os.close(directory)
    except OSError as e:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot remember the upstream in {path}: {e.strerror}") from None


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


_SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _as_size(name: str, raw: Any, minimum: int) -> int:
    """Bytes, as a whole number with an optional K, M, G or T suffix (powers of 1024)."""
    text = str(raw).strip().upper().removesuffix("B")
    suffix = text[-1:] if text[-1:] in _SIZE_SUFFIXES else ""
    try:
        value = int(text[: len(text) - len(suffix)]) * _SIZE_SUFFIXES[suffix]
    except ValueError:
        raise ConfigError(
            f"--{name} must be a size such as 1073741824 or 1G, not {raw!r}"
        ) from None
    if value < minimum:
        raise ConfigError(f"--{name} must be at least {minimum} bytes, not {raw!r}")
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


def expand_serverdir(value: str) -> Path:
    """The absolute serverdir; one with ``~`` needs HOME (never a ``~`` directory in the cwd)."""
    if (value == "~" or value.startswith("~/")) and not os.environ.get("HOME", "").strip():
        raise ConfigError(f"--serverdir is required when HOME is not set (the default is {value})")
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        raise ConfigError(f"--serverdir {value}: cannot expand {expanded.split('/')[0]!r}")
    return Path(expanded).absolute()


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
    serverdir = expand_serverdir(str(pick("serverdir")))
    if serverdir.exists() and not serverdir.is_dir():
        raise ConfigError(f"--serverdir {serverdir} exists and is not a directory")
    upstream = pick("upstream")
    origin = UpstreamOrigin(
        "option", "--upstream" if given.get("upstream") else "the --config file"
    )
    if upstream is None:
        remembered = read_remembered_upstream(serverdir)
        if remembered is not None:
            upstream, origin = remembered
        else:
            upstream, source = pip_index(environ)
            origin = UpstreamOrigin("pip", source, serverdir / REMEMBERED_UPSTREAM)
    upstream = _http_url("upstream", str(upstream).strip())
    if not upstream.endswith("/"):
        upstream += "/"
    outside_url = pick("outside-url")
    if outside_url is not None:
        outside_url = _http_url("outside-url", str(outside_url).strip()).rstrip("/")
    redis = pick("redis")
    if redis is not None:
        redis = _redis_url(str(redis).strip())
    secretfile = pick("secretfile")
    redis_prefix = str(pick("redis-prefix"))
    primary_url, replication_secret_file = _replication(
        pick("primary-url"), pick("replication-secret-file")
    )
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
        max_upload_size=_as_size("max-upload-size", pick("max-upload-size"), 1024),
        max_connections_per_client=_as_int(
            "max-connections-per-client", pick("max-connections-per-client"), 0
        ),
        idle_timeout=_as_float("idle-timeout", pick("idle-timeout"), 0),
        upstream_origin=origin,
        secretfile=Path(str(secretfile)).expanduser() if secretfile else None,
        restrict_modify=_principals("restrict-modify", pick("restrict-modify")),
        require_auth=_as_bool("require-auth", pick("require-auth")),
        cache_max_size=cache_max_size(pick("cache-max-size")),
        evict_interval=_as_float("evict-interval", pick("evict-interval"), 0.1),
        evict_grace=_as_float("evict-grace", pick("evict-grace"), 0),
        primary_url=primary_url,
        replication_secret_file=replication_secret_file,
        webhook_retry_for=_as_float("webhook-retry-for", pick("webhook-retry-for"), 0),
        webhook_timeout=_as_float("webhook-timeout", pick("webhook-timeout"), 0.1),
        webhook_backoff_max=_as_float("webhook-backoff-max", pick("webhook-backoff-max"), 0.1),
        given=frozenset(
            name for name in DEFAULTS if given.get(name) not in (None, False) or name in ini
        ),
    )


def _replication(primary_url: Any, secret_file: Any) -> tuple[str | None, Path | None]:
    """``--primary-url`` (checked, without a trailing slash) and ``--replication-secret-file``."""
    secret = Path(str(secret_file)).expanduser().absolute() if secret_file else None
    if primary_url is None or str(primary_url).strip() == "":
        return None, secret
    url = _http_url("primary-url", str(primary_url).strip())
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"--primary-url must not have a query or fragment, not {url!r}")
    if secret is None:
        raise ConfigError(
            "--primary-url needs --replication-secret-file (the secret the primary was given)"
        )
    return url.rstrip("/"), secret


def cache_max_size(raw: Any) -> int | None:
    """``--cache-max-size`` in bytes (at least 1M), or None when not given."""
    if raw is None or str(raw).strip() == "":
        return None
    return _as_size("cache-max-size", raw, 1 << 20)


def _principals(name: str, value: Any) -> frozenset[str] | None:
    """A comma-separated list of user names or ``:groups``; None when not given."""
    if value is None:
        return None
    names = frozenset(part.strip() for part in str(value).split(",") if part.strip())
    if not names:
        raise ConfigError(f"--{name} names nobody; leave it out to not restrict")
    return names
