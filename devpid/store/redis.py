"""The Redis state store: the same interface, kept in a Redis server that several
devpid processes (or deployments, each under its own key prefix) can share.

txredisapi connects through the global reactor, so it is imported only here and
its connection pool is created in ``open()``, when the service starts.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import txredisapi
from twisted.internet.interfaces import IReactorTime

#: Take the lock if it is free or already ours; either way (re)set its TTL.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == false or current == ARGV[1] then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

#: Delete the lock only if this owner holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


def parse_redis_url(url: str) -> tuple[str, int, int, str | None, bool]:
    """``redis://[:password@]host[:port][/db]`` -> host, port, db, password, tls."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis:// or rediss:// URL: {mask_password(url)!r}")
    path = parts.path.strip("/")
    try:
        db = int(path) if path else 0
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"bad port or database number in {mask_password(url)!r}") from None
    return parts.hostname or "localhost", port, db, parts.password, parts.scheme == "rediss"


def mask_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


@attrs.define
class RedisStore:
    url: str
    prefix: str
    #: Unused (Redis keeps lock time itself) but kept for the same constructor shape.
    clock: IReactorTime
    _pool: Any = None

    @property
    def description(self) -> str:
        return f"redis ({mask_password(self.url)}, prefix {self.prefix})"

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the redis store is not open")
        return self._pool

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def open(self) -> None:
        host, port, db, password, tls = parse_redis_url(self.url)
        # convertNumbers=False: documents and set members stay strings even when
        # they look like numbers; counters() converts its values itself.
        self._pool = txredisapi.lazyConnectionPool(
            host=host,
            port=port,
            dbid=db,
            poolsize=4,
            password=password,
            ssl_context_factory=tls,
            convertNumbers=False,
        )

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.disconnect()

    async def get_document(self, key: str) -> dict[str, Any] | None:
        raw = await self.pool.get(self._key("doc", key))
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    async def set_document(self, key: str, document: dict[str, Any]) -> None:
        await self.pool.set(self._key("doc", key), json.dumps(document, separators=(",", ":")))

    async def delete_document(self, key: str) -> None:
        await self.pool.delete(self._key("doc", key))

    async def add_to_set(self, name: str, *members: str) -> None:
        if members:
            await self.pool.sadd(self._key("set", name), list(members))

    async def remove_from_set(self, name: str, *members: str) -> None:
        if members:
            await self.pool.srem(self._key("set", name), list(members))

    async def set_members(self, name: str) -> set[str]:
        members = await self.pool.smembers(self._key("set", name))
        return set(members or ())

    async def increment(self, counters: dict[str, int]) -> None:
        if not counters:
            return
        key = self.prefix + "counters"
        transaction = await self.pool.multi()
        try:
            for name, amount in counters.items():
                transaction.hincrby(key, name, amount)
        except BaseException:
            await transaction.discard()
            raise
        await transaction.commit()

    async def counters(self) -> dict[str, int]:
        values = await self.pool.hgetall(self.prefix + "counters")
        return {name: int(value) for name, value in (values or {}).items()}

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        ttl_ms = max(1, int(ttl * 1000))
        result = await self.pool.eval(_ACQUIRE, [self._key("lock", name)], [owner, ttl_ms])
        return bool(int(result))

    async def release_lock(self, name: str, owner: str) -> None:
        await self.pool.eval(_RELEASE, [self._key("lock", name)], [owner])
