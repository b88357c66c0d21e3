"""Who is asking: the credentials a request offers, checked against users and tokens.

Credentials come from ``X-Devpi-Auth`` first, then HTTP Basic (devpi's
precedence); the secret may be a login token (signed, 10 h), an API token
(``devpid_<id>_<secret>``, also with the user name ``__token__``) or the
password. Wrong, expired or garbage credentials mean anonymous, never an error
(devpi-client and pip send stale ones next to good ones).

Tokens cost an HMAC or a hash; a password costs argon2, once per distinct
secret thanks to ``PasswordChecker``'s memory (a user moved from devpi with a
legacy ``pwsalt`` costs a salted sha256 instead). Repeated wrong passwords for
one user or from one address are throttled: while throttled, passwords are not
checked at all (the request is anonymous), and ``/+login`` answers 429.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.internet.defer import DeferredLock
from twisted.internet.interfaces import IReactorTime

from devpid.auth.acl import ANONYMOUS, Principal
from devpid.auth.credentials import Credentials, offered_credentials
from devpid.auth.passwords import PasswordChecker
from devpid.auth.throttle import FailedLogins
from devpid.auth.tokens import LoginTokens, api_token_digest, api_token_id, digests_equal
from devpid.private.data import PrivateData

#: Wrong passwords remembered as already counted.
KNOWN_WRONG_ENTRIES = 10_000
#: The user name that says "the password is an API token" (as package indexes do).
TOKEN_USER = "__token__"


class Throttled(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many failed logins; retry after {retry_after:.0f}s")
        self.retry_after = retry_after


@attrs.define
class Authenticator:
    data: PrivateData
    login_tokens: LoginTokens
    passwords: PasswordChecker
    failures: FailedLogins
    clock: IReactorTime
    _checking: dict[str, DeferredLock] = attrs.field(factory=dict)
    #: Keyed digests of (user, wrong password) already counted, oldest first.
    _known_wrong: dict[bytes, None] = attrs.field(factory=dict)
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32))

    async def principal(
        self, x_devpi_auth: bytes | None, authorization: bytes | None, address: str
    ) -> Principal:
        """The principal of the first offered credentials that hold, else anonymous."""
        for credentials in offered_credentials(x_devpi_auth, authorization):
            principal = await self._check(credentials, address)
            if principal is not None:
                return principal
        return ANONYMOUS

    async def login(self, user: str, password: str, address: str) -> str | None:
        """A new login token for ``user``, or None; ``Throttled`` when too many failed."""
        retry_after = self.failures.retry_after(user, address)
        if retry_after is not None:
            raise Throttled(retry_after)
        principal = await self._check(Credentials(user, password, "login"), address)
        if principal is None or principal.user != user or principal.token_indexes is not None:
            return None
        return self.login_tokens.issue(user)

    async def _check(self, credentials: Credentials, address: str) -> Principal | None:
        user, secret = credentials.user, credentials.secret
        token_id = api_token_id(secret)
        if token_id is not None:
            return self._api_token(user, token_id, secret)
        if user == TOKEN_USER:
            return None
        record = self.data.user(user)
        if record is None:
            return None
        if self.login_tokens.user_of(secret) == user:
            return Principal(user)
        pwhash = record.get("pwhash")
        if not isinstance(pwhash, str):
            return None
        # devpi's legacy salted sha256 (a user moved from devpi with an old password)
        salt = record.get("pwsalt")
        salt = salt if isinstance(salt, str) and salt else None
        if self.failures.retry_after(user, address) is not None:
            return None
        # One password check of a user at a time: concurrent guesses wait, and are
        # throttled by the failures of those before them.
        lock = self._checking.setdefault(user, DeferredLock())
        await lock.acquire()
        try:
            if self.failures.retry_after(user, address) is not None:
                return None
            right = await self.passwords.check(user, pwhash, secret, salt)
        finally:
            lock.release()
            if not lock.locked and not lock.waiting:
                self._checking.pop(user, None)
        if right:
            self.failures.succeeded(user, address)
            return Principal(user)
        self._failed(user, secret, address)
        return None

    def _failed(self, user: str, secret: str, address: str) -> None:
        """Count a wrong password once: a client repeating a stale one (pip with an old
        password in its index URL) is not an attacker guessing, and must not lock the
        user out for everyone."""
        digest = hmac.new(self._key, f"{user}\0{secret}".encode(), hashlib.sha256).digest()
        if digest in self._known_wrong:
            return
        self._known_wrong[digest] = None
        while len(self._known_wrong) > KNOWN_WRONG_ENTRIES:
            del self._known_wrong[next(iter(self._known_wrong))]
        self.failures.failed(user, address)

    def _api_token(self, user: str, token_id: str, secret: str) -> Principal | None:
        token = self.data.tokens().get(token_id)
        if token is None:
            return None
        owner = token.get("user")
        if not isinstance(owner, str) or user not in (owner, TOKEN_USER):
            return None
        if self.data.user(owner) is None:
            return None
        if not digests_equal(str(token.get("digest", "")), api_token_digest(secret)):
            return None
        expires = token.get("expires")
        if isinstance(expires, int | float) and self.data.wall_clock() >= expires:
            return None
        return Principal(owner, token_indexes=_limited_to(token))


def _limited_to(token: Mapping[str, Any]) -> frozenset[str] | None:
    indexes = token.get("indexes")
    if not indexes:
        return None
    return frozenset(str(i) for i in indexes)
