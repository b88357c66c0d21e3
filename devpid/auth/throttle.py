"""Brute-force slowdown for failed logins, per user and per client address."""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IReactorTime


@attrs.define
class _Record:
    failures: int
    blocked_until: float


@attrs.define
class FailedLogins:
    """After ``free_failures`` failures a key waits 1, 2, 4, ... seconds (capped) per failure.

    A key is forgotten ``window`` seconds after its last block (or failure) ran out.
    """

    clock: IReactorTime
    free_failures: int = 5
    #: An address is often shared (a NAT, the proxy in front of devpid): it gets more.
    address_free_failures: int = 30
    window: float = 300.0
    base_delay: float = 1.0
    max_delay: float = 300.0
    max_keys: int = 100_000
    _records: dict[tuple[str, str], _Record] = attrs.field(factory=dict)

    def _live(self, key: tuple[str, str], now: float) -> _Record | None:
        record = self._records.get(key)
        if record is not None and now >= record.blocked_until + self.window:
            del self._records[key]
            return None
        return record

    def _fail(self, key: tuple[str, str], now: float, free_failures: int) -> None:
        record = self._live(key, now)
        if record is None:
            record = _Record(0, now)
        else:
            del self._records[key]  # re-insert: dict order is least recently failed first
        record.failures += 1
        extra = record.failures - free_failures
        delay = min(self.base_delay * 2 ** (extra - 1), self.max_delay) if extra > 0 else 0.0
        record.blocked_until = now + delay
        while len(self._records) >= self.max_keys:
            del self._records[next(iter(self._records))]
        self._records[key] = record

    def failed(self, user: str, address: str) -> None:
        now = self.clock.seconds()
        self._fail(("user", user), now, self.free_failures)
        self._fail(("address", address), now, self.address_free_failures)

    def succeeded(self, user: str, address: str) -> None:
        """Clears the user's key only: an address may be shared with an attacker."""
        self._records.pop(("user", user), None)

    def retry_after(self, user: str, address: str) -> float | None:
        now = self.clock.seconds()
        waits = [
            record.blocked_until - now
            for key in (("user", user), ("address", address))
            if (record := self._live(key, now)) is not None and record.blocked_until > now
        ]
        return max(waits) if waits else None
