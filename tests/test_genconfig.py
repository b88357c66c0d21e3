"""``devpid gen-config``: options, rendering, the examples in etc/, systemd-analyze verify."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import attrs
import pytest

from devpid import cli
from devpid.cli import gen_config as genconfig
from devpid.cli.gen_config import Options, deployment_from_options
from devpid.config import _as_size
from devpid.ops.genconfig import Deployment, render

REPO_ROOT = Path(__file__).resolve().parents[1]
ETC = REPO_ROOT / "etc"
DEPLOYMENT_DOC = REPO_ROOT / "docs" / "deployment.md"
TWISTD = ("/opt/twistd",)


def options(*argv: str) -> Options:
    parsed = Options()
    parsed.parseOptions(list(argv))
    return parsed


def deployment(*argv: str) -> Deployment:
    return deployment_from_options(options("--twistd", TWISTD[0], *argv))


def error_of(*argv: str) -> str:
    with pytest.raises(SystemExit) as raised:
        genconfig.main(list(argv))
    return str(raised.value.code)


def program_command(supervisord_conf: str) -> dict[int, list[str]]:
    """port -> argv of each process, expanded and split as supervisord does."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(supervisord_conf)
    program = parser["program:devpid"]
    start, count = int(program["numprocs_start"]), int(program["numprocs"])
    return {
        num: shlex.split(program["command"] % {"process_num": num, "program_name": "devpid"})
        for num in range(start, start + count)
    }


def exec_start(unit: str) -> list[str]:
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart=").replace("%%", "%"))


# -- options --------------------------------------------------------------------------


def test_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(genconfig, "current_user", lambda: "alice")
    assert deployment_from_options(options("--redis", "redis://127.0.0.1:6379/0")) == Deployment(
        twistd=genconfig.default_twistd(),
        serverdir=str(tmp_path / ".devpid"),
        user="alice",
        logdir="/var/log/devpid",
        rundir="/run/devpid",
        port=3141,
        workers=2,
        nginx_port=80,
        nginx_address=None,
        server_names=("localhost", "$hostname"),
        path_prefix="",
        outside_url=None,
        redis="redis://127.0.0.1:6379/0",
        upstream=None,
        shutdown_grace=30.0,
        max_upload_size=1 << 30,
        devpid_args=(),
    )
    assert options()["out"] == "gen-config"


def test_the_default_twistd_is_the_one_beside_this_python() -> None:
    twistd = genconfig.default_twistd()
    beside = Path(sys.executable).parent / "twistd"
    if beside.is_file():
        assert twistd == (str(beside),)
    else:
        assert twistd[:2] == (sys.executable, "-c")


def test_every_option(tmp_path: Path) -> None:
    d = deployment(
        "--serverdir", str(tmp_path / "sd"), "--port", "4000", "--workers", "3",
        "--redis", "redis://:s%40cret@127.0.0.1:6380/2", "--upstream", "http://localhost:8080/simple/",
        "--nginx-port", "8080", "--nginx-address", "127.0.0.1", "--server-name", "pypi",
        "--server-name", "pypi.internal", "--path-prefix", "pypi/", "--user", "devpid",
        "--logdir", "/l", "--rundir", "/r", "--shutdown-grace", "5", "--max-upload-size", "2g",
        "--", "--cache-expiry", "600", "--offline",
    )  # fmt: skip
    assert d == Deployment(
        twistd=TWISTD,
        serverdir=str(tmp_path / "sd"),
        user="devpid",
        logdir="/l",
        rundir="/r",
        port=4000,
        workers=3,
        nginx_port=8080,
        nginx_address="127.0.0.1",
        server_names=("pypi", "pypi.internal"),
        path_prefix="/pypi",
        outside_url=None,
        redis="redis://:s%40cret@127.0.0.1:6380/2",
        upstream="http://localhost:8080/simple/",
        shutdown_grace=5.0,
        max_upload_size=2 << 30,
        devpid_args=("--cache-expiry", "600", "--offline"),
    )
    assert list(d.worker_ports) == [4000, 4001, 4002]
    assert d.stop_timeout == 15
    assert d.index_url == "http://127.0.0.1:8080/pypi/root/pypi/+simple/"


