"""The Redis state store: the same interface, kept in a Redis server that several
devpid processes (or deployments, each under its own key prefix) can share.

txredisapi connects through the global reactor, so it is imported only here and
its connection pool is created in ``open()``, when the service starts.

Redis going away must not hang a request: with no live connection a call
fails at once with ``StoreUnavailable``, and a call that gets no reply within
``timeout`` seconds fails the same way (txredisapi drops that connection, so
no later reply is mistaken for another command's). The pool reconnects on its
own; the first call that succeeds marks the store up again.

``RedisSubscriber`` is the other half of ``publish()``: its own connection,
subscribed to the deployment's invalidation channel, that resubscribes after
every reconnect and tells its listener so (messages sent meanwhile are lost,
so the listener forgets what it holds in memory).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import txredisapi
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from devpid.store import StoreUnavailable

#: Seconds to connect to Redis, and to wait for any one reply.
DEFAULT_TIMEOUT = 2.0
#: Longest pause between reconnection attempts.
RECONNECT_MAX_DELAY = 2.0
#: Seconds between PINGs, so /+status knows Redis's state even when nothing else asks.
HEARTBEAT_INTERVAL = 2.0
#: TCP keepalive on the subscriber's connection: idle seconds, probe interval, probes.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_PROBES = 15, 5, 4
#: Errors that mean "Redis is not there right now", as opposed to a bug.
_UNREACHABLE = (
    txredisapi.ConnectionError,
    ConnectionLost,
    ConnectionDone,
    TimeoutError,
    CancelledError,
)
#: Error replies that mean "this Redis cannot serve right now" rather than a bad command,
#: at the start of the reply or, from a script on Redis before 7, after a "-" inside it.
_UNAVAILABLE_REPLY = re.compile(
    r"(?:^|-)(?:LOADING|READONLY|MISCONF|OOM|NOAUTH|BUSY|MASTERDOWN|TRYAGAIN)\b"
)

#: HINCRBY every (name, amount) pair of ARGV into KEYS[1], atomically.
_INCREMENT = """
for i = 1, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""

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
    #: Times out replies (the reactor in production).
    clock: IReactorTime
    timeout: float = DEFAULT_TIMEOUT
    state: str = "connecting"
    last_error: str | None = None
    last_error_at: float | None = None
    _pool: Any = None
    _heartbeat: LoopingCall | None = None
    _closing: bool = False
    log = Logger()

    @property
    def description(self) -> str:
        return f"redis ({mask_password(self.url)}, prefix {self.prefix})"

    @property
    def channel(self) -> str:
        """The pub/sub channel for invalidation messages of this deployment."""
        return self.prefix + "invalidate"

    def health(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "url": mask_password(self.url),
            "prefix": self.prefix,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise StoreUnavailable(
                "the redis store is closed" if self._closing else "the redis store is not open yet"
            )
        return self._pool

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}{kind}:{name}"

    async def open(self) -> None:
        self._closing = False
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
            connectTimeout=self.timeout,
            replyTimeout=self.timeout,
        )
        self._pool._factory.maxDelay = RECONNECT_MAX_DELAY
        with contextlib.suppress(StoreUnavailable):
            await self._run("ping")
        self._heartbeat = LoopingCall(self._ping)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(HEARTBEAT_INTERVAL, now=False)

    def _ping(self) -> Deferred[None]:
        async def ping() -> None:
            with contextlib.suppress(StoreUnavailable):
                await self._run("ping")

        d = Deferred.fromCoroutine(ping())
        d.addErrback(lambda f: self.log.failure("redis heartbeat failed", f))
        return d

    async def close(self) -> None:
        self._closing = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.disconnect()
        self.state = "closed"

    async def _run(self, command: str, *args: Any) -> Any:
        """One command, or ``StoreUnavailable`` within ``timeout`` seconds."""
        pool = self.pool
        if not pool._factory.size and self.state in ("up", "down"):
            # Every connection is gone (Redis stopped, or the network): fail now
            # instead of waiting ``timeout`` for a reconnection. Only at start-up
            # ("connecting") does a call wait for the first connection.
            if self.state == "up":
                self._went_down("connection lost")
            raise StoreUnavailable(f"redis is unavailable: {self.last_error}")
        d: Deferred[Any] = getattr(pool, command)(*args)
        d.addTimeout(self.timeout, self.clock)
        try:
            result = await d
        except _UNREACHABLE as e:
            self._went_down(f"{type(e).__name__}: {e}".rstrip(": "))
            raise StoreUnavailable(f"redis is unavailable: {self.last_error}") from None
        except txredisapi.ResponseError as e:
            if not _UNAVAILABLE_REPLY.search(str(e)):
                raise
            self._went_down(str(e).splitlines()[0])
            raise StoreUnavailable(f"redis is unavailable: {self.last_error}") from None
        if self._closing:  # a reply that arrived while closing says nothing about Redis
            return result
        if self.state != "up":
            if self.state == "down":
                self.log.info("redis is reachable again at {url}", url=mask_password(self.url))
            self.state = "up"
        return result

    def _went_down(self, reason: str) -> None:
        self.last_error = reason
        self.last_error_at = self.clock.seconds()
        if self._closing:  # disconnecting on purpose is not an outage
            self.state = "closed"
            return
        if self.state != "down":
            self.state = "down"
            self.log.warn(
                "redis at {url} is unavailable ({reason}); serving from the serverdir, "
                "coalescing per process, poller paused",
                url=mask_password(self.url),
                reason=reason,
            )

    async def get_document(self, key: str) -> dict[str, Any] | None:
        raw = await self._run("get", self._key("doc", key))
        if raw is None:
            return None
        document: dict[str, Any] = json.loads(raw)
        return document

    async def set_document(self, key: str, document: dict[str, Any]) -> None:
        value = json.dumps(document, separators=(",", ":"))
        await self._run("set", self._key("doc", key), value)

    async def delete_document(self, key: str) -> None:
        await self._run("delete", self._key("doc", key))

    async def add_to_set(self, name: str, *members: str) -> None:
        if members:
            await self._run("sadd", self._key("set", name), list(members))

    async def remove_from_set(self, name: str, *members: str) -> None:
        if members:
            await self._run("srem", self._key("set", name), list(members))

    async def set_members(self, name: str) -> set[str]:
        members = await self._run("smembers", self._key("set", name))
        return set(members or ())

    async def increment(self, counters: dict[str, int]) -> None:
        if not counters:
            return
        pairs = [str(part) for item in counters.items() for part in item]
        await self._run("eval", _INCREMENT, [self.prefix + "counters"], pairs)

    async def counters(self) -> dict[str, int]:
        values = await self._run("hgetall", self.prefix + "counters")
        return {name: int(value) for name, value in (values or {}).items()}

    async def acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        ttl_ms = max(1, int(ttl * 1000))
        result = await self._run("eval", _ACQUIRE, [self._key("lock", name)], [owner, ttl_ms])
        return bool(int(result))

    async def release_lock(self, name: str, owner: str) -> None:
        await self._run("eval", _RELEASE, [self._key("lock", name)], [owner])

    async def lock_owner(self, name: str) -> str | None:
        owner = await self._run("get", self._key("lock", name))
        return None if owner is None else str(owner)

    async def publish(self, message: dict[str, Any]) -> None:
        await self._run("publish", self.channel, json.dumps(message, separators=(",", ":")))


