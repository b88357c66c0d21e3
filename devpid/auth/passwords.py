"""argon2id password hashes, and a cache so argon2 runs once per (user, hash, secret).

Costs are OWASP's minimum for argon2id (19 MiB, t=2, p=1). devpi's defaults (512 MiB, p=8,
t=16) make each login attempt cost half a gigabyte: a handful of concurrent bad logins is a
denial of service. Hashes with other parameters still verify (argon2 reads them from the hash).

Users moved from devpi (``devpid import --from-devpi``) keep the hash they had. devpi-server
6 wrote argon2 hashes (passlib's PHC strings, which argon2-cffi reads as they are); a
password set before devpi-server 6 is devpi's legacy scheme, a ``pwsalt`` (ASCII) and the hex
sha256 of the salt followed by the UTF-8 password. Those verify too (``verify_password`` with
the salt), compared in constant time; the next password change stores argon2 and drops the
salt (``PrivateData.modify_user``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable

import attrs
from argon2 import PasswordHasher, Type
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 19456
ARGON2_PARALLELISM = 1

_HASHER = PasswordHasher(
    time_cost=ARGON2_TIME_COST,
    memory_cost=ARGON2_MEMORY_KIB,
    parallelism=ARGON2_PARALLELISM,
    type=Type.ID,
)
_HASH_RE = re.compile(
    r"\$argon2(id|i|d)\$(v=\d+\$)?m=(\d{1,9}),t=(\d{1,9}),p=(\d{1,3})\$[A-Za-z0-9+/]+\$[A-Za-z0-9+/]+"
)
#: The costliest hash accepted from outside (``pwhash``, ``--root-passwd-hash``): a
#: stored hash's cost is paid at every check of a new secret, so an unbounded one
#: would let anyone who may create a user make each check take seconds and memory.
#: devpi's password hashes (passlib's argon2: 64 MiB, t=3, p=4) are within it.
MAX_GIVEN_MEMORY_KIB = 65536
MAX_GIVEN_TIME_COST = 10
MAX_GIVEN_PARALLELISM = 8


def hash_password(password: str) -> str:
    """CPU-bound (tens of ms): callers run it in a thread."""
    return _HASHER.hash(password)


_LEGACY_HASH_RE = re.compile(r"[0-9a-f]{64}")


def verify_password(pwhash: str, password: str, salt: str | None = None) -> bool:
    """False on mismatch or a malformed hash; never raises. With ``salt``, ``pwhash`` is
    devpi's legacy salted sha256."""
    if salt is not None:
        return verify_legacy_password(pwhash, salt, password)
    try:
        return bool(_HASHER.verify(pwhash, password))
    except Exception:
        return False


def legacy_password_hash(salt: str, password: str) -> str:
    """devpi's hash before argon2 (``getpwhash``): sha256 of the ASCII salt, then the UTF-8
    password, in hex."""
    digest = hashlib.sha256(salt.encode("ascii"))
    digest.update(password.encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def verify_legacy_password(pwhash: str, salt: str, password: str) -> bool:
    """Whether ``password`` is the one of devpi's legacy ``pwsalt`` + ``pwhash``."""
    if not isinstance(pwhash, str) or not isinstance(salt, str):
        return False
    if not _LEGACY_HASH_RE.fullmatch(pwhash) or not salt.isascii():
        return False
    return hmac.compare_digest(legacy_password_hash(salt, password), pwhash)


def looks_like_hash(value: str) -> bool:
    """An argon2 hash devpid will store: well formed, and no costlier than the limits."""
    if not isinstance(value, str):
        return False
    match = _HASH_RE.fullmatch(value)
    if match is None:
        return False
    memory, time_cost, parallelism = (int(match.group(n)) for n in (3, 4, 5))
    return (
        memory <= MAX_GIVEN_MEMORY_KIB
        and 1 <= time_cost <= MAX_GIVEN_TIME_COST
        and 1 <= parallelism <= MAX_GIVEN_PARALLELISM
    )


_Key = tuple[str, str, bytes]


@attrs.define
class PasswordChecker:
    """Verifies passwords off the reactor and remembers recent answers, so argon2 runs once per
    (user, hash, secret), not once per request.

    Failures are remembered too: pip resends the same wrong Basic password on every request.
    """

    offload: Callable[[Callable[[], bool]], Deferred[bool]]
    clock: IReactorTime
    ttl: float = 300.0
    max_entries: int = 10_000
    _key: bytes = attrs.field(factory=lambda: os.urandom(32))
    _cache: dict[_Key, tuple[bool, float]] = attrs.field(factory=dict)
    _inflight: dict[_Key, list[Deferred[bool]]] = attrs.field(factory=dict)
    _epoch: int = 0

    async def check(self, user: str, pwhash: str, password: str, salt: str | None = None) -> bool:
        """Whether ``password`` is right for ``pwhash`` (devpi's legacy salted hash when
        ``salt`` is given)."""
        digest = hmac.new(
            self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256
        ).digest()
        # the salt belongs to the hash: both are in the key
        key = (user, pwhash if salt is None else f"{salt}:{pwhash}", digest)
        now = self.clock.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > now:
                return cached[0]
            del self._cache[key]
        waiter: Deferred[bool] = Deferred()
        waiters = self._inflight.get(key)
        if waiters is None:
            self._inflight[key] = [waiter]
            epoch = self._epoch
            self.offload(lambda: verify_password(pwhash, password, salt)).addBoth(
                self._deliver, key, epoch
            )
        else:
            waiters.append(waiter)
        return await waiter

    def _deliver(self, result: bool | Failure, key: _Key, epoch: int) -> None:
        waiters = self._inflight.pop(key, [])
        if not isinstance(result, Failure) and epoch == self._epoch:
            while len(self._cache) >= self.max_entries:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = (result, self.clock.seconds() + self.ttl)
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    def forget(self, user: str) -> None:
        """After a password change or user delete; answers still in flight are not cached."""
        self._epoch += 1
        for key in [k for k in self._cache if k[0] == user]:
            del self._cache[key]
