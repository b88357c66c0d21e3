"""``RememberedPrincipals``: who a set of credentials was, for a few seconds.

Under ``--require-auth`` every request is authenticated: pip sends its Basic
password, or a token, with each of hundreds of requests. ``Authenticator`` is
already cheap for each (a token's hash, a login token's HMAC, ``PasswordChecker``'s
memory instead of argon2), but it is still a chain of coroutines, a base64 decode,
a signature check and a throttle lookup per request. This keeps the answer by a
keyed digest of the credentials sent (never the credentials themselves), so a
repeated request costs one BLAKE2 and one dict lookup.

Only successes are kept, and each only while the private data is at the serial
it was found at and for at most ``ttl`` seconds: a password change, a revoked
token, a deleted user (each moves the serial) take effect on the next request,
and an expiring token at most ``ttl`` seconds late. While a user is throttled, a
client that already authenticated keeps working for up to ``ttl`` seconds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable

import attrs

from devpid.auth.acl import Principal

#: Seconds a success is kept.
TTL = 10.0
MAX_ENTRIES = 10_000


@attrs.define
class RememberedPrincipals:
    now: Callable[[], float]
    serial: Callable[[], int]
    ttl: float = TTL
    max_entries: int = MAX_ENTRIES
    _key: bytes = attrs.field(factory=lambda: secrets.token_bytes(32), repr=False)
    _entries: dict[bytes, tuple[Principal, int, float]] = attrs.field(factory=dict, repr=False)

    def key(self, *credentials: bytes | None) -> bytes | None:
        """The digest of what a request offers, or None when it offers nothing."""
        if not any(credentials):
            return None
        digest = hashlib.blake2b(key=self._key, digest_size=32)
        for part in credentials:
            value = part or b""
            digest.update(b"%d:" % len(value))
            digest.update(value)
        return digest.digest()

    def get(self, key: bytes) -> Principal | None:
        found = self._entries.get(key)
        if found is None:
            return None
        principal, serial, deadline = found
        if serial != self.serial() or self.now() >= deadline:
            del self._entries[key]
            return None
        return principal

    def put(self, key: bytes, principal: Principal) -> None:
        if not principal.authenticated:
            return
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (principal, self.serial(), self.now() + self.ttl)
