"""Command-line options, the INI file, settings precedence and the service tree."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactor

from devpid.config import (
    DEFAULTS,
    ConfigError,
    Settings,
    UpstreamOrigin,
    build_settings,
    pip_index_url,
    read_ini,
    remember_upstream,
)
from devpid.tap import Options, makeService, settings_from_options

REPO = Path(__file__).resolve().parents[1]
UPSTREAM = "http://127.0.0.1:1/simple/"
ENVIRON = {"PIP_INDEX_URL": "http://127.0.0.1:2/pip-env/simple/"}
ALL_OPTIONS = (*DEFAULTS, "config")


def parsed(*argv: str) -> dict[str, Any]:
    options = Options()
    options.parseOptions(list(argv))
    return {name: options[name] for name in ALL_OPTIONS}


def nothing_given(**overrides: Any) -> dict[str, Any]:
    return {name: None for name in ALL_OPTIONS} | {"offline": 0, "require-auth": 0} | overrides


def write_ini(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def one_line(error: BaseException | str | None) -> str:
    message = str(error)
    assert message
    assert "\n" not in message.strip()
    return message


@pytest.fixture(autouse=True)
def _no_pip_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings that fall back on pip must not see this machine's pip configuration."""
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- Options ---------------------------------------------------------------


def test_options_defaults() -> None:
    assert parsed() == nothing_given()


def test_options_every_flag() -> None:
    assert parsed(
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--serverdir",
        "/srv/devpid",
        "--upstream",
        UPSTREAM,
        "--cache-expiry",
        "60",
        "--upstream-timeout",
        "2.5",
        "--changelog-interval",
        "30",
        "--offline",
        "--require-auth",
        "--outside-url",
        "http://localhost:8080/pypi",
        "--redis",
        "redis://127.0.0.1:6390/1",
        "--redis-prefix",
        "ci:",
        "--lock-ttl",
        "3",
        "--shutdown-grace",
        "5",
        "--max-header-size",
        "4096",
        "--max-url-length",
        "1024",
        "--max-body-size",
        "0",
        "--max-upload-size",
        "2G",
        "--max-connections-per-client",
        "20",
        "--idle-timeout",
        "30",
        "--secretfile",
        "/etc/devpid.secret",
        "--restrict-modify",
        "root,:admins",
        "--cache-max-size",
        "50G",
        "--evict-interval",
        "30",
        "--evict-grace",
        "120",
        "--primary-url",
        "http://primary:3141/",
        "--replication-secret-file",
        "/etc/devpid/replication.secret",
        "--webhook-retry-for",
        "3600",
        "--webhook-timeout",
        "5",
        "--webhook-backoff-max",
        "60",
        "--config",
        "/etc/devpid.ini",
    ) == {
        "listen": "tcp:0:interface=127.0.0.1",
        "serverdir": "/srv/devpid",
        "upstream": UPSTREAM,
        "cache-expiry": "60",
        "upstream-timeout": "2.5",
        "changelog-interval": "30",
        "offline": 1,
        "require-auth": 1,
        "outside-url": "http://localhost:8080/pypi",
        "redis": "redis://127.0.0.1:6390/1",
        "redis-prefix": "ci:",
        "lock-ttl": "3",
        "shutdown-grace": "5",
        "max-header-size": "4096",
        "max-url-length": "1024",
        "max-body-size": "0",
        "max-upload-size": "2G",
        "max-connections-per-client": "20",
        "idle-timeout": "30",
        "secretfile": "/etc/devpid.secret",
        "restrict-modify": "root,:admins",
        "cache-max-size": "50G",
        "evict-interval": "30",
        "evict-grace": "120",
        "primary-url": "http://primary:3141/",
        "replication-secret-file": "/etc/devpid/replication.secret",
        "webhook-retry-for": "3600",
        "webhook-timeout": "5",
        "webhook-backoff-max": "60",
        "config": "/etc/devpid.ini",
    }


