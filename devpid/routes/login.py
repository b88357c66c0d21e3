"""``POST /+login``: a password for a signed login token, as devpi-client's ``devpi login`` asks.

The token is valid for 10 hours on every worker and across restarts (the
secret is the serverdir's ``--secretfile``). Wrong credentials answer 401;
repeated failures for one user or from one address answer 429 with
``Retry-After`` before any password is checked.
"""

from __future__ import annotations

import attrs
from klein import Klein
from twisted.web.server import Request

from devpid.auth.authenticate import Authenticator, Throttled
from devpid.auth.tokens import LOGIN_EXPIRATION
from devpid.http.devpi import envelope, json_body
from devpid.http.errors import HTTPError
from devpid.routes import labelled
from devpid.routes.access import client_address


@attrs.define
class LoginRoutes:
    authenticator: Authenticator

    def register(self, app: Klein) -> None:
        app.route("/+login", methods=["POST"])(labelled("login", self.login))

    async def login(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept") or b""
        if b"text/html" in accept and b"json" not in accept:
            raise HTTPError(404, "not found")
        body = json_body(request)
        if not isinstance(body, dict):
            raise HTTPError(400, "Bad request: no user/password specified")
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise HTTPError(400, "Bad request: no user/password specified")
        try:
            token = await self.authenticator.login(user, password, client_address(request))
        except Throttled as e:
            seconds = b"%d" % max(1, round(e.retry_after))
            raise HTTPError(429, str(e), {b"retry-after": seconds}) from None
        if token is None:
            raise HTTPError(401, f"user {user[:100]!r} could not be authenticated")
        return envelope(
            request,
            result={"password": token, "expiration": LOGIN_EXPIRATION},
            type="proxyauth",
            message="login successful",
        )
