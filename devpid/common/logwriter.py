"""Log files written in batches: one write and one flush per turn of the reactor.

twisted.logger's ``FileLogObserver`` (what ``twistd --logfile``, ``twistd -n``
and ``twist`` log through, text or JSON) writes and flushes its file once per
event. Every request is an access-log event, so under load that is a
``write(2)`` per request, and the stock text formatter renders the timestamp
(time zone lookup, ``strftime``) and runs the format string through
``string.Formatter`` for each line: together about a fifth of the CPU a cached
page costs (docs/performance.md).

``install`` keeps the observers the process was started with and changes how
they write: each ``FileLogObserver``'s file becomes a ``BatchedFile``, whose
``flush`` only schedules one real write of everything buffered at the end of
the reactor's turn (``FLUSH_DELAY``), and the stock text formatter
is replaced by ``ClassicTextFormat``, which writes the same text faster. Lines
keep their order. Warnings and worse are written at once; so is everything
when the buffer passes ``MAX_BUFFERED`` bytes. When the reactor begins to stop
(SIGTERM, Ctrl-C, a start-up failure) what is buffered is written and the files
go back to writing each line as it comes, so nothing logged during or after
shutdown waits for a timer that will not run.
"""

from __future__ import annotations

import atexit
import contextlib
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import IO, Any

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEventAsClassicLogText,
    globalLogPublisher,
)
from twisted.python._tzhelper import FixedOffsetTimeZone
from zope.interface import implementer

#: How long a line may wait in the buffer. 0: until the end of the reactor's turn,
#: which under load has handled many requests (one write for all their lines); and
#: since a response's bytes leave in a later turn, its line is written before them.
FLUSH_DELAY = 0.0
#: Written at once past this many buffered characters (or bytes), whatever the timer.
MAX_BUFFERED = 256 * 1024
#: Events at these levels are written at once (a crash's last words).
URGENT_LEVELS = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})
#: Twisted's default ``timeFormat`` (``twisted.logger.timeFormatRFC3339``).
RFC3339 = "%Y-%m-%dT%H:%M:%S%z"
_STOCK_TEXT_FORMATTER = "textFileLogObserver.<locals>.formatEvent"


@attrs.define(eq=False)
class BatchedFile:
    """A file whose ``flush`` writes later, all at once (see the module's docstring).

    ``write`` only buffers; ``flush`` schedules ``flush_now`` ``delay`` seconds on.
    ``direct``: write and flush each time, as the wrapped file would (once stopping).
    """

    out: IO[Any]
    clock: IReactorTime
    delay: float = FLUSH_DELAY
    max_buffered: int = MAX_BUFFERED
    direct: bool = False
    _pending: list[Any] = attrs.field(factory=list)
    _size: int = 0
    _timer: IDelayedCall | None = None

    def write(self, data: Any) -> None:
        if self.direct:
            self.out.write(data)
            return
        self._pending.append(data)
        self._size += len(data)

    def flush(self) -> None:
        if self.direct or self._size >= self.max_buffered:
            self.flush_now()
        elif self._pending and self._timer is None:
            self._timer = self.clock.callLater(self.delay, self._timed_flush)

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush_now()

    def flush_now(self) -> None:
        """Write and flush everything buffered, now."""
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._pending:
            pending, self._pending, self._size = self._pending, [], 0
            joined = pending[0][:0].join(pending)  # str or bytes, as they came
            # A full disk or a closed pipe: lost as the per-line write would lose it,
            # never raised into whatever logged (it may be the reactor's own loop).
            with contextlib.suppress(Exception):
                self.out.write(joined)
        with contextlib.suppress(Exception):
            self.out.flush()

    def stop_batching(self) -> None:
        """Write what is buffered; from now on every line is written as it comes."""
        self.flush_now()
        self.direct = True

    @property
    def buffered(self) -> int:
        """Characters (or bytes) waiting to be written."""
        return self._size


@attrs.define
class ClassicTextFormat:
    """What ``textFileLogObserver``'s formatter writes, computed faster.

    ``formatEventAsClassicLogText`` with a ``formatTime`` of ``time_format``;
    the timestamp is made once per second (the format has no finer field), and a
    format string of plain ``{name}`` fields is filled by ``str.format_map``.
    Anything else (a traceback, a flattened event, ``{call()}`` fields, an error)
    goes to Twisted's own formatter.
    """

    time_format: str | None = RFC3339
    _second: int = -1
    _stamp: str = ""

    def __call__(self, event: LogEvent) -> str | None:
        fmt = event.get("log_format")
        if type(fmt) is not str or "(" in fmt or "log_failure" in event or "log_flattened" in event:
            return self._twisted(event)
        try:
            text = fmt.format_map(event)
        except Exception:
            return self._twisted(event)
        if not text:
            return None
        system = event.get("log_system")
        if system is None:
            level = event.get("log_level")
            system = f"{event.get('log_namespace', '-')}#{'-' if level is None else level.name}"
        elif type(system) is not str:
            return self._twisted(event)
        line = f"{self._time(event.get('log_time'))} [{system}] {text}"
        return line.replace("\n", "\n\t") + "\n"

    def _twisted(self, event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=self._time)

    def _time(self, when: float | None) -> str:
        if self.time_format is None or when is None:
            return "-"
        second = int(when)
        if second != self._second or "%f" in self.time_format:
            zone = FixedOffsetTimeZone.fromLocalTimeStamp(when)
            self._stamp = str(datetime.fromtimestamp(when, zone).strftime(self.time_format))
            self._second = second
        return self._stamp