def test_a_relative_serverdir_is_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert deployment("--workers", "1", "--serverdir", "cache").serverdir == str(tmp_path / "cache")


def test_one_worker_needs_no_redis() -> None:
    d = deployment("--workers", "1")
    assert d.redis is None
    assert "--redis" not in program_command(render(d)["supervisord.conf"])[3141]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "2"], "--redis is required with --workers 2"),
        (["--workers", "0"], "--workers must be a whole number from 1 to 64, not '0'"),
        (["--workers", "x"], "--workers must be a whole number from 1 to 64, not 'x'"),
        (["--workers", "1", "--port", "65536"], "--port must be a whole number from 1 to 65535"),
        (["--workers", "2", "--redis", "redis://h/0", "--port", "65535"], "from 1 to 65534"),
        (["--workers", "1", "--nginx-port", "3141"], "--nginx-port 3141 is one of the workers'"),
        (["--workers", "1", "--nginx-address", "example"], "--nginx-address must be an IP"),
        (["--workers", "1", "--redis", "http://h"], "--redis must be a redis:// or rediss://"),
        (["--workers", "1", "--upstream", "ftp://h/"], "--upstream must be an http:// or https://"),
        (["--workers", "1", "--serverdir", "/srv/a b"], "--serverdir must not be empty or contain"),
        (["--workers", "1", "--serverdir", "/srv/a;b"], "--serverdir must not be empty or contain"),
        (["--workers", "1", "--logdir", "/var/%(x)s"], "--logdir must not contain %"),
        (["--workers", "1", "--path-prefix", "/a/../b"], "--path-prefix must be a URL path"),
        (["--workers", "1", "--path-prefix", "/a?b"], "--path-prefix must be a URL path"),
        (["--workers", "1", "--outside-url", "https://h/x?y=1"], "--outside-url must be a plain"),
        (
            ["--workers", "1", "--outside-url", "https://h/x", "--path-prefix", "/y"],
            "--path-prefix /y is not the path of --outside-url https://h/x",
        ),
        (["--workers", "1", "--server-name", "a;b"], "--server-name must be a host name"),
        (["--workers", "1", "--user", "a b"], "--user must be a user name"),
        (["--workers", "1", "--shutdown-grace", "-1"], "--shutdown-grace must be at least 0"),
        (["--workers", "1", "--shutdown-grace", "inf"], "--shutdown-grace must be at most"),
        (["--workers", "1", "--outside-url", "http://[::1"], "--outside-url must be an http://"),
        (["--workers", "1", "--outside-url", "http://h:abc/p"], "--outside-url must be an http"),
        (["--workers", "1", "--outside-url", "http://:80/"], "--outside-url must be an http://"),
        (["--workers", "1", "--redis", "redis://[::1"], "--redis must be a redis:// or rediss://"),
        (["--workers", "1", "--", "--bogus"], "--bogus is not a devpid option"),
        (["--workers", "1", "--", "--listen", "tcp:1"], "give --listen to gen-config itself"),
        (["--workers", "1", "--", "--redis=redis://h/0"], "give --redis to gen-config itself"),
        (["--workers", "1", "--", "--max-upload-size", "2G"], "give --max-upload-size to gen-"),
        (["--workers", "1", "--max-upload-size", "1Q"], "--max-upload-size must be a size such"),
        (["--workers", "1", "--max-upload-size", "100"], "--max-upload-size must be at least 1024"),
        (["--nope"], "option --nope not recognized (see: devpid gen-config --help)"),
    ],
)
def test_errors_are_one_line(argv: list[str], message: str, tmp_path: Path) -> None:
    error = error_of("--out", str(tmp_path / "out"), *argv)
    assert error.startswith("devpid gen-config: error: ")
    assert message in error
    assert "\n" not in error
    assert not (tmp_path / "out").exists()


