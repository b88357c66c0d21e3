"""A real ``twistd -n devpid``: the batched access log loses no line, stopped or not."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fixtures.devpid_process import DevpidProcess, http_get
from tests.fixtures.upstream import UpstreamProcess

PIP_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1"
PAGE = "/root/pypi/+simple/devpid-demo-lib/"


def _burst(devpid: DevpidProcess, tag: str, count: int) -> None:
    """``count`` GETs of the cached page over 8 connections at once, each with its own query."""

    def get(n: int) -> int:
        return http_get(f"{devpid.url}{PAGE}?{tag}={n}", accept=PIP_ACCEPT).status

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(get, range(count))) == {200}


def _logged(devpid: DevpidProcess, tag: str) -> list[int]:
    return [
        int(n) for n in re.findall(rf'"GET {re.escape(PAGE)}\?{tag}=(\d+)" 200 ', devpid.log_text())
    ]


def test_every_request_of_a_burst_is_logged_in_batches_and_at_a_clean_stop(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    devpid = DevpidProcess.start(tmp_path / "serverdir", upstream.simple_url)
    try:
        assert http_get(devpid.url + PAGE, accept=PIP_ACCEPT).status == 200  # cached now
        text = devpid.log_text()
        assert "log files written once per reactor turn (1 batched, 1 with the faster text)" in text
        assert re.search(r"gc: \d+ start-up objects frozen", text)
        _burst(devpid, "running", 400)
        # each line is written at the end of its reactor turn, before its response left
        assert sorted(_logged(devpid, "running")) == list(range(400))
        # the lines are whole, one per request, in the classic format
        lines = [line for line in devpid.log_text().splitlines() if "?running=" in line]
        assert all(
            re.fullmatch(
                r"\S+ \[devpid\.http\.site\.DevpidSite#info\] 127\.0\.0\.1 "
                r'"GET \S+" 200 \d+ [\d.]+ms "Python-urllib/[\d.]+"',
                line,
            )
            for line in lines
        ), lines[:3]
        _burst(devpid, "stopping", 300)
    finally:
        assert devpid.stop(signal.SIGTERM) == 0
    assert sorted(_logged(devpid, "stopping")) == list(range(300))
    assert "Server Shut Down." in devpid.log_text()  # written after batching ended


def test_gc_metrics_of_a_real_process(devpid: DevpidProcess) -> None:
    text = devpid.get("/+metrics").body.decode()
    frozen_collection = re.search(r'devpid_gc_collections_total\{generation="2"\} (\S+)', text)
    assert frozen_collection is not None and float(frozen_collection.group(1)) >= 1
    assert "devpid_gc_pause_seconds_total" in text
