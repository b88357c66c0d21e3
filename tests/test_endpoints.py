"""The ``reuseport:`` endpoint: parsing, and sharing a port for real (in this process)."""

from __future__ import annotations

import socket

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor
from twisted.python.failure import Failure

from devpid.http.endpoints import ReusePortEndpoint


def test_the_listen_option_knows_reuseport() -> None:
    reactor = MemoryReactor()
    endpoint = serverFromString(reactor, "reuseport:3141:interface=127.0.0.1")
    assert endpoint == ReusePortEndpoint(reactor, 3141, "127.0.0.1", 50)
    endpoint = serverFromString(reactor, "reuseport:port=8080:backlog=200")
    assert endpoint == ReusePortEndpoint(reactor, 8080, "", 200)


@pytest.mark.parametrize(
    ("description", "complaint"),
    [
        ("reuseport:", "needs a port number"),
        ("reuseport:http", "needs a port number"),
        ("reuseport:70000", "needs a port number"),
        ("reuseport:3141:colour=blue", "unknown options: colour"),
        ("reuseport:3141:backlog=lots", "backlog must be a number"),
        ("reuseport:3141:backlog=99999999999999999999", "backlog must be a number"),
        ("reuseport:0", "needs a port number from 1 to 65535"),
    ],
)
def test_a_bad_reuseport_description_says_what_is_wrong(description: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        serverFromString(MemoryReactor(), description)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_listeners_share_a_port_and_a_plain_one_cannot() -> None:
    from twisted.internet import reactor

    port = _free_port()
    factory = Factory.forProtocol(Protocol)
    endpoint = ReusePortEndpoint(reactor, port, "127.0.0.1")  # type: ignore[arg-type]
    first = endpoint.listen(factory).result
    second = endpoint.listen(factory).result
    try:
        assert first.getHost().port == second.getHost().port == port
        # A listener without SO_REUSEPORT (another program) is refused the port.
        with pytest.raises(CannotListenError):
            reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    finally:
        first.stopListening()
        second.stopListening()
    # And a reuseport listener is refused a port a plain listener holds.
    plain = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        taken = ReusePortEndpoint(reactor, plain.getHost().port, "127.0.0.1")  # type: ignore[arg-type]
        failures: list[Failure] = []
        taken.listen(factory).addErrback(failures.append)
        assert failures and failures[0].check(CannotListenError)
    finally:
        plain.stopListening()
