"""Users and their API tokens: ``GET /``, ``/<user>`` and ``/<user>/+tokens``.

devpi's status codes and messages (spec section 3): ``PUT`` answers 201,
``PATCH`` with a password answers a new login token, ``DELETE`` checks the
permission before the user's existence. API tokens are devpid's own (devpi
needs a plugin): created with an optional index limit and expiry, shown once,
stored as a hash, listed without their secret and revoked by id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.server import Request

from devpid.auth.acl import Action
from devpid.auth.passwords import PasswordChecker, hash_password, looks_like_hash
from devpid.auth.tokens import (
    DEFAULT_API_TOKEN_LIFETIME,
    LOGIN_EXPIRATION,
    MAX_API_TOKEN_LIFETIME,
    LoginTokens,
)
from devpid.http.devpi import envelope, json_body, set_serial, wants_json
from devpid.http.errors import HTTPError
from devpid.private.data import PrivateData
from devpid.private.indexconfig import visible_index
from devpid.private.names import check_user_name
from devpid.private.userconfig import parse_new_user, parse_user_patch, visible_user
from devpid.routes import labelled, unrouted
from devpid.routes.access import Access


def not_for_browsers(request: Request) -> None:
    """devpi without devpi-web answers ``text/html`` with 404 on its JSON views."""
    accept = request.getHeader(b"accept") or b""
    if b"text/html" in accept and not wants_json(request):
        raise HTTPError(404, "this is devpi's JSON API; ask for application/json")


@attrs.define
class UserRoutes:
    data: PrivateData
    access: Access
    passwords: PasswordChecker
    login_tokens: LoginTokens
    #: Runs argon2 off the reactor (``deferToThreadPool``); tests run it inline.
    offload: Callable[[Callable[[], str]], Deferred[str]]

    def register(self, app: Klein) -> None:
        app.route("/", methods=["GET"])(labelled("api", self.list_users))
        user = "/<user>"
        app.route(user, methods=["GET"], strict_slashes=False)(labelled("api", self.get_user))
        app.route(user, methods=["PUT"], strict_slashes=False)(labelled("api", self.create_user))
        app.route(user, methods=["PATCH"], strict_slashes=False)(labelled("api", self.modify_user))
        app.route(user, methods=["DELETE"], strict_slashes=False)(labelled("api", self.delete_user))
        tokens = "/<user>/+tokens"
        app.route(tokens, methods=["GET"], strict_slashes=False)(labelled("api", self.list_tokens))
        app.route(tokens, methods=["POST"], strict_slashes=False)(
            labelled("api", self.create_token)
        )
        app.route(f"{tokens}/<token_id>", methods=["DELETE"])(labelled("api", self.revoke_token))

    # -- reading -------------------------------------------------------------------

    def list_users(self, request: Request) -> bytes:
        not_for_browsers(request)
        result = {
            name: visible_user(name, record, self._indexes_of(name))
            for name, record in sorted(self.data.users().items())
        }
        return envelope(request, result=result, type="list:userconfig")

    def get_user(self, request: Request, user: str) -> bytes:
        if user.startswith("+"):
            raise unrouted(request)
        not_for_browsers(request)
        record = self.data.user(user)
        if record is None:
            raise HTTPError(404, f"no user '{user}'")
        result = visible_user(user, record, self._indexes_of(user))
        return envelope(request, result=result, type="userconfig")

    def _indexes_of(self, user: str) -> dict[str, Any]:
        return {name: visible_index(c) for name, c in self.data.indexes_of(user).items()}

    # -- changing ------------------------------------------------------------------

    async def create_user(self, request: Request, user: str) -> bytes:
        body = json_body(request)
        if self.data.user(user) is not None:
            raise HTTPError(409, "user already exists")
        check_user_name(user)
        new = parse_new_user(body)
        who = await self.access.require(
            request, Action.USER_CREATE, f"no permission to create user {user}", user=user
        )
        pwhash = await self._hashed(new.password, new.pwhash)
        record, serial = self.data.create_user(user, new, pwhash, who.user)
        set_serial(request, serial)
        result = visible_user(user, record, {})
        return envelope(request, 201, result=result, type="userconfig")

    async def modify_user(self, request: Request, user: str) -> bytes:
        body = json_body(request)
        if self.data.user(user) is None:
            raise HTTPError(404, f"no user '{user}'")
        change = parse_user_patch(body)
        if change.only_password:
            action, denial = (
                Action.USER_MODIFY_PASSWORD,
                f"no permission to change password for user '{user}'",
            )
        else:
            action, denial = Action.USER_MODIFY, f"no permission to modify user '{user}'"
        who = await self.access.require(request, action, denial, user=user)
        pwhash = None
        if change.password is not None or change.pwhash is not None:
            pwhash = await self._hashed(change.password, change.pwhash)
        _, serial = self.data.modify_user(user, change, pwhash, who.user)
        set_serial(request, serial)
        if pwhash is not None:
            self.passwords.forget(user)
        if change.password is not None:
            result = {"password": self.login_tokens.issue(user), "expiration": LOGIN_EXPIRATION}
            return envelope(
                request, result=result, type="userpassword", message="user updated, new proxy auth"
            )
        return envelope(request, message="user updated")

    async def delete_user(self, request: Request, user: str) -> bytes:
        who = await self.access.require(
            request, Action.USER_DELETE, f"no permission to delete user '{user}'", user=user
        )
        serial = self.data.delete_user(user, who.user)
        set_serial(request, serial)
        self.passwords.forget(user)
        return envelope(request, message=f"user '{user}' deleted")

    async def _hashed(self, password: str | None, pwhash: str | None) -> str:
        if password is not None:
            return await self.offload(lambda: hash_password(password))
        if pwhash is not None and looks_like_hash(pwhash):
            return pwhash
        raise HTTPError(400, "password needs to be set")

    # -- API tokens ------------------------------------------------------------------

    async def list_tokens(self, request: Request, user: str) -> bytes:
        await self._may_manage_tokens(request, user)
        result = {
            token_id: _visible_token(record)
            for token_id, record in self.data.tokens_of(user).items()
        }
        return envelope(request, result=result, type="list:token")

    async def create_token(self, request: Request, user: str) -> bytes:
        body = json_body(request) or {}
        who = await self._may_manage_tokens(request, user)
        if not isinstance(body, dict):
            raise HTTPError(400, "a token request is a JSON object")
        unknown = sorted(set(body) - {"indexes", "expires_in", "description"})
        if unknown:
            raise HTTPError(400, f"unknown token options: {', '.join(unknown)[:200]}")
        indexes = body.get("indexes") or []
        if isinstance(indexes, str):
            indexes = [i.strip() for i in indexes.split(",") if i.strip()]
        if not isinstance(indexes, list) or not all(isinstance(i, str) for i in indexes):
            raise HTTPError(400, "'indexes' is a list of user/index names")
        lifetime = body.get("expires_in", DEFAULT_API_TOKEN_LIFETIME)
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int)
            or not (0 < lifetime <= MAX_API_TOKEN_LIFETIME)
        ):
            raise HTTPError(400, f"'expires_in' is seconds, from 1 to {MAX_API_TOKEN_LIFETIME}")
        description = body.get("description", "")
        if not isinstance(description, str) or len(description) > 200:
            raise HTTPError(400, "'description' is text of at most 200 characters")
        token, record, serial = self.data.create_token(
            user, indexes, lifetime, description, who.user
        )
        set_serial(request, serial)
        result = {"id": token.token_id, "token": token.plaintext, **_visible_token(record)}
        return envelope(
            request, 201, result=result, type="token", message="token created; it is shown once"
        )

    async def revoke_token(self, request: Request, user: str, token_id: str) -> bytes:
        who = await self._may_manage_tokens(request, user)
        serial = self.data.revoke_token(user, token_id, who.user)
        set_serial(request, serial)
        return envelope(request, message=f"token {token_id} revoked")

    async def _may_manage_tokens(self, request: Request, user: str) -> Any:
        who = await self.access.require(
            request, Action.TOKEN_MANAGE, f"no permission to manage tokens of '{user}'", user=user
        )
        if self.data.user(user) is None:
            raise HTTPError(404, f"no user '{user}'")
        return who


def _visible_token(record: dict[str, Any] | Any) -> dict[str, Any]:
    return {k: record.get(k) for k in ("indexes", "created", "expires", "description")}


__all__ = ["UserRoutes", "not_for_browsers"]
