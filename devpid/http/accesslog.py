"""The access log: one structured line per answer, and the counts it feeds.

Every answer is logged here, the routes' (through ``Site.log``) and those a
channel gives itself when a request breaks a limit. Each is counted in
``Stats`` and, when set, in the ``RequestMetrics`` that /+metrics and /+status
show. This runs once per request: one formatted line, a few counter updates.
A request is counted under the route Klein dispatched it to (the label the
route noted on it), "other" if none took it. The line shows the installer's
name and version of the User-Agent; the event keeps the whole of it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import attrs
from twisted.logger import Logger, LogLevel

from devpid.common.stats import Stats
from devpid.ops.requests import ROUTE_ATTRIBUTE, RequestMetrics

#: The agent in the line: the installer's name and version is what tells clients apart.
SHORT_AGENT_LENGTH = 60
#: The whole agent, in the event only (pip's is a few hundred characters of JSON).
FULL_AGENT_LENGTH = 200
_ESCAPED = {ord('"'): '\\"', ord("\\"): "\\\\"} | {
    code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F)
}


@functools.lru_cache(maxsize=256)  # once per request; a client sends the same agent each time
def short_agent(agent: str) -> str:
    """The first product token of a User-Agent (``pip/24.0``, ``uv/0.5.1``), escaped for the line.

    Quotes, backslashes and control characters are escaped, so that the line's
    quoted field cannot be broken out of.
    """
    first = agent.strip().split(maxsplit=1)
    token = first[0][:SHORT_AGENT_LENGTH] if first else "-"
    return token.translate(_ESCAPED)


@attrs.define
class AccessLog:
    stats: Stats
    #: The events' ``log_source`` and namespace: the site, as if it logged them itself.
    source: object
    #: Where each request is counted for /+metrics and /+status, when set.
    requests: RequestMetrics | None = None
    _log: Logger = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # What a ``Logger`` class attribute of the site would give, made once, not per request.
        owner = type(self.source)
        self._log = Logger(f"{owner.__module__}.{owner.__name__}", self.source)

    def answered(self, request: Any, cut_off: bool = False) -> None:
        """Log and count a response twisted.web has finished (``Site.log``).

        ``cut_off``: its connection was lost first; ``sent`` is what was sent of it.
        """
        address = request.getClientAddress()
        arrived = getattr(request, "arrived", None)
        self.record(
            client=getattr(address, "host", "-"),
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            code=request.code,
            sent=request.sentLength,
            duration_ms=(time.monotonic() - arrived) * 1000 if arrived is not None else 0.0,
            agent=(request.getHeader(b"user-agent") or b"-").decode("latin-1"),
            route=getattr(request, ROUTE_ATTRIBUTE, "other"),
            cut_off=cut_off,
        )

    def refused(
        self,
        client: str,
        request_line: bytes,
        agent: bytes | None,
        started: float | None,
        code: int,
        sent: int,
    ) -> None:
        """Log and count an answer a channel gave itself (a limit, a malformed request).

        The request may be cut anywhere: what has arrived of its line is what is logged.
        """
        method, _, rest = request_line.partition(b" ")
        uri = rest.rpartition(b" ")[0] if rest.count(b" ") else rest
        shown_uri = uri.decode("latin-1") or "-"
        self.record(
            client=client,
            method=method.decode("latin-1") or "-",
            uri=shown_uri,
            code=code,
            sent=sent,
            duration_ms=(time.monotonic() - started) * 1000 if started is not None else 0.0,
            agent=(agent or b"-").decode("latin-1"),
            route="other",  # it never reached the router
        )

    def record(
        self,
        client: str,
        method: str,
        uri: str,
        code: int,
        sent: int,
        duration_ms: float,
        agent: str,
        route: str,
        cut_off: bool = False,
    ) -> None:
        self.stats.incr("requests")
        self.stats.incr("bytes_served", sent)
        if self.requests is not None:
            self.requests.observe(route, code, duration_ms / 1000, sent)
        uri = uri[:2000]
        shown_agent = short_agent(agent)
        # The line is formatted here once: the log format is then a single field,
        # which is far cheaper for twisted.logger's observers than a full format
        # string on the hottest path; the fields stay in the event for JSON logs.
        line = f'{client} "{method} {uri}" {code} {sent} {duration_ms:.1f}ms "{shown_agent}"'
        if cut_off:
            line += " cut off"
        # The event ``Logger.info`` would make, handed to the observers directly:
        # ``Logger.emit`` first checks the level against every ``LogLevel``, which
        # costs more per request than the rest of this method.
        log = self._log
        log.observer(
            {
                "line": line,
                "client": client,
                "method": method,
                "uri": uri,
                "code": code,
                "size": sent,
                "duration_ms": duration_ms,
                "agent": shown_agent,
                "user_agent": agent[:FULL_AGENT_LENGTH],
                "cut_off": cut_off,
                "log_logger": log,
                "log_level": LogLevel.info,
                "log_namespace": log.namespace,
                "log_source": log.source,
                "log_format": "{line}",
                "log_time": time.time(),
            }
        )
