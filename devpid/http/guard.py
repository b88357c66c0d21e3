"""What the routes never see: requests whose URL, method or Host they cannot take.

``RequestGuard`` wraps the routes' resource and answers these itself, in one
line each: a URL over the limit, a lower-case method, a Host header that is not
a host name, a path that is not UTF-8, and a request that has already passed
through this devpid (its own upstream, a loop). While the site drains, it also
marks each response as the last of its connection.
"""

from __future__ import annotations

import functools
from urllib.parse import unquote_to_bytes

from twisted.web.resource import IResource, Resource
from twisted.web.server import Request


@functools.lru_cache(maxsize=256)  # on every request; a deployment sees few host names
def _routable_host(host: bytes) -> bool:
    """Whether a Host header's name is one the router can take (a UTF-8, IDNA-able name)."""
    try:
        name = host.decode("utf-8").lower()
        if name.startswith("[") and name.endswith("]"):  # an IPv6 literal
            return True
        name.encode("idna")
    except UnicodeError:
        return False
    return True


class RequestGuard(Resource):
    """Refuses what the routes should never see: over-long or non-UTF-8 URLs."""

    isLeaf = True

    def __init__(
        self, routes: IResource, via: bytes | None = None, max_url_length: int = 8192
    ) -> None:
        super().__init__()
        self.routes = routes
        self.via = via
        self.max_url_length = max_url_length

    def render(self, request: Request) -> bytes | int:
        site = getattr(request.channel, "site", None)
        if getattr(site, "draining", False):  # this connection ends with this response
            request.channel.persistent = False
            request.setHeader(b"connection", b"close")
        problem = None
        via = request.getHeader(b"via")
        if self.via is not None and via is not None and self.via in via:
            problem = (508, b"508 Loop Detected: this devpid is its own upstream\n")
        elif len(request.uri) > self.max_url_length:
            problem = (414, b"414 URI Too Long: at most %d bytes\n" % self.max_url_length)
        elif request.method != request.method.upper():
            problem = (405, b"405 Method Not Allowed: methods are case-sensitive\n")
        elif not _routable_host(request.getRequestHostname()):
            problem = (400, b"400 Bad Request: the Host header is not a host name\n")
        else:
            try:
                unquote_to_bytes(request.path).decode("utf-8")
            except UnicodeDecodeError:
                problem = (400, b"400 Bad Request: the path is not valid UTF-8\n")
        if problem is None:
            return self.routes.render(request)
        request.setResponseCode(problem[0])
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return problem[1]