def test_options_equals_form_and_short_config() -> None:
    assert parsed("--listen=tcp:8000", "-c", "x.ini") == nothing_given(
        listen="tcp:8000", config="x.ini"
    )


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--nope"], "--nope"),
        (["--colour", "red"], "--colour"),
        (["--listen"], "--listen"),
        (["extra-argument"], "argument"),
        (["--offline=yes"], "offline"),
    ],
)
def test_options_errors_are_one_line_system_exits(argv: list[str], mentions: str) -> None:
    with pytest.raises(SystemExit) as caught:
        Options().parseOptions(argv)
    assert isinstance(caught.value.code, str)
    message = one_line(caught.value.code)
    assert message.startswith("twistd devpid: error:")
    assert mentions in message


# -- build_settings ----------------------------------------------------------


def test_build_settings_defaults(tmp_path: Path) -> None:
    settings = build_settings({}, None, ENVIRON)
    assert settings == Settings(
        listen="tcp:3141:interface=127.0.0.1:backlog=1024",
        serverdir=tmp_path / "home" / ".devpid",
        upstream="http://127.0.0.1:2/pip-env/simple/",
        cache_expiry=1800.0,
        upstream_timeout=10.0,
        offline=False,
        outside_url=None,
        upstream_origin=UpstreamOrigin(
            "pip", "PIP_INDEX_URL", tmp_path / "home" / ".devpid" / "upstream.json"
        ),
    )


def test_build_settings_precedence_command_line_over_ini_over_defaults(tmp_path: Path) -> None:
    ini = {
        "listen": "tcp:7000",
        "serverdir": str(tmp_path / "from-ini"),
        "upstream": "http://127.0.0.1:3/ini/simple",
        "cache-expiry": "5",
        "offline": "yes",
    }
    given = {
        "listen": "tcp:8000",
        "cache-expiry": "7",
        "upstream-timeout": None,
        "outside-url": None,
        "offline": None,
    }
    settings = build_settings(given, ini, ENVIRON)
    assert settings == Settings(
        listen="tcp:8000",  # command line
        serverdir=tmp_path / "from-ini",  # INI
        upstream="http://127.0.0.1:3/ini/simple/",  # INI, slash added
        cache_expiry=7.0,  # command line
        upstream_timeout=10.0,  # default
        offline=True,  # INI
        outside_url=None,  # default
        upstream_origin=UpstreamOrigin("option", "the --config file"),
    )


def test_limits_default_and_from_ini_and_command_line() -> None:
    settings = build_settings({}, None, ENVIRON)
    assert (
        settings.max_header_size,
        settings.max_url_length,
        settings.max_body_size,
        settings.max_connections_per_client,
        settings.idle_timeout,
    ) == (16384, 8192, 65536, 0, 75.0)
    ini = {
        "max-header-size": "2048",
        "max-url-length": "512",
        "max-body-size": "0",
        "max-connections-per-client": "8",
        "idle-timeout": "0",
    }
    settings = build_settings({"max-connections-per-client": "16"}, ini, ENVIRON)
    assert (
        settings.max_header_size,
        settings.max_url_length,
        settings.max_body_size,
        settings.max_connections_per_client,
        settings.idle_timeout,
    ) == (2048, 512, 0, 16, 0.0)


def test_command_line_offline_flag_beats_ini(tmp_path: Path) -> None:
    ini = {"offline": "false", "upstream": UPSTREAM}
    assert build_settings({"offline": True}, ini).offline is True
    assert build_settings({"offline": None}, ini).offline is False


