"""Offline, what is asked for but not cached: one warning line per request, counted in
``/+status`` and ``/+metrics``, so that an air-gapped site sees what to warm next."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from tests.fixtures.app import MemoryDevpid, populate


def offline_misses(app: MemoryDevpid) -> tuple[int, float]:
    status = json.loads(app.request("GET", "/+status").body)
    text = app.request("GET", "/+metrics").body.decode()
    metric = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "devpid_offline_misses_total"
    ]
    assert len(metric) == 1
    return status["counters"]["offline_misses"], metric[0]


def test_offline_misses_are_logged_and_counted(tmp_path: Path) -> None:
    serverdir = tmp_path / "serverdir"
    cached, gone = populate(
        serverdir, "demo", {"demo-1.0.tar.gz": b"one", "demo-2.0.tar.gz": b"two"}, {}
    )
    gone.disk.unlink()  # listed upstream, not here
    app = MemoryDevpid.start(serverdir, offline="1")
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        # A cached page is no miss, though it hides the file that is not here.
        page = app.request("GET", "/root/pypi/%2Bsimple/demo/")
        assert page.code == 200
        assert b"demo-1.0.tar.gz" in page.body and b"demo-2.0.tar.gz" not in page.body
        assert app.request("GET", cached.path.replace("/+f/", "/%2Bf/")).body == b"one"
        assert offline_misses(app) == (0, 0)
        # pip's spelling: "+" percent-encoded.
        assert app.request("GET", "/root/pypi/%2Bsimple/nothere/").code == 404
        assert app.request("GET", gone.path.replace("/+f/", "/%2Bf/")).code == 404
        assert app.request("GET", "/root/pypi/+f/abc/0123456789abc/ghost-1.0.tar.gz").code == 404
        assert offline_misses(app) == (3, 3)
    finally:
        globalLogPublisher.removeObserver(events.append)
        app.stop()
    misses = [
        formatEvent(e)
        for e in events
        if e.get("log_level") == LogLevel.warn and formatEvent(e).startswith("offline miss")
    ]
    assert misses == [
        "offline miss: project nothere is not cached",
        "offline miss: demo-2.0.tar.gz (project demo) is not cached",
        "offline miss: project ghost is not cached",
    ]
