"""``reuseport:`` listening: several devpid processes on one TCP port, the kernel balancing.

``--listen reuseport:3141:interface=127.0.0.1`` binds with ``SO_REUSEPORT``,
so every worker sharing a serverdir and a Redis can listen on the same port
and Linux (3.9 and later) spreads new connections across them: a balancer
that costs no CPU. Other systems may accept the option without balancing.
It takes the options of ``tcp:``: ``port`` (first, or ``port=``; not 0,
which would give each process a port of its own), ``interface`` (default
all IPv4 addresses) and ``backlog`` (default 50).

Only processes of the same user can share such a port (the kernel's rule),
so another user's process cannot steal devpid's connections.
"""

from __future__ import annotations

import socket

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IReactorCore,
    IReactorSocket,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

DEFAULT_BACKLOG = 50


@implementer(IStreamServerEndpoint)
@attrs.frozen
class ReusePortEndpoint:
    reactor: IReactorSocket
    port: int
    interface: str = ""
    backlog: int = DEFAULT_BACKLOG

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        family = socket.AF_INET6 if ":" in self.interface else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            return fail(CannotListenError(self.interface, self.port, e))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((self.interface, self.port))
            sock.listen(self.backlog)
            sock.setblocking(False)
            # The reactor keeps a duplicate of the descriptor; this one is ours to close.
            port = self.reactor.adoptStreamPort(
                sock.fileno(),
                family,
                protocolFactory,  # type: ignore[arg-type]  # any IProtocolFactory does
            )
        except (OSError, OverflowError, AttributeError) as e:  # no SO_REUSEPORT: AttributeError
            return fail(CannotListenError(self.interface, self.port, e))
        finally:
            sock.close()
        return succeed(port)


@implementer(IPlugin, IStreamServerEndpointStringParser)
@attrs.frozen
class ReusePortParser:
    """The ``reuseport:`` prefix for ``serverFromString`` (and so for ``--listen``)."""

    prefix: str = "reuseport"

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> ReusePortEndpoint:
        options = {name: str(value) for name, value in kwargs.items()}
        positional = [str(arg) for arg in args]
        port = options.pop("port", None) or (positional[0] if positional else None)
        if port is None or not port.isdigit() or not 0 < int(port) <= 65535:
            raise ValueError(f"reuseport: needs a port number from 1 to 65535, got {port!r}")
        interface = options.pop("interface", "")
        backlog = options.pop("backlog", str(DEFAULT_BACKLOG))
        if not backlog.isdigit() or not 0 < int(backlog) <= 65535:
            raise ValueError(f"reuseport: backlog must be a number up to 65535, got {backlog!r}")
        if len(positional) > 1 or options:
            unknown = ", ".join([*positional[1:], *options])
            raise ValueError(f"reuseport: unknown options: {unknown}")
        if not IReactorSocket.providedBy(reactor):
            raise ValueError("reuseport: this reactor cannot adopt sockets")
        return ReusePortEndpoint(reactor, int(port), interface, int(backlog))