def test_outside_url_loses_its_trailing_slash() -> None:
    settings = build_settings({"upstream": UPSTREAM, "outside-url": "http://localhost:8080/pypi/"})
    assert settings.outside_url == "http://localhost:8080/pypi"
    assert settings.upstream == UPSTREAM


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("cache-expiry", "abc"),
        ("cache-expiry", "-1"),
        ("cache-expiry", ""),
        ("cache-expiry", "nan"),
        ("changelog-interval", "-1"),
        ("changelog-interval", "soon"),
        ("upstream-timeout", "0"),
        ("upstream-timeout", "soon"),
        ("upstream", "ftp://x"),
        ("upstream", "not a url"),
        ("upstream", "http://"),
        ("upstream", "//127.0.0.1/simple/"),
        ("outside-url", "localhost:8080"),
        ("outside-url", "ftp://localhost/"),
        ("outside-url", "not a url"),
        ("listen", "   "),
        ("offline", "maybe"),
        ("max-header-size", "1023"),
        ("max-header-size", "16k"),
        ("max-header-size", "0"),
        ("max-url-length", "255"),
        ("max-url-length", "1.5"),
        ("max-body-size", "-1"),
        ("max-body-size", "lots"),
        ("max-connections-per-client", "-1"),
        ("max-connections-per-client", ""),
        ("idle-timeout", "-1"),
        ("idle-timeout", "never"),
        ("cache-max-size", "lots"),
        ("cache-max-size", "-5G"),
        ("cache-max-size", "1K"),
        ("evict-interval", "0"),
        ("evict-grace", "-1"),
    ],
)
@pytest.mark.parametrize("source", ["command line", "ini"])
def test_bad_values_raise_one_line_config_error(name: str, value: str, source: str) -> None:
    given: dict[str, Any] = {"upstream": UPSTREAM}
    ini: dict[str, str] = {}
    if source == "ini":
        given.pop("upstream")
        ini = {"upstream": UPSTREAM, name: value}
    else:
        given[name] = value
    with pytest.raises(ConfigError) as caught:
        build_settings(given, ini, ENVIRON)
    assert name in one_line(caught.value)


def test_serverdir_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError) as caught:
        build_settings({"upstream": UPSTREAM, "serverdir": str(a_file)})
    assert "serverdir" in one_line(caught.value)


def test_serverdir_is_expanded_and_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert build_settings({"upstream": UPSTREAM, "serverdir": "~/d"}).serverdir == (
        tmp_path / "home" / "d"
    )
    assert build_settings({"upstream": UPSTREAM, "serverdir": "rel"}).serverdir == tmp_path / "rel"


# -- read_ini ----------------------------------------------------------------


def test_read_ini(tmp_path: Path) -> None:
    path = write_ini(
        tmp_path / "devpid.ini",
        "# a comment\n[devpid]\nlisten = tcp:9000\nCache-Expiry = 30\n"
        "upstream = http://127.0.0.1:1/simple/\n[other]\nfoo = bar\n",
    )
    assert read_ini(path) == {"listen": "tcp:9000", "cache-expiry": "30", "upstream": UPSTREAM}


def test_read_ini_keeps_percent_signs(tmp_path: Path) -> None:
    path = write_ini(tmp_path / "devpid.ini", "[devpid]\nupstream = http://127.0.0.1:1/a%20b/\n")
    assert read_ini(path) == {"upstream": "http://127.0.0.1:1/a%20b/"}


@pytest.mark.parametrize(
    ("text", "mentions"),
    [
        ("[other]\nlisten = x\n", "[devpid]"),
        ("", "[devpid]"),
        ("[devpid]\ncolour = red\n", "colour"),
        ("[devpid]\ncache_expiry = 3\n", "cache_expiry"),
        ("listen = tcp:1\n", "not valid INI"),
        ("[devpid]\nlisten = a\nlisten = b\n", "not valid INI"),
        ("[devpid]\n[devpid]\n", "not valid INI"),
        ("[devpid\nlisten = a\n", "not valid INI"),
        ("[devpid]\nthis line has no equals sign\n", "not valid INI"),
    ],
)
def test_read_ini_errors(tmp_path: Path, text: str, mentions: str) -> None:
    path = write_ini(tmp_path / "devpid.ini", text)
    with pytest.raises(ConfigError) as caught:
        read_ini(path)
    message = one_line(caught.value)
    assert mentions in message
    assert path in message


def test_read_ini_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.ini")
    with pytest.raises(ConfigError) as caught:
        read_ini(missing)
    assert missing in one_line(caught.value)


def test_read_ini_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        read_ini(str(tmp_path))
    assert str(tmp_path) in one_line(caught.value)