def test_paths_are_checked_as_written_after_expanding_home_and_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "h o;me"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    error = error_of("--out", str(tmp_path / "out"), "--workers", "1")  # ~/.devpid
    assert "--serverdir must not be empty or contain" in error and "\n" not in error
    spaced = tmp_path / "a b"
    spaced.mkdir()
    monkeypatch.chdir(spaced)
    error = error_of("--out", str(tmp_path / "out"), "--workers", "1", "--serverdir", "rel")
    assert "--serverdir must not be empty or contain" in error
    assert not (tmp_path / "out").exists()


def test_a_long_grace_is_written_as_a_plain_number(tmp_path: Path) -> None:
    genconfig.main(["--out", str(tmp_path), "--workers", "1", "--shutdown-grace", "1234567"])
    supervisord = (tmp_path / "supervisord.conf").read_text()
    assert "--shutdown-grace 1234567\n" in supervisord
    assert "e+" not in supervisord


def test_an_unwritable_out_directory_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    error = error_of("--example", "--out", str(tmp_path / "file" / "out"))
    assert error.startswith("devpid gen-config: error: cannot write ")
    assert "\n" not in error


# -- the command line -------------------------------------------------------------


def test_devpid_gen_config_writes_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gen"
    cli.main(["gen-config", "--example", "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == sorted(genconfig.FILES)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"wrote {out / name}" for name in genconfig.FILES]


def test_devpid_without_a_subcommand_still_runs_twistd(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    monkeypatch.setattr("twisted.scripts.twistd.run", lambda: seen.append(list(sys.argv)))
    monkeypatch.setattr(sys, "argv", ["devpid"])
    cli.main(["--serverdir", "/tmp/x"])
    assert seen == [["twistd", "--nodaemon", "--pidfile=", "devpid", "--serverdir", "/tmp/x"]]


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["gen-config", "--help"])
    assert raised.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("Usage: devpid gen-config [options] [-- devpid options]")
    assert "--path-prefix" in text and "--example" in text


# -- rendering -------------------------------------------------------------------------


def test_nginx_balances_the_workers_and_serves_cached_files_from_the_serverdir() -> None:
    d = deployment("--port", "5000", "--workers", "3", "--redis", "redis://h:1/0")
    conf = render(d)["nginx-devpid.conf"]
    servers = re.findall(r"^\s*server (\S+);", conf, re.MULTILINE)
    assert servers == ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002"]
    assert "keepalive 128;" in conf
    assert "    listen 80;\n" in conf
    assert "server_name localhost $hostname;" in conf
    assert "client_max_body_size 1g;" in conf
    assert "proxy_buffering off;" in conf
    assert "proxy_set_header X-Outside-URL $scheme://$http_host;" in conf
    assert f"root {d.serverdir}/+files;" in conf
    assert "types { }\n        default_type application/octet-stream;" in conf
    assert "try_files $devpid_file @devpid;" in conf
    # The partial-file location comes first: nginx uses the first regex that matches.
    assert conf.index("\\.devpid-partial") < conf.index("(?<devpid_file>")
    assert "rewrite" not in conf
    assert conf.count("{") == conf.count("}")


def file_location(conf: str) -> str:
    start = conf.index("    location ~ ^")
    return conf[start : conf.index("\n    }\n", start)]


def test_nginx_passes_what_is_not_a_plain_download_of_a_file_to_devpid() -> None:
    """DELETE, tox results (POST) and devpi's JSON about a file are devpid's to answer,
    never nginx's static module (405, or the bytes); a file not on disk goes to devpid."""
    location = file_location(render(deployment("--workers", "1"))["nginx-devpid.conf"])
    assert "error_page 418 = @devpid;" in location
    assert "if ($request_method !~ ^(GET|HEAD)$) {\n            return 418;" in location
    assert "if ($http_accept ~ application/json) {\n            return 418;" in location
    # The ifs only return: try_files, after them, handles every other request.
    assert location.index("return 418") < location.index("try_files $devpid_file @devpid;")


@pytest.mark.parametrize(
    ("given", "nginx", "devpid"),
    [
        (None, "1g", None),
        ("1G", "1g", None),
        ("1073741824", "1g", None),
        ("2g", "2g", "2G"),
        ("512M", "512m", "512M"),
        ("1536k", "1536k", "1536K"),
        ("1T", "1024g", "1024G"),
        ("100000", "100000", "100000"),
        ("10000KB", "10000k", "10000K"),
    ],
)
def test_the_upload_limit_is_the_same_for_nginx_and_devpid(
    given: str | None, nginx: str, devpid: str | None
) -> None:
    argv = ["--workers", "1"] + (["--max-upload-size", given] if given else [])
    files = render(deployment(*argv))
    assert f"    client_max_body_size {nginx};\n" in files["nginx-devpid.conf"]
    command = program_command(files["supervisord.conf"])[3141]
    if devpid is None:
        assert "--max-upload-size" not in command
    else:
        assert command[command.index("--max-upload-size") + 1] == devpid
        assert "--max-upload-size " + devpid in files["devpid@.service"]
    # devpid reads back the very number nginx allows.
    if devpid is not None:
        assert _as_size("max-upload-size", devpid, 1024) == _as_size("x", nginx, 0)


@pytest.mark.parametrize("prefix", ["", "/pypi"])
def test_uploads_stream_through_nginx(prefix: str) -> None:
    argv = ["--workers", "1"] + (["--path-prefix", prefix] if prefix else [])
    conf = render(deployment(*argv))["nginx-devpid.conf"]
    escaped = prefix.replace(".", "\\.")
    start = conf.index(f"    location ~ ^{escaped}/[^+/][^/]*/[^+/][^/]*/?$ {{\n")
    location = conf[start : conf.index("\n    }\n", start)]
    assert "proxy_request_buffering off;" in location
    assert "proxy_read_timeout 300s;" in location
    assert "proxy_pass http://devpid;" in location
    assert ("rewrite ^/pypi(/.*)$ $1 break;" in location) == bool(prefix)
    # Only there: other request bodies (logins, JSON) are read whole first, as usual.
    assert conf.count("proxy_request_buffering") == 1
    # devpid's upload URLs, and only those of its URLs with a body to stream.
    regex = re.compile(conf[start:].split()[2])
    for path in ("/alice/dev", "/alice/dev/", "/root/pypi/"):
        assert regex.match(prefix + path), path
    for path in ("/alice/dev/+simple/", "/+login", "/alice/+api", "/+admin/x/", "/alice/"):
        assert not regex.match(prefix + path), path
    assert "takes none yet" not in conf


def test_nginx_under_a_sub_path() -> None:
    conf = render(deployment("--workers", "1", "--path-prefix", "/pypi/"))["nginx-devpid.conf"]
    assert "proxy_set_header X-Outside-URL $scheme://$http_host/pypi;" in conf
    assert "location ~ ^/pypi(?<devpid_file>/[^/]+/[^/]+/\\+f/[^/]+/[^/]+/[^/]+)$ {" in conf
    assert "location /pypi/ {\n        rewrite ^/pypi(/.*)$ $1 break;" in conf
    assert "location @devpid {\n        rewrite ^/pypi(/.*)$ $1 break;" in conf
    assert "location / {\n        return 404;" in conf
    dotted = render(deployment("--workers", "1", "--path-prefix", "/a.b"))["nginx-devpid.conf"]
    assert "rewrite ^/a\\.b(/.*)$ $1 break;" in dotted


def test_a_fixed_outside_url() -> None:
    d = deployment("--workers", "1", "--outside-url", "https://pypi-cache.example.com/pypi/")
    files = render(d)
    assert d.path_prefix == "/pypi"
    assert "X-Outside-URL https://pypi-cache.example.com/pypi;" in files["nginx-devpid.conf"]
    assert "server_name localhost $hostname pypi-cache.example.com;" in files["nginx-devpid.conf"]
    pip = configparser.ConfigParser()
    pip.read_string(files["pip.conf"])
    assert dict(pip["global"]) == {
        "index-url": "https://pypi-cache.example.com/pypi/root/pypi/+simple/"
    }
    uv = tomllib.loads(files["uv.toml"])
    assert "allow-insecure-host" not in uv
    assert uv["index"] == [
        {"url": "https://pypi-cache.example.com/pypi/root/pypi/+simple/", "default": True}
    ]


@pytest.mark.parametrize(
    ("argv", "url", "host"),
    [
        ([], "http://localhost/root/pypi/+simple/", "localhost"),
        (["--nginx-port", "8080"], "http://localhost:8080/root/pypi/+simple/", "localhost"),
        (["--path-prefix", "/pypi"], "http://localhost/pypi/root/pypi/+simple/", "localhost"),
        (["--nginx-address", "0.0.0.0"], "http://localhost/root/pypi/+simple/", "localhost"),
        (["--nginx-address", "::1"], "http://[::1]/root/pypi/+simple/", "::1"),
        (["--nginx-address", "10.1.2.3"], "http://10.1.2.3/root/pypi/+simple/", "10.1.2.3"),
    ],
)
def test_client_files(argv: list[str], url: str, host: str) -> None:
    files = render(deployment("--workers", "1", *argv))
    pip = configparser.ConfigParser()
    pip.read_string(files["pip.conf"])
    assert dict(pip["global"]) == {"index-url": url, "trusted-host": host}
    uv = tomllib.loads(files["uv.toml"])
    assert uv == {"allow-insecure-host": [host], "index": [{"url": url, "default": True}]}


def test_supervisord_runs_one_process_per_port() -> None:
    d = deployment(
        "--port", "4000", "--workers", "2", "--redis", "redis://:p%40ss@h:1/0",
        "--upstream", "http://localhost:8080/simple/", "--serverdir", "/srv/d",
        "--logdir", "/l", "--rundir", "/r", "--user", "devpid", "--shutdown-grace", "12.5",
    )  # fmt: skip
    conf = render(d)["supervisord.conf"]
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(conf)
    program = dict(parser["program:devpid"])
    del program["command"]
    assert program == {
        "numprocs": "2",
        "numprocs_start": "4000",
        "process_name": "%(program_name)s-%(process_num)d",
        "user": "devpid",
        "umask": "022",
        "environment": 'PIP_CONFIG_FILE="/dev/null"',
        "autostart": "true",
        "autorestart": "unexpected",
        "exitcodes": "0",
        "startsecs": "3",
        "stopsignal": "TERM",
        "stopwaitsecs": "23",
        "redirect_stderr": "true",
        "stdout_logfile": "/l/%(program_name)s-%(process_num)d.log",
        "stdout_logfile_maxbytes": "50MB",
        "stdout_logfile_backups": "10",
    }
    common = ["--serverdir", "/srv/d", "--redis", "redis://:p%40ss@h:1/0"]
    common += ["--upstream", "http://localhost:8080/simple/", "--shutdown-grace", "12.5"]
    assert program_command(conf) == {
        port: ["/opt/twistd", "-n", "--pidfile=", "devpid", "--listen",
               f"tcp:{port}:interface=127.0.0.1", *common]
        for port in (4000, 4001)
    }  # fmt: skip
    assert parser["unix_http_server"]["file"] == "/r/supervisor.sock"
    assert parser["supervisorctl"]["serverurl"] == "unix:///r/supervisor.sock"
    assert parser["supervisord"]["pidfile"] == "/r/supervisord.pid"
    assert parser["supervisord"]["logfile"] == "/l/supervisord.log"
    factory = "supervisor.rpcinterface:make_main_rpcinterface"
    assert parser["rpcinterface:supervisor"]["supervisor.rpcinterface_factory"] == factory


def test_units_run_twistd_in_the_foreground() -> None:
    d = deployment("--port", "4000", "--redis", "redis://h:1/0", "--serverdir", "/srv/d")
    files = render(d)
    single, template = files["devpid.service"], files["devpid@.service"]
    listen = "tcp:4000:interface=127.0.0.1"
    tail = ["--serverdir", "/srv/d", "--redis", "redis://h:1/0"]
    twistd = ["/opt/twistd", "-n", "--pidfile=", "devpid", "--listen"]
    assert exec_start(single) == [*twistd, listen, *tail]
    assert exec_start(template) == [*twistd, "tcp:%i:interface=127.0.0.1", *tail]
    for unit in (single, template):
        for line in ("Type=simple", "KillSignal=SIGTERM", "TimeoutStopSec=40"):
            assert f"\n{line}\n" in unit
        assert "\nRestart=on-failure\n" in unit
        assert "\nEnvironment=PIP_CONFIG_FILE=/dev/null\n" in unit
    assert "systemctl enable --now devpid@4000 devpid@4001" in template


def test_quoting_of_a_twistd_run_through_python() -> None:
    twistd = (sys.executable, "-c", "from twisted.scripts.twistd import run; run()")
    d = Deployment(twistd=twistd, serverdir="/srv/d", user="u", workers=1, port=3141)
    files = render(d)
    assert program_command(files["supervisord.conf"])[3141][:4] == [*twistd, "-n"]
    assert exec_start(files["devpid.service"])[:4] == [*twistd, "-n"]


# -- the examples in etc/ --------------------------------------------------------------


def test_etc_holds_the_example_rendering() -> None:
    """``devpid gen-config --example --out etc`` writes these: they cannot rot."""
    example = render(deployment_from_options(options("--example")))
    for name, text in example.items():
        assert (ETC / name).read_text() == text, f"etc/{name}: run devpid gen-config --example"


def documented_command() -> list[str]:
    """The gen-config command of docs/deployment.md, step 3."""
    text = DEPLOYMENT_DOC.read_text()
    lines = [line for line in text.splitlines() if "/bin/devpid gen-config " in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_the_documented_command_writes_the_examples(tmp_path: Path) -> None:
    command = documented_command()
    assert command[:2] == ["/opt/devpid/bin/devpid", "gen-config"]
    # Run from /opt/devpid/bin/devpid, it would find /opt/devpid/bin/twistd.
    genconfig.main([*command[2:], "--twistd", "/opt/devpid/bin/twistd", "--out", str(tmp_path)])
    for name in genconfig.FILES:
        assert (tmp_path / name).read_text() == (ETC / name).read_text(), name


def test_the_documented_examples_are_the_files() -> None:
    text = DEPLOYMENT_DOC.read_text()
    pip_conf = (ETC / "pip.conf").read_text()
    block = text.split("[`etc/pip.conf`](../etc/pip.conf):\n\n```ini\n")[1].split("```")[0]
    assert pip_conf.endswith(block)
    for line in ("numprocs_start = 3141", "stopwaitsecs = 40", "autorestart = unexpected"):
        assert line in (ETC / "supervisord.conf").read_text()
    assert "TimeoutStopSec=40" in (ETC / "devpid@.service").read_text()


# -- systemd-analyze verify --------------------------------------------------------------


def verify(unit: Path) -> subprocess.CompletedProcess[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )


def assert_verified(unit: Path) -> None:
    result = verify(unit)
    complaints = [line for line in (result.stdout + result.stderr).splitlines() if "devpid" in line]
    assert result.returncode == 0 and complaints == [], result.stdout + result.stderr


@pytest.mark.parametrize(
    "argv",
    [[], ["--example"], ["--workers", "1", "--", "--cache-expiry", "600"]],
    ids=["this-host", "example", "single"],
)
def test_systemd_analyze_verifies_the_units(tmp_path: Path, argv: list[str]) -> None:
    """Rendered with this host's twistd: verify checks that ExecStart's program exists."""
    d = deployment_from_options(options("--redis", "redis://127.0.0.1:6379/0", *argv))
    files = render(attrs.evolve(d, twistd=genconfig.default_twistd()))
    (tmp_path / "devpid.service").write_text(files["devpid.service"])
    (tmp_path / "devpid@.service").write_text(files["devpid@.service"])
    assert_verified(tmp_path / "devpid.service")
    assert_verified(tmp_path / "devpid@3141.service")


def test_systemd_analyze_catches_a_missing_twistd(tmp_path: Path) -> None:
    """The examples name /opt/devpid/bin/twistd, absent here: verify would say so."""
    unit = tmp_path / "devpid.service"
    unit.write_text((ETC / "devpid.service").read_text())
    if Path("/opt/devpid/bin/twistd").exists():
        pytest.skip("/opt/devpid/bin/twistd exists on this host")
    result = verify(unit)
    assert result.returncode != 0
    assert "/opt/devpid/bin/twistd" in result.stdout + result.stderr