def _keep_alive(transport: Any) -> None:
    """Probe an idle connection, so a Redis host that vanished is noticed within a minute.

    The subscriber only listens; without probes a silently dropped connection
    would look subscribed forever.
    """
    handle = getattr(transport, "getHandle", lambda: None)()
    if handle is None:
        return
    with contextlib.suppress(OSError, AttributeError):
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        handle.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


class _SubscriberProtocol(txredisapi.SubscriberProtocol):
    factory: _SubscriberFactory

    def connectionMade(self) -> Any:
        _keep_alive(self.transport)
        d = super().connectionMade()
        d.addCallback(lambda _: self.factory.subscriber.connected(self))
        return d

    def messageReceived(self, pattern: Any, channel: Any, message: Any) -> None:
        self.factory.subscriber.received(message)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.subscriber.disconnected()


class _SubscriberFactory(txredisapi.SubscriberFactory):
    protocol = _SubscriberProtocol
    maxDelay = RECONNECT_MAX_DELAY
    subscriber: RedisSubscriber


@attrs.define(slots=False)
class RedisSubscriber(Service):
    """Deliver this deployment's invalidation messages to ``listener``, on its own connection.

    ``on_subscribed`` is called after every (re)subscription: whatever was
    published while the connection was down is lost, so the listener should
    forget what it keeps in memory.
    """

    store: RedisStore
    listener: Callable[[dict[str, Any]], None]
    on_subscribed: Callable[[], None]
    #: This process's token: its own messages are not delivered back to it.
    origin: Callable[[], str]
    subscribed: bool = False
    subscriptions: int = 0
    _factory: Any = None
    log = Logger()

    def startService(self) -> None:
        super().startService()
        host, port, _db, password, tls = parse_redis_url(self.store.url)
        factory = _SubscriberFactory(isLazy=True)
        factory.subscriber = self
        factory.password = password
        factory.reconnect = True
        context = txredisapi.ssl.ClientContextFactory() if tls else None
        factory.startConnecting(txredisapi._makeEndpoint(host, port, self.store.timeout, context))
        self._factory = factory

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self._factory is None:
            return None
        factory, self._factory = self._factory, None
        d: Deferred[Any] = factory.disconnect()
        return d

    def connected(self, protocol: _SubscriberProtocol) -> None:
        d = protocol.subscribe(self.store.channel)
        d.addCallbacks(self._subscribed, self._failed)

    def _subscribed(self, _: object) -> None:
        self.subscribed = True
        self.subscriptions += 1
        if self.subscriptions > 1:
            self.log.info("redis pub/sub: resubscribed to {channel}", channel=self.store.channel)
        self.on_subscribed()

    def _failed(self, failure: Any) -> None:
        self.log.warn("redis pub/sub: could not subscribe: {error}", error=failure.value)

    def disconnected(self) -> None:
        self.subscribed = False

    def received(self, raw: Any) -> None:
        try:
            message = json.loads(raw)
        except (TypeError, ValueError):
            self.log.warn("ignoring a malformed invalidation message: {raw!r}", raw=raw)
            return
        if isinstance(message, dict) and message.get("origin") != self.origin():
            self.listener(message)
