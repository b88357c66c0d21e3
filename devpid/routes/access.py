"""Who asks, and whether they may: the routes' one door to ``devpid.auth``.

A route asks ``Access.require(request, action, ...)``; the answer comes from
``devpid.auth.acl.Policy`` (the one place permissions are decided) and a
refusal is a 401 (anonymous upload, with ``WWW-Authenticate``) or a 403.
The principal is worked out once per request and kept on it.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.web.server import Request

from devpid.auth.acl import Action, Policy, Principal
from devpid.auth.authenticate import Authenticator
from devpid.http.errors import HTTPError

_PRINCIPAL = "devpid_principal"


def client_address(request: Request) -> str:
    peer = request.getClientAddress()
    return str(getattr(peer, "host", "") or "")


@attrs.define
class Access:
    authenticator: Authenticator
    policy: Policy

    async def who(self, request: Request) -> Principal:
        known = getattr(request, _PRINCIPAL, None)
        if isinstance(known, Principal):
            return known
        principal = await self.authenticator.principal(
            request.getHeader(b"x-devpi-auth"),
            request.getHeader(b"authorization"),
            client_address(request),
        )
        setattr(request, _PRINCIPAL, principal)
        return principal

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
