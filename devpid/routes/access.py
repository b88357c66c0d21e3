"""Who asks, and whether they may: the routes' one door to ``devpid.auth``.

A route asks ``Access.require(request, action, ...)``; the answer comes from
``devpid.auth.acl.Policy`` (the one place permissions are decided) and a
refusal is a 401 (anonymous upload, with ``WWW-Authenticate``) or a 403.
The principal is worked out once per request and kept on it: from
``X-Devpi-Auth`` or Basic, else from the web login page's cookie
(``devpid.web.login``). The cookie counts for reads, and for other methods only
when the browser itself says the request comes from devpid's own pages
(``Sec-Fetch-Site: same-origin``, or an ``Origin`` that is this host), so no
other site can make a logged-in browser change anything.

``verdict`` is the lockdown's door (``devpid.auth.lockdown``): the gate in front
of every route and ``/+authcheck`` ask it, and work out a principal only when the
answer can depend on one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.web.server import Request

from devpid.auth.acl import ANONYMOUS, Action, Policy, Principal
from devpid.auth.authenticate import Authenticator
from devpid.auth.lockdown import LET_IN, Lockdown, Verdict, is_open
from devpid.auth.remembered import RememberedPrincipals
from devpid.http.errors import HTTPError
from devpid.http.request import is_cross_site

_PRINCIPAL = "devpid_principal"
#: The web login page's cookie: base64 of ``user:login-token``, as devpi-client's header.
LOGIN_COOKIE = b"devpid_auth"
_SAFE_METHODS = frozenset({b"GET", b"HEAD"})


def client_address(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "") or "")


def known_principal(request: Request) -> Principal | None:
    """The principal already worked out for ``request``, if any."""
    known = getattr(request, _PRINCIPAL, None)
    return known if isinstance(known, Principal) else None


def same_origin(request: Request) -> bool:
    """The browser says this request comes from this host's own pages."""
    site = request.getHeader(b"sec-fetch-site")
    if site is not None:
        return site.strip().lower() == b"same-origin"
    origin = request.getHeader(b"origin")
    return origin is not None and origin != b"null" and not is_cross_site(request)


def login_cookie(request: Request, method: bytes | None = None) -> bytes | None:
    """The login cookie, when it may count for ``method`` (default: the request's)."""
    cookie = request.getCookie(LOGIN_COOKIE)
    if not cookie:
        return None
    if (method or request.method) in _SAFE_METHODS or same_origin(request):
        return cookie
    return None


def _EVERY_INDEX(index: str) -> bool:
    return True


@attrs.define
class Access:
    authenticator: Authenticator
    policy: Policy
    #: What the lockdown lets in (None: everything, as without the gate).
    lockdown: Lockdown | None = None
    #: Who recent credentials were (None: authenticate every request in full).
    remembered: RememberedPrincipals | None = None

    def _offered(self, request: Request, method: bytes | None) -> tuple[bytes | None, ...]:
        return (
            request.getHeader(b"x-devpi-auth"),
            request.getHeader(b"authorization"),
            login_cookie(request, method),
        )

    def who_now(self, request: Request, method: bytes | None = None) -> Principal | None:
        """The principal when it is known without waiting: worked out already, offering
        nothing (anonymous), or remembered; else None."""
        known = getattr(request, _PRINCIPAL, None)
        if isinstance(known, Principal):
            return known
        offered = self._offered(request, method)
        if not any(offered):
            principal: Principal | None = ANONYMOUS
        elif self.remembered is None:
            return None
        else:
            key = self.remembered.key(*offered)
            principal = self.remembered.get(key) if key is not None else None
        if principal is not None:
            setattr(request, _PRINCIPAL, principal)
        return principal

    async def who(self, request: Request, method: bytes | None = None) -> Principal:
        """Who sends ``request``; ``method``: the one to judge the login cookie by, when the
        request speaks for another (``/+authcheck``)."""
        known = self.who_now(request, method)
        if known is not None:
            return known
        x_devpi_auth, authorization, cookie = offered = self._offered(request, method)
        address = client_address(request)
        principal = await self.authenticator.principal(x_devpi_auth, authorization, address)
        if not principal.authenticated and cookie is not None:
            principal = await self.authenticator.principal(cookie, None, address)
        if self.remembered is not None:
            key = self.remembered.key(*offered)
            if key is not None:
                self.remembered.put(key, principal)
        setattr(request, _PRINCIPAL, principal)
        return principal

    def verdict_now(self, request: Request, method: str, path: str | None) -> Verdict | None:
        """``verdict`` when it is known without waiting for a password check, else None."""
        lockdown = self.lockdown
        if lockdown is None or is_open(path) or lockdown.needs_nothing_beyond_open(method, path):
            return LET_IN
        who = self.who_now(request, method.encode("ascii", "replace"))
        return lockdown.verdict_shut(who, method, path) if who is not None else None

    async def readable_indexes(self, request: Request) -> Callable[[str], bool]:
        """Which indexes this request's sender may read (``acl_pkg_read`` along each
        index's bases, as the gate decides), for answers that span indexes (search)."""
        lockdown = self.lockdown
        if lockdown is None or not lockdown.closed_indexes():
            return _EVERY_INDEX
        who = await self.who(request)
        return lambda index: lockdown.may_read(who, index)

    async def verdict(self, request: Request, method: str, path: str | None) -> Verdict:
        """May this request's sender send ``method`` to ``path`` (decoded)?"""
        known = self.verdict_now(request, method, path)
        if known is not None:
            return known
        assert self.lockdown is not None
        who = await self.who(request, method.encode("ascii", "replace"))
        return self.lockdown.verdict(who, method, path)

    async def require(
        self,
        request: Request,
        action: Action,
        message: str | None = None,
        **target: Any,
    ) -> Principal:
        """The principal, if it may do ``action`` on ``target``; else a 401 or 403."""
        who = await self.who(request)
        if self.policy.permits(who, action, **target):
            return who
        code = self.policy.denial_status(who, action)
        headers = {b"www-authenticate": b'Basic realm="pypi"'} if code == 401 else None
        raise HTTPError(code, message or _default_message(action, target), headers)


def _default_message(action: Action, target: dict[str, Any]) -> str:
    where = target.get("index") or target.get("user") or ""
    what = action.name.lower().replace("_", " ")
    return f"no permission to {what}" + (f" on {where}" if where else "")