def test_read_ini_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.ini"
    path.write_bytes(b"[devpid]\nlisten = caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        read_ini(str(path))
    assert str(path) in one_line(caught.value)


# -- pip's index -------------------------------------------------------------


def test_pip_index_url_from_the_given_environment() -> None:
    assert pip_index_url({"PIP_INDEX_URL": "http://localhost:5/simple/"}) == (
        "http://localhost:5/simple/"
    )


def test_pip_index_url_from_pip_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pip")
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://localhost:9999/simple/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    assert pip_index_url({}) == "http://localhost:9999/simple/"
    # And it becomes the upstream when none is given.
    settings = build_settings({}, None, {})
    assert settings.upstream == "http://localhost:9999/simple/"


def test_given_environment_beats_pip_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = http://localhost:9999/simple/\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    environ: Mapping[str, str] = {"PIP_INDEX_URL": "http://localhost:7/simple/"}
    assert pip_index_url(environ) == "http://localhost:7/simple/"


# -- the remembered upstream --------------------------------------------------

LISTEN = "tcp:3141:interface=127.0.0.1"
#: What README.md tells the user to write in pip.conf: devpid itself.
DEVPID_ITSELF = "http://localhost:3141/root/pypi/+simple/"
REAL_INDEX = "http://127.0.0.1:8080/simple/"


def point_pip_at(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pip")
    conf = tmp_path / "pip.conf"
    conf.write_text(f"[global]\nindex-url = {url}\n")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))


def start(tmp_path: Path, *extra: str) -> tuple[Any, MemoryReactor]:
    """makeService as ``twistd devpid`` runs it: its CacheService, and the reactor."""
    options = Options()
    options.parseOptions(["--serverdir", str(tmp_path / "server"), "--listen", LISTEN, *extra])
    reactor = MemoryReactor()
    cache = next(iter(makeService(options, reactor)))
    assert type(cache).__name__ == "CacheService"
    return cache, reactor


def remembered(tmp_path: Path) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((tmp_path / "server" / "upstream.json").read_text())
    return record


def test_first_start_remembers_the_index_pip_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_pip_at(REAL_INDEX, tmp_path, monkeypatch)
    cache, reactor = start(tmp_path)
    path = tmp_path / "server" / "upstream.json"
    assert remembered(tmp_path) == {
        "url": REAL_INDEX,
        "from": "pip's configuration",
        "at": remembered(tmp_path)["at"],
    }
    assert path.stat().st_mode & 0o777 == 0o644
    left = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("private."))
    assert left == [".secret", "upstream.json"]  # no temporary left
    assert cache.upstream_url == REAL_INDEX
    assert cache.upstream_origin.startswith(f"from pip's configuration; remembered in {path}")
    # Resolving and remembering read and write files; nothing is fetched.
    assert reactor.tcpClients == []


def test_a_later_start_uses_the_remembered_index_once_pip_points_at_devpid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_pip_at(REAL_INDEX, tmp_path, monkeypatch)
    start(tmp_path)
    first = remembered(tmp_path)
    point_pip_at(DEVPID_ITSELF, tmp_path, monkeypatch)  # as README.md says to
    cache, reactor = start(tmp_path)
    path = tmp_path / "server" / "upstream.json"
    assert cache.upstream_url == REAL_INDEX
    assert cache.upstream_origin.startswith(
        f"remembered in {path} from pip's configuration at first start on {first['at']}"
    )
    assert remembered(tmp_path) == first  # read, not written again
    assert reactor.tcpClients == []


