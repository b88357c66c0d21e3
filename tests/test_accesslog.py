"""The access log's line: the installer's name and version, not its whole User-Agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from devpid.common.stats import Stats
from devpid.http.accesslog import short_agent
from devpid.http.site import DevpidSite
from tests.test_status import App

#: What pip 24.0 sends: its name and version, then a few hundred characters of JSON.
PIP_AGENT = (
    'pip/24.0 {"ci":null,"cpu":"x86_64","distro":{"id":"bookworm","libc":'
    '{"lib":"glibc","version":"2.36"},"name":"Debian GNU/Linux","version":"12"},'
    '"implementation":{"name":"CPython","version":"3.11.7"},"installer":{"name":"pip",'
    '"version":"24.0"},"openssl_version":"OpenSSL 3.0.11 19 Sep 2023","python":"3.11.7",'
    '"rustc_version":"1.74.0","setuptools_version":"69.0.3","system":{"name":"Linux",'
    '"release":"6.1.0-17-amd64"}}'
)


def test_a_pip_request_is_logged_with_pips_name_and_version(tmp_path: Path) -> None:
    app = App.start(tmp_path / "serverdir")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        # (pip asking for /root/pypi would get the project list, from the upstream)
        assert app.get("/+api", user_agent=PIP_AGENT).code == 200
    finally:
        globalLogPublisher.removeObserver(events.append)
        app.stop()
    [access] = [e for e in events if e.get("uri") == "/+api"]
    line = formatEvent(access)
    assert ' "GET /+api" 200 ' in line
    assert line.endswith('ms "pip/24.0"')
    assert access["agent"] == "pip/24.0"
    # The whole agent stays in the event, for structured log observers.
    assert access["user_agent"] == PIP_AGENT[:200]


@pytest.mark.parametrize(
    ("agent", "shown"),
    [
        (PIP_AGENT, "pip/24.0"),
        ('uv/0.5.1 {"installer":{"name":"uv","version":"0.5.1"}}', "uv/0.5.1"),
        ("curl/8.1.2", "curl/8.1.2"),
        ("Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0"),
        ("-", "-"),
        ("", "-"),
        ("  pip/24.0", "pip/24.0"),
        ("x" * 300, "x" * 60),
        # Nothing breaks out of the line's quotes or writes a control character.
        ('evil"/1 x', 'evil\\"/1'),
        ("back\\slash", "back\\\\slash"),
        ("bell\x07\x1b[31m\x7f", "bell\\x07\\x1b[31m\\x7f"),
    ],
)
def test_short_agent(agent: str, shown: str) -> None:
    assert short_agent(agent) == shown


def test_a_request_cut_off_mid_response_is_logged_with_what_was_sent() -> None:
    class Unfinished(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> Any:
            request.setHeader(b"content-length", b"1000")
            request.write(b"x" * 300)
            return NOT_DONE_YET

    site = DevpidSite(Unfinished(), Stats(), reactor=MemoryReactorClock())
    client = IPv4Address("TCP", "10.0.0.1", 40000)
    channel = site.buildProtocol(client)
    channel.makeConnection(StringTransport(peerAddress=client))
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        channel.dataReceived(b"GET /slow HTTP/1.1\r\nHost: x\r\nUser-Agent: pip/24.0\r\n\r\n")
        assert [e for e in events if e.get("uri") == "/slow"] == []  # not finished yet
        channel.connectionLost(Failure(ConnectionDone()))
    finally:
        globalLogPublisher.removeObserver(events.append)
    [access] = [e for e in events if e.get("uri") == "/slow"]
    line = formatEvent(access)
    assert line.startswith('10.0.0.1 "GET /slow" 200 300 ')
    assert line.endswith('ms "pip/24.0" cut off')
    assert access["cut_off"] is True and access["size"] == 300
