"""The p99 work, in memory: batched log files, the faster text format, the frozen GC."""

from __future__ import annotations

import gc
import io
from typing import Any
from unittest.mock import Mock

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    formatEventAsClassicLogText,
    formatTime,
    jsonFileLogObserver,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from devpid.common.gctune import GcPauses, GcTuning, freeze_start_up
from devpid.common.logwriter import (
    FLUSH_DELAY,
    BatchedFile,
    BatchedLogs,
    ClassicTextFormat,
    install,
)
from devpid.ops.metrics import DevpidCollector
from devpid.ops.requests import RequestMetrics

WHEN = 1_764_000_000.25


class Only:
    """A registry collector of just the GC families."""

    def __init__(self, collector: DevpidCollector) -> None:
        self.collector = collector

    def collect(self) -> Any:
        return self.collector._gc()


class CountingFile(io.StringIO):
    """A text file that counts the writes reaching it."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def test_lines_wait_for_the_timer_then_arrive_together_in_order() -> None:
    out, clock = CountingFile(), Clock()
    batched = BatchedFile(out, clock)
    for n in range(100):
        batched.write(f"line {n}\n")
        batched.flush()
    assert out.getvalue() == ""
    assert len(clock.getDelayedCalls()) == 1  # one timer for the whole batch
    clock.advance(FLUSH_DELAY)
    assert out.getvalue() == "".join(f"line {n}\n" for n in range(100))
    assert out.writes == 1
    assert batched.buffered == 0
    batched.write("later\n")
    batched.flush()
    clock.advance(FLUSH_DELAY)
    assert out.getvalue().endswith("line 99\nlater\n")


def test_a_full_buffer_is_written_at_once() -> None:
    out, clock = io.StringIO(), Clock()
    batched = BatchedFile(out, clock, max_buffered=10)
    batched.write("0123456789ab\n")
    batched.flush()
    assert out.getvalue() == "0123456789ab\n"
    assert not clock.getDelayedCalls()


def test_bytes_are_batched_as_bytes() -> None:
    out, clock = io.BytesIO(), Clock()
    batched = BatchedFile(out, clock)
    batched.write(b"a\n")
    batched.write(b"b\n")
    batched.flush_now()
    assert out.getvalue() == b"a\nb\n"


def test_after_stop_batching_every_line_is_written_as_it_comes() -> None:
    out, clock = io.StringIO(), Clock()
    batched = BatchedFile(out, clock)
    batched.write("buffered\n")
    batched.flush()
    batched.stop_batching()
    assert out.getvalue() == "buffered\n"
    assert not clock.getDelayedCalls()  # the timer went with it
    batched.write("direct\n")
    batched.flush()
    assert out.getvalue() == "buffered\ndirect\n"


def test_a_broken_file_never_raises_into_the_logger() -> None:
    out, clock = io.StringIO(), Clock()
    batched = BatchedFile(out, clock)
    batched.write("lost\n")
    out.close()
    batched.flush_now()  # no exception: as if the per-line write had failed


def _events() -> list[dict[str, Any]]:
    base = {"log_time": WHEN, "log_level": LogLevel.info, "log_namespace": "devpid.x"}
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        failure = Failure()
    return [
        {**base, "log_format": "{line}", "line": '127.0.0.1 "GET /" 200 12 0.3ms "pip/24.0"'},
        {**base, "log_format": "{a} and {b!r} {c:>5}", "a": 1, "b": "two", "c": 3},
        {**base, "log_format": "{d[k]} {e.real}", "d": {"k": "v"}, "e": 4},
        {**base, "log_format": "two\nlines"},
        {**base, "log_format": "missing {nothing}"},
        {**base, "log_format": "a call {f()}", "f": lambda: "called"},
        {**base, "log_format": "positional {}"},
        {**base, "log_format": b"bytes {x}", "x": 1},
        {**base, "log_format": ""},
        {**base, "log_format": None},
        {**base, "log_format": "boom", "log_failure": failure},
        {**base, "log_format": "system", "log_system": "-"},
        {**base, "log_format": "system", "log_system": 42},
        {"log_format": "no level, no namespace", "log_time": WHEN},
        {"log_format": "no time", "log_level": LogLevel.warn},
        {**base, "log_format": "{x}", "x": "{not a field}"},
    ]


@pytest.mark.parametrize("event", _events())
@pytest.mark.parametrize("time_format", ["%Y-%m-%dT%H:%M:%S%z", "%H:%M:%S.%f", None])
def test_the_faster_format_writes_what_twisteds_writes(
    event: dict[str, Any], time_format: str | None
) -> None:
    expected = formatEventAsClassicLogText(event, lambda e: formatTime(e, time_format))
    fast = ClassicTextFormat(time_format)
    assert fast(event) == expected
    assert fast(dict(event)) == expected  # again, with the timestamp cached


def test_the_timestamp_follows_the_clock_second_by_second() -> None:
    fast = ClassicTextFormat()
    for when in (WHEN, WHEN + 0.5, WHEN + 1, WHEN + 3600.9):
        event = {"log_format": "x", "log_time": when, "log_namespace": "n"}
        assert fast(event) == formatEventAsClassicLogText(event)


def _publisher() -> tuple[LogPublisher, io.StringIO, io.StringIO, io.BytesIO]:
    text, filtered, as_json = io.StringIO(), io.StringIO(), io.BytesIO()
    publisher = LogPublisher()
    publisher.addObserver(textFileLogObserver(text))  # twistd's
    publisher.addObserver(  # twist's
        FilteringLogObserver(textFileLogObserver(filtered), [LogLevelFilterPredicate()])
    )
    publisher.addObserver(jsonFileLogObserver(io.TextIOWrapper(as_json, write_through=True)))
    return publisher, text, filtered, as_json


def test_install_batches_every_file_observer() -> None:
    publisher, text, filtered, as_json = _publisher()
    reactor = MemoryReactorClock()
    installed = install(reactor, publisher, at_exit=False)
    assert len(installed.files) == 3
    assert installed.faster_text == 2  # the JSON observer keeps its own formatter
    for n in range(20):
        publisher(
            {"log_format": "request {n}", "n": n, "log_level": LogLevel.info, "log_namespace": "t"}
        )
    assert text.getvalue() == filtered.getvalue() == "" and as_json.getvalue() == b""
    reactor.advance(FLUSH_DELAY)
    lines = text.getvalue().splitlines()
    assert [line.rsplit(" ", 2)[-1] for line in lines] == [str(n) for n in range(20)]
    assert filtered.getvalue() == text.getvalue()
    assert as_json.getvalue().count(b"request {n}") == 20


def test_a_warning_is_written_at_once_with_what_came_before() -> None:
    publisher, text, _, _ = _publisher()
    install(MemoryReactorClock(), publisher, at_exit=False)
    publisher({"log_format": "an access line", "log_level": LogLevel.info})
    publisher({"log_format": "cannot start", "log_level": LogLevel.critical})
    assert "an access line" in text.getvalue()
    assert "cannot start" in text.getvalue()


def test_the_reactors_shutdown_writes_everything_and_ends_batching() -> None:
    publisher, text, _, _ = _publisher()
    reactor = MemoryReactorClock()
    install(reactor, publisher, at_exit=False)
    publisher({"log_format": "last request", "log_level": LogLevel.info})
    [(trigger, args, kwargs)] = reactor.triggers["before"]["shutdown"]
    trigger(*args, **kwargs)
    assert "last request" in text.getvalue()
    publisher({"log_format": "Server Shut Down.", "log_level": LogLevel.info})
    assert "Server Shut Down." in text.getvalue()  # no timer needed any more


def test_install_twice_batches_once() -> None:
    publisher, _, _, _ = _publisher()
    reactor = MemoryReactorClock()
    install(reactor, publisher, at_exit=False)
    assert install(reactor, publisher, at_exit=False).files == []


def test_other_observers_are_left_alone() -> None:
    publisher = LogPublisher()
    seen: list[dict[str, Any]] = []
    publisher.addObserver(seen.append)
    assert install(MemoryReactorClock(), publisher, at_exit=False).files == []
    publisher({"log_format": "x"})
    assert len(seen) == 1


def test_batched_logs_installs_once_the_reactor_runs() -> None:
    publisher, text, _, _ = _publisher()
    reactor = MemoryReactorClock()
    service = BatchedLogs(reactor, publisher=publisher, at_exit=False)
    service.startService()
    assert service.installed is None
    reactor.run()  # MemoryReactor runs what waited for it
    assert service.installed is not None and len(service.installed.files) == 3
    publisher({"log_format": "batched", "log_level": LogLevel.info, "log_namespace": "t"})
    assert text.getvalue() == ""
    reactor.advance(FLUSH_DELAY)
    assert "batched" in text.getvalue()


@pytest.fixture
def gc_restored() -> Any:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_gc_tuning_freezes_start_up_once_running_and_times_collections(
    gc_restored: None,
) -> None:
    reactor = MemoryReactorClock()
    tuning = GcTuning(reactor, thresholds=(900, 11, 12))
    tuning.startService()
    try:
        assert gc.get_threshold() == (900, 11, 12)
        assert gc.get_freeze_count() == 0
        reactor.run()
        assert gc.get_freeze_count() > 1000  # this test process's modules, at least
        before = tuning.pauses.counts[2]
        gc.collect()
        assert tuning.pauses.counts[2] == before + 1
        assert tuning.pauses.seconds[2] > 0
        assert tuning.pauses.longest[2] > 0
    finally:
        tuning.stopService()
    assert tuning.pauses not in gc.callbacks
    gc.collect()
    assert tuning.pauses.counts[2] == before + 1  # no longer counting


def test_a_full_collection_walks_only_what_came_after_the_freeze(gc_restored: None) -> None:
    start_up = [[n] for n in range(20_000)]  # noqa: F841 (kept alive: start-up's objects)
    frozen = freeze_start_up()
    assert frozen >= 20_000
    assert len(gc.get_objects()) < frozen  # the collector no longer sees them


def test_gc_pauses_are_in_the_metrics() -> None:
    collector = DevpidCollector(Mock(), RequestMetrics.with_clock(Clock()))
    assert list(collector._gc()) == []
    collector.gc = GcPauses(
        counts=[5, 2, 1], seconds=[0.01, 0.002, 0.03], longest=[0.001, 0.001, 0.03]
    )
    registry = CollectorRegistry()
    registry.register(Only(collector))
    text = generate_latest(registry).decode()
    assert 'devpid_gc_collections_total{generation="2"} 1.0' in text
    assert 'devpid_gc_pause_seconds_total{generation="0"} 0.01' in text
    assert 'devpid_gc_longest_pause_seconds{generation="2"} 0.03' in text


def test_file_observers_keep_their_class() -> None:
    # install changes how an observer writes, not what it is: others may still look for it
    publisher, _, _, _ = _publisher()
    install(MemoryReactorClock(), publisher, at_exit=False)
    assert all(
        isinstance(getattr(o, "_observer", o), FileLogObserver)
        for o in publisher._observers
        if not callable(getattr(o, "files", None)) and hasattr(o, "_outFile")
    )