def test_an_explicit_upstream_wins_and_is_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_pip_at(REAL_INDEX, tmp_path, monkeypatch)
    cache, _ = start(tmp_path, "--upstream", UPSTREAM)
    assert (cache.upstream_url, cache.upstream_origin) == (UPSTREAM, "from --upstream")
    assert not (tmp_path / "server" / "upstream.json").exists()
    start(tmp_path)
    first = remembered(tmp_path)
    cache, _ = start(tmp_path, "--upstream", UPSTREAM)
    assert cache.upstream_url == UPSTREAM
    assert remembered(tmp_path) == first
    # Nor does an upstream from the INI file.
    ini = write_ini(tmp_path / "devpid.ini", f"[devpid]\nupstream = {UPSTREAM}\n")
    cache, _ = start(tmp_path, "--config", ini)
    assert (cache.upstream_url, cache.upstream_origin) == (UPSTREAM, "from the --config file")
    assert remembered(tmp_path) == first


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"from": "pip"}', b'{"url": "ftp://x/"}', b'{"url": 3}', b"\xff"],
)
def test_a_damaged_remembered_upstream_is_a_one_line_error_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "server" / "upstream.json"
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(ConfigError) as caught:
        build_settings({"serverdir": str(tmp_path / "server")}, None, ENVIRON)
    assert str(path) in one_line(caught.value)
    with pytest.raises(SystemExit) as exited:
        start(tmp_path)
    message = one_line(exited.value.code)
    assert message.startswith("twistd devpid: error:") and str(path) in message
    # An explicit --upstream does not need it, so it does not read it.
    cache, _ = start(tmp_path, "--upstream", UPSTREAM)
    assert cache.upstream_url == UPSTREAM
    assert path.read_bytes() == content


def test_pip_pointing_at_devpid_at_first_start_is_refused_and_not_remembered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    point_pip_at(DEVPID_ITSELF, tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as exited:
        start(tmp_path)
    message = one_line(exited.value.code)
    assert "own --listen address (pip here is configured to use devpid)" in message
    assert not (tmp_path / "server" / "upstream.json").exists()


def test_a_remembered_upstream_that_is_devpid_itself_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server" / "upstream.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"url": DEVPID_ITSELF, "from": "pip's configuration"}))
    with pytest.raises(SystemExit) as exited:
        start(tmp_path)
    message = one_line(exited.value.code)
    assert f"own --listen address (remembered in {path})" in message


def test_a_password_in_the_upstream_is_masked_and_kept_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "http://me:s3cret@127.0.0.1:8080/simple/"
    point_pip_at(secret, tmp_path, monkeypatch)
    cache, _ = start(tmp_path)
    assert cache.upstream_url == "http://me:***@127.0.0.1:8080/simple/"
    assert remembered(tmp_path)["url"] == secret
    assert (tmp_path / "server" / "upstream.json").stat().st_mode & 0o777 == 0o600
    cache, _ = start(tmp_path)
    assert "s3cret" not in cache.upstream_url + cache.upstream_origin
    with pytest.raises(SystemExit) as exited:
        start(tmp_path, "--upstream", "http://u:pw0rd@localhost:3141/root/pypi/+simple/")
    assert "pw0rd" not in one_line(exited.value.code)


def test_remembering_leaves_no_temporary_file_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = build_settings({"serverdir": str(tmp_path / "server")}, None, ENVIRON)
    (tmp_path / "server").mkdir()

    def disk_full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(ConfigError) as caught:
        remember_upstream(settings)
    assert "upstream.json" in one_line(caught.value)
    assert list((tmp_path / "server").iterdir()) == []


# -- settings_from_options and makeService ------------------------------------


def test_settings_from_options_reads_the_ini(tmp_path: Path) -> None:
    ini = write_ini(
        tmp_path / "devpid.ini",
        f"[devpid]\nupstream = {UPSTREAM}\nlisten = tcp:7000\ncache-expiry = 5\noffline = on\n",
    )
    options = Options()
    options.parseOptions(["--config", ini, "--listen", "tcp:8000", "--serverdir", str(tmp_path)])
    settings = settings_from_options(options)
    assert (settings.listen, settings.cache_expiry, settings.offline) == ("tcp:8000", 5.0, True)
    assert settings.upstream == UPSTREAM
    assert settings.serverdir == tmp_path


def _options(tmp_path: Path, *extra: str) -> Options:
    options = Options()
    options.parseOptions(["--serverdir", str(tmp_path / "server"), "--upstream", UPSTREAM, *extra])
    return options