@implementer(ILogObserver)
@attrs.define(eq=False)
class UrgentFlush:
    """Writes the batched files at once after an event at one of ``URGENT_LEVELS``.

    Added to the publisher after the file observers, so the event is in the buffers.
    """

    files: list[BatchedFile]

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_level") in URGENT_LEVELS:
            for batched in self.files:
                batched.flush_now()


def _file_observers(observers: Iterable[Any]) -> Iterable[FileLogObserver]:
    for observer in observers:
        if isinstance(observer, FilteringLogObserver):  # how ``twist`` wraps its file
            observer = getattr(observer, "_observer", None)
        if isinstance(observer, FileLogObserver):
            yield observer


def _time_format_of(formatter: Callable[..., Any]) -> tuple[bool, str | None]:
    """Whether ``formatter`` is textFileLogObserver's own, and its ``timeFormat``."""
    if getattr(formatter, "__qualname__", "") != _STOCK_TEXT_FORMATTER:
        return False, None
    names = formatter.__code__.co_freevars
    cells = formatter.__closure__ or ()
    values = {name: cell.cell_contents for name, cell in zip(names, cells, strict=False)}
    time_format = values.get("timeFormat", RFC3339)
    return True, time_format if isinstance(time_format, str) or time_format is None else RFC3339


@attrs.define
class Installed:
    """What ``install`` changed, to say at start-up and to undo in tests."""

    files: list[BatchedFile]
    faster_text: int
    publisher: LogPublisher
    urgent: UrgentFlush | None = None

    def stop_batching(self) -> None:
        for batched in self.files:
            batched.stop_batching()

    def uninstall(self) -> None:
        """Back to writing each line as it comes; the observers keep the faster formatter."""
        self.stop_batching()
        if self.urgent is not None:
            self.publisher.removeObserver(self.urgent)


def install(
    reactor: Any,
    publisher: LogPublisher = globalLogPublisher,
    delay: float = FLUSH_DELAY,
    at_exit: bool = True,
) -> Installed:
    """Batch the writes of every file observer of ``publisher`` (see the module's docstring).

    ``reactor`` runs the flush timer; at its shutdown the files are written and
    batching ends. Observers that are not ``FileLogObserver``s (syslog, a
    custom one) are left as they are.
    """
    files: list[BatchedFile] = []
    faster = 0
    for observer in _file_observers(list(getattr(publisher, "_observers", ()))):
        out = getattr(observer, "_outFile", None)
        if out is None or isinstance(out, BatchedFile):
            continue
        batched = BatchedFile(out, reactor, delay)
        observer._outFile = batched  # type: ignore[assignment]
        files.append(batched)
        stock, time_format = _time_format_of(observer.formatEvent)
        if stock:
            observer.formatEvent = ClassicTextFormat(time_format)
            faster += 1
    installed = Installed(files, faster, publisher)
    if files:
        installed.urgent = UrgentFlush(files)
        publisher.addObserver(installed.urgent)
        # At the start of the shutdown, not its end: a start-up failure's ``os._exit``
        # runs "after" it, and the drain's lines are few.
        reactor.addSystemEventTrigger("before", "shutdown", installed.stop_batching)
        if at_exit:  # an exit without the reactor's shutdown
            atexit.register(installed.stop_batching)
    return installed


@attrs.define(slots=False)
class BatchedLogs(Service):
    """``install`` once the reactor runs: by then twistd (or ``twist``) has begun logging."""

    reactor: Any
    delay: float = FLUSH_DELAY
    publisher: LogPublisher = globalLogPublisher
    at_exit: bool = True
    installed: Installed | None = None
    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.reactor.callWhenRunning(self._install)

    def _install(self) -> None:
        self.installed = install(self.reactor, self.publisher, self.delay, self.at_exit)
        self.log.info(
            "log files written {when} ({files} batched, {faster} with the faster text)",
            when=f"every {self.delay * 1000:g} ms" if self.delay else "once per reactor turn",
            files=len(self.installed.files),
            faster=self.installed.faster_text,
        )
