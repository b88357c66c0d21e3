"""``LockdownGate``: every request passes it before any route sees it.

It asks ``Access.verdict`` (``devpid.auth.lockdown``) about the request's method
and path, and either lets the request through to the app or refuses it: 401 with
``WWW-Authenticate: Basic realm="pypi"`` (pip, uv and browsers then ask for or send
credentials; devpi-client gets 403, as devpi's authcheck answers it) or 403. One
place, in front of routing, so no route can forget it.

Two things are answered here rather than passed on: the web login page
(``/+login`` and ``/+logout`` for a browser or its form) goes to the page's own
resource, and a refused ``/+status?check=1`` gets the health verdict alone
(``{"healthy": ...}``, 503 when unhealthy), so load balancers need no credentials
and learn nothing else.

The verdict is usually known at once (no credentials needed, a token's HMAC, a
password ``PasswordChecker`` already checked): then the app renders in the same
call. Only a password checked for the first time waits for its thread.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request

from devpid.auth.lockdown import Verdict, decoded_path, is_health_check
from devpid.http.errors import plain_error
from devpid.routes.access import Access

BASIC_CHALLENGE = b'Basic realm="pypi"'
#: The paths of the web login page (``devpid.web.login``).
LOGIN_PAGE_PATHS = frozenset({"/+login", "/+logout"})
_FORM = b"application/x-www-form-urlencoded"

#: Renders a refusal for a browser: (request, verdict) -> the page.
RefusalPage = Callable[[Request, Verdict], bytes]


def is_devpi_client(request: Request) -> bool:
    return b"devpi-client" in (request.getHeader(b"user-agent") or b"")


def refusal_code(request: Request, verdict: Verdict) -> int:
    """401 becomes 403 for devpi-client, which prints the message of a 403 (devpi's rule)."""
    return 403 if verdict.code == 401 and is_devpi_client(request) else verdict.code


def is_login_page_request(request: Request, path: str | None) -> bool:
    """A browser's ``GET /+login`` or ``/+logout``, or the login form posted; devpi-client's
    JSON ``POST /+login`` is the API's."""
    if path not in LOGIN_PAGE_PATHS:
        return False
    if request.method in (b"GET", b"HEAD"):
        return True
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    return request.method == b"POST" and (content_type == _FORM or path == "/+logout")


class LockdownGate(Resource):
    isLeaf = True
    log = Logger()

    def __init__(
        self,
        inner: IResource,
        access: Access,
        *,
        login_page: IResource | None = None,
        refusal_page: RefusalPage | None = None,
        healthy: Callable[[], bool] | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.access = access
        self.login_page = login_page
        self.refusal_page = refusal_page
        self.healthy = healthy

    def render(self, request: Request) -> Any:
        path = decoded_path(request.path)
        if self.login_page is not None and is_login_page_request(request, path):
            return self.login_page.render(request)
        method = request.method.decode("ascii", "replace")
        known = self.access.verdict_now(request, method, path)
        if known is not None:  # the usual case: no password to check first
            return self._answer(request, path, known)
        deciding: Deferred[Verdict] = Deferred.fromCoroutine(
            self.access.verdict(request, method, path)
        )
        deciding.addBoth(self._later, request, path)
        return NOT_DONE_YET

    def _later(self, result: Verdict | Failure, request: Request, path: str | None) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        try:
            body = self._answer(request, path, result)
        except Exception:
            self.log.failure("answering {uri}", uri=request.uri)
            body = plain_error(request, 500, "internal error (logged on the server)")
        if body is NOT_DONE_YET:
            return
        request.write(body)
        request.finish()

    def _answer(self, request: Request, path: str | None, result: Verdict | Failure) -> Any:
        if isinstance(result, Failure):
            self.log.failure("deciding who may see {uri}", result, uri=request.uri)
            return plain_error(request, 500, "internal error (logged on the server)")
        if result.allowed:
            return self.inner.render(request)
        if path is not None and self.healthy is not None and is_health_check(path, request.args):
            return self._health(request)
        return self.refuse(request, result)

    def refuse(self, request: Request, verdict: Verdict) -> bytes:
        code = refusal_code(request, verdict)
        if code == 401:
            request.setHeader(b"www-authenticate", BASIC_CHALLENGE)
        if self.refusal_page is not None:
            page = self.refusal_page(request, attrs.evolve(verdict, code=code))
            if page:
                return page
        return plain_error(request, code, verdict.reason)

    def _health(self, request: Request) -> bytes:
        assert self.healthy is not None
        healthy = self.healthy()
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps({"healthy": healthy}).encode() + b"\n"