def test_make_service(tmp_path: Path) -> None:
    reactor = MemoryReactor()
    service = makeService(_options(tmp_path, "--listen", "tcp:0:interface=127.0.0.1"), reactor)
    assert isinstance(service, MultiService)
    children = list(service)
    assert [type(child).__name__ for child in children] == [
        "CacheService",
        "PrivateDataService",
        "MultiService",
        "HistorySampler",
        "WebhookService",
        "ListenerService",
    ]
    # one changelog poller per mirror index: root/pypi's
    pollers = list(service.getServiceNamed("pollers"))
    assert [type(poller).__name__ for poller in pollers] == ["PollerService"]
    assert pollers[0].step == 10.0  # leader election: a third of the interval, at most 10 s
    assert pollers[0].clock is reactor
    assert (tmp_path / "server").is_dir()
    # Nothing listens or connects until the service starts.
    assert reactor.tcpServers == []
    assert reactor.tcpClients == []


def test_make_service_accepts_a_plain_dict(tmp_path: Path) -> None:
    options = nothing_given(serverdir=str(tmp_path / "server"), upstream=UPSTREAM)
    service = makeService(options, MemoryReactor())
    assert len(list(service)) == 6


@pytest.mark.parametrize("option", [["--changelog-interval", "0"], ["--offline"]])
def test_no_changelog_poller_when_off_or_offline(tmp_path: Path, option: list[str]) -> None:
    service = makeService(_options(tmp_path, *option), MemoryReactor())
    names = [type(child).__name__ for child in service]
    assert names == [
        "CacheService",
        "PrivateDataService",
        "MultiService",
        "HistorySampler",
        "WebhookService",
        "ListenerService",
    ]
    assert list(service.getServiceNamed("pollers")) == []


@pytest.mark.parametrize(
    "listen",
    [
        "bogus:1",
        "tcp:notaport",
        "tcp:1:nosuchkey=1",
        "tcp:1:backlog=x",
        "tcp",
        "ssl:0:privateKey=/nonexistent/devpid.pem",
        "systemd:domain=INET:index=7",
    ],
)
def test_make_service_bad_listen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listen: str
) -> None:
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    monkeypatch.delenv("LISTEN_FDNAMES", raising=False)
    with pytest.raises(SystemExit) as caught:
        makeService(_options(tmp_path, "--listen", listen), MemoryReactor())
    message = one_line(caught.value.code)
    assert message.startswith("twistd devpid: error:")
    assert "--listen" in message


@pytest.mark.parametrize(
    ("argv", "mentions"),
    [
        (["--cache-expiry", "abc"], "cache-expiry"),
        (["--upstream-timeout", "-3"], "upstream-timeout"),
        (["--outside-url", "nope"], "outside-url"),
        (["--upstream", "ftp://x"], "upstream"),
        (["--redis", "http://127.0.0.1:6379/0"], "--redis"),
        (["--redis", "redis://127.0.0.1:6379/zero"], "--redis"),
        (["--redis-prefix", ""], "--redis-prefix"),
        (["--max-header-size", "big"], "--max-header-size"),
        (["--idle-timeout", "-5"], "--idle-timeout"),
        (["--config", "/nonexistent/devpid.ini"], "/nonexistent/devpid.ini"),
    ],
)
def test_make_service_bad_settings(tmp_path: Path, argv: list[str], mentions: str) -> None:
    with pytest.raises(SystemExit) as caught:
        makeService(_options(tmp_path, *argv), MemoryReactor())
    message = one_line(caught.value.code)
    assert message.startswith("twistd devpid: error:")
    assert mentions in message


