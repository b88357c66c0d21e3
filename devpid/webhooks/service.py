"""The webhook sender: fills the queue from the event log and drains it, in every process.

Each pass (every second, and at once after an event this process hears of)
first queues the webhook events of the log after the queue's last serial,
for each URL of their index, with the body signed once per event; then claims
the deliveries that are due and sends each one. A delivery that ends lets
the next one of its URL go at once. Every process sharing the serverdir runs
the same passes on the same ``webhooks.sqlite``; the queue's transactions
and leases make each delivery go once (see ``devpid.webhooks.queue``).

Only a primary (or a lone devpid) runs this: a replica's log is its primary's,
and the primary delivers.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import treq.client
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent

from devpid.common.clock import iso_time
from devpid.common.pool import QuietPool
from devpid.private.database import PrivateDatabase
from devpid.private.events import Event
from devpid.private.indexconfig import shown_webhook
from devpid.webhooks.delivery import Request, Sender
from devpid.webhooks.events import classify, payload, target_url
from devpid.webhooks.queue import (
    FAILED,
    Claimed,
    NewDelivery,
    QueueError,
    RetryPolicy,
    WebhookQueue,
    delivery_id,
)
from devpid.webhooks.signing import sign

#: Seconds between passes (new events are also picked up at once by this process).
INTERVAL = 1.0
#: Deliveries one process sends at once (to different URLs: one URL has one at a time).
MAX_IN_FLIGHT = 8
#: Events read from the log per queueing transaction.
BATCH = 500
#: A claim lasts twice the POST's timeout and this much more: the POST is over by then
#: (it is cut off at its timeout), and another process may take over a dead one's claim.
LEASE_MARGIN = 5.0
#: Finished deliveries are kept this long (for a look at the queue), then pruned.
KEEP_FOR = 7 * 24 * 3600.0
PRUNE_EVERY = 3600.0


@attrs.define(slots=False)
class WebhookService(Service):
    queue: WebhookQueue
    database: PrivateDatabase
    sender: Sender
    clock: IReactorTime
    policy: RetryPolicy = attrs.field(factory=RetryPolicy)
    wall_clock: Callable[[], float] = time.time
    interval: float = INTERVAL
    max_in_flight: int = MAX_IN_FLIGHT
    #: Who holds a claim: this process, for as long as it runs.
    owner: str = attrs.field(factory=lambda: uuid.uuid4().hex)
    _in_flight: dict[int, Deferred[None]] = attrs.field(factory=dict)
    _timer: LoopingCall | None = None
    _soon: IDelayedCall | None = None
    _pruned_at: float = 0.0
    _stopping: bool = False
    log = Logger()

    @property
    def lease(self) -> float:
        return 2 * self.sender.timeout + LEASE_MARGIN

    # -- the service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.database.catch_up()
        self.queue.open(self.database.serial)
        last = self.queue.last_serial()
        if last > self.database.serial:
            # the log went back (a restored backup): queue what comes from now on
            self.log.warn(
                "webhook queue was at serial {last}, the event log is at {serial}: "
                "queueing from {serial}",
                last=last,
                serial=self.database.serial,
            )
            self.queue.restart_at(self.database.serial)
        self.database.listeners.append(self._heard)
        self._timer = LoopingCall(self.tick)
        self._timer.clock = self.clock
        self._timer.start(self.interval, now=True)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        self._stopping = True
        if self._heard in self.database.listeners:
            self.database.listeners.remove(self._heard)
        if self._timer is not None and self._timer.running:
            self._timer.stop()
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        # POSTs still waiting for an answer are cut off; their deliveries go back to the
        # queue unsent (see _deliver) for another worker or the next start
        sending = list(self._in_flight.values())
        for delivery in sending:
            delivery.cancel()
        done: Deferred[Any] = DeferredList(sending)
        done.addBoth(lambda _: self.queue.close())
        return done

    def _heard(self, event: Event) -> None:
        self.kick()

    def kick(self) -> None:
        """A pass soon (once, however many ask)."""
        if self._stopping or (self._soon is not None and self._soon.active()):
            return
        self._soon = self.clock.callLater(0, self.tick)

    # -- a pass -----------------------------------------------------------------------

    def tick(self) -> None:
        if self._stopping:
            return
        try:
            self.fill()
            self.send_due()
            self.prune()
        except QueueError as e:
            self.log.error("webhooks: {error}", error=str(e))
        except Exception:
            self.log.failure("webhooks: a pass failed")

    def fill(self) -> int:
        """Queue the webhook events of the log the queue has not seen; how many deliveries."""
        self.database.catch_up()
        # never past what this process applied: the index configurations are as new
        upto = self.database.serial
        if self.queue.last_serial() >= upto:
            return 0
        more = False

        def read(last: int) -> tuple[list[NewDelivery], int]:
            nonlocal more
            events = [e for e in self.database.events_since(last, BATCH) if e.serial <= upto]
            more = len(events) == BATCH
            deliveries = [d for event in events for d in self._deliveries_or_none(event)]
            return deliveries, events[-1].serial if events else last

        queued = self.queue.enqueue(read, self.wall_clock())
        if more:
            self.kick()
        return queued

    def _deliveries_or_none(self, event: Event) -> Iterable[NewDelivery]:
        try:
            return self.deliveries_of(event)
        except Exception:
            # one event that cannot be told must not hold back every later one
            self.log.failure("webhooks: event {serial} skipped", serial=event.serial)
            return []

    def deliveries_of(self, event: Event) -> Iterable[NewDelivery]:
        """One delivery per URL of the index a webhook event happened on."""
        stage_event = classify(event)
        if stage_event is None:
            return []
        config = self.database.records.of("index").get(stage_event.index) or {}
        urls = [url for url in config.get("webhooks") or () if isinstance(url, str)]
        if not urls:
            return []
        body = json.dumps(payload(stage_event, event, self.database.uuid)).encode("utf-8")
        secret = config.get("webhook_secret")
        signature = sign(body, secret) if isinstance(secret, str) and secret else None
        return [
            NewDelivery(
                delivery_id(self.database.uuid, event.serial, stage_event.index, url),
                event.serial,
                stage_event.event,
                stage_event.index,
                url,
                target_url(url, stage_event),
                body,
                signature,
            )
            for url in urls
        ]

    def send_due(self) -> int:
        """Claim what is due (up to the free slots) and start sending it."""
        free = self.max_in_flight - len(self._in_flight)
        claimed = self.queue.claim(self.owner, self.wall_clock(), self.lease, free)
        for delivery in claimed:
            if not self._still_wanted(delivery):
                continue
            sending = Deferred.fromCoroutine(self._deliver(delivery))
            self._in_flight[delivery.id] = sending
            sending.addBoth(self._sent, delivery.id)
        return len(claimed)

    def _still_wanted(self, claimed: Claimed) -> bool:
        """A URL taken out of its index (or an index deleted) takes its queued deliveries
        along: removing a broken URL stops its retries."""
        config = self.database.records.of("index").get(claimed.index) or {}
        if claimed.target in (config.get("webhooks") or ()):
            return True
        reason = "the webhook was removed from the index"
        if self.queue.cancel(claimed, self.owner, self.wall_clock(), reason):
            self.log.info(
                "webhook {event} (serial {serial}) to {url} dropped: {reason}",
                event=claimed.event,
                serial=claimed.serial,
                url=shown_webhook(claimed.target),
                reason=reason,
            )
        return False

    def _sent(self, result: object, key: int) -> None:
        self._in_flight.pop(key, None)
        if isinstance(result, Failure):
            self.log.failure("webhooks: a delivery failed", result)

    async def _deliver(self, claimed: Claimed) -> None:
        request = Request(
            claimed.url,
            claimed.body,
            claimed.event,
            claimed.delivery,
            claimed.serial,
            claimed.signature,
        )
        outcome = await self.sender.send(request)
        shown = shown_webhook(claimed.target)
        try:
            now = self.wall_clock()
            if self._stopping and not outcome.ok:
                # cut off by stopService, not the receiver's fault: no attempt counted
                self.queue.release(claimed, self.owner)
                self.log.info(
                    "webhook {event} (serial {serial}) to {url} left queued: stopping",
                    event=claimed.event,
                    serial=claimed.serial,
                    url=shown,
                )
                return
            if outcome.ok:
                if self.queue.delivered(claimed, self.owner, now):
                    self.log.info(
                        "webhook {event} (serial {serial}) delivered to {url}: {status}",
                        event=claimed.event,
                        serial=claimed.serial,
                        url=shown,
                        status=outcome.status,
                    )
            else:
                state = self.queue.attempt_failed(
                    claimed, self.owner, now, outcome.error, self.policy
                )
                failed = "gave up" if state == FAILED else "will retry"
                self.log.warn(
                    "webhook {event} (serial {serial}) to {url} failed ({attempt}): {error}; "
                    "{failed}",
                    event=claimed.event,
                    serial=claimed.serial,
                    url=shown,
                    attempt=claimed.attempts + 1,
                    error=outcome.error,
                    failed=failed,
                )
        except QueueError as e:
            self.log.error("webhooks: {error}", error=str(e))
        # the next delivery of this URL may go now
        self.kick()

    def prune(self) -> None:
        now = self.wall_clock()
        if now - self._pruned_at < PRUNE_EVERY:
            return
        self._pruned_at = now
        gone = self.queue.prune(now - KEEP_FOR)
        if gone:
            self.log.info("webhooks: pruned {count} finished deliveries", count=gone)

    # -- /+status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``/+status``'s ``webhooks``: the queue's figures (shared by every process)."""
        try:
            figures = self.queue.figures()
        except QueueError as e:
            return {"error": str(e)}
        now = self.wall_clock()
        oldest = figures["oldest_pending_at"]
        last_error = figures["last_error"]
        if last_error is not None:
            last_error = {
                "at": iso_time(last_error.get("at")),
                "url": shown_webhook(str(last_error.get("url", ""))),
                "error": last_error.get("error"),
            }
        return {
            "pending": figures["pending"],
            "delivered": figures["delivered"],
            "failed": figures["failed"],
            "attempts_failed": figures["attempts_failed"],
            "in_flight": len(self._in_flight),
            "oldest_pending_age": None if oldest is None else round(max(0, now - oldest), 3),
            "queued_up_to_serial": figures["last_serial"],
            "last_delivered_at": iso_time(figures["last_delivered_at"]),
            "last_error": last_error,
        }


def make_webhook_service(
    database: PrivateDatabase,
    queue: WebhookQueue,
    reactor: Any,
    timeout: float,
    policy: RetryPolicy,
) -> WebhookService:
    """The service with its own HTTP client: a new connection per POST (receivers come
    and go; a kept-alive connection to one that restarted would cost an attempt)."""
    pool = QuietPool(reactor, persistent=False)
    agent = Agent(reactor, connectTimeout=timeout, pool=pool)
    sender = Sender(treq.client.HTTPClient(agent), reactor, timeout)
    return WebhookService(queue, database, sender, reactor, policy)