def test_bad_redis_url_error_masks_the_password(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        makeService(_options(tmp_path, "--redis", "redis://:s3cret@h:port/0"), MemoryReactor())
    message = one_line(caught.value.code)
    assert "--redis" in message
    assert "s3cret" not in message


def test_redis_settings_default_and_from_ini() -> None:
    settings = build_settings({}, None, ENVIRON)
    assert (settings.redis, settings.redis_prefix) == (None, "devpid:")
    ini = {"redis": "rediss://redis.example.com:6380/2", "redis-prefix": "staging:"}
    settings = build_settings({"redis-prefix": "ci:"}, ini, ENVIRON)
    assert (settings.redis, settings.redis_prefix) == ("rediss://redis.example.com:6380/2", "ci:")


def test_make_service_chooses_the_store(tmp_path: Path) -> None:
    from devpid.store.embedded import EmbeddedStore
    from devpid.store.redis import RedisStore

    reactor = MemoryReactor()
    embedded = next(iter(makeService(_options(tmp_path), reactor)))
    assert isinstance(embedded.store, EmbeddedStore)
    url = "redis://127.0.0.1:6390/3"
    cache = next(iter(makeService(_options(tmp_path, "--redis", url), reactor)))
    store = cache.store
    assert isinstance(store, RedisStore)
    assert store.description == f"redis ({url}, prefix devpid:)"
    assert reactor.tcpClients == []  # the pool is only made when the service starts


def test_make_service_cannot_create_serverdir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    options = Options()
    options.parseOptions(["--serverdir", str(tmp_path / "file" / "sub"), "--upstream", UPSTREAM])
    with pytest.raises(SystemExit) as caught:
        makeService(options, MemoryReactor())
    assert "serverdir" in one_line(caught.value.code)


# -- one real twistd ----------------------------------------------------------


def test_twistd_reports_a_bad_option_in_one_line(tmp_path: Path) -> None:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("PIP_", "PYTHON"))
    }
    env["PYTHONPATH"] = str(REPO)
    env["PIP_CONFIG_FILE"] = os.devnull
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "devpid",
            "--cache-expiry",
            "abc",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cache-expiry" in lines[0]
    assert "abc" in lines[0]
    assert not (tmp_path / "twistd.pid").exists()


# -- the default serverdir needs HOME ------------------------------------------


@pytest.mark.parametrize("home", [None, "", " "])
def test_the_default_serverdir_without_home_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: str | None
) -> None:
    if home is None:
        monkeypatch.delenv("HOME", raising=False)
    else:
        monkeypatch.setenv("HOME", home)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as error:
        build_settings({}, None, ENVIRON)
    assert (
        str(error.value)
        == "--serverdir is required when HOME is not set (the default is ~/.devpid)"
    )
    assert list(tmp_path.iterdir()) == []  # no "~" directory in the cwd


def test_without_home_an_absolute_serverdir_is_fine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HOME", raising=False)
    settings = build_settings({"serverdir": str(tmp_path / "sd")}, None, ENVIRON)
    assert settings.serverdir == tmp_path / "sd"


def test_the_default_serverdir_is_under_home(tmp_path: Path) -> None:
    assert build_settings({}, None, ENVIRON).serverdir == tmp_path / "home" / ".devpid"


def test_an_unknown_user_in_the_serverdir_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot expand '~no-such-user-devpid'"):
        build_settings({"serverdir": "~no-such-user-devpid/sd"}, None, ENVIRON)


# -- the mirror cache's limit (issue 15) ---------------------------------------


def test_cache_max_size_default_and_from_ini_and_command_line() -> None:
    assert build_settings({"upstream": UPSTREAM}, None, ENVIRON).cache_max_size is None
    # An empty INI value is no limit, as leaving the key out.
    ini = {"upstream": UPSTREAM, "cache-max-size": ""}
    assert build_settings({}, ini, ENVIRON).cache_max_size is None
    ini = {"upstream": UPSTREAM, "cache-max-size": "500M", "evict-grace": "0"}
    settings = build_settings({}, ini, ENVIRON)
    assert (settings.cache_max_size, settings.evict_grace) == (500 << 20, 0.0)
    assert settings.evict_interval == 60.0
    given = {"upstream": UPSTREAM, "cache-max-size": "50G", "evict-interval": "2"}
    settings = build_settings(given, ini, ENVIRON)
    assert (settings.cache_max_size, settings.evict_interval) == (50 << 30, 2.0)


def test_make_service_with_a_cache_limit_adds_the_evictor(tmp_path: Path) -> None:
    reactor = MemoryReactor()
    service = makeService(_options(tmp_path, "--cache-max-size", "1G"), reactor)
    assert [type(child).__name__ for child in service] == [
        "CacheService",
        "PrivateDataService",
        "MultiService",
        "HistorySampler",
        "EvictionService",
        "WebhookService",
        "ListenerService",
    ]
