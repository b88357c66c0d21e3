"""Webhooks (issue 16): what they cost an upload, how soon they arrive, how fast a backlog drains.

    python bench/webhook_bench.py            # 200 uploads per devpid, a backlog of 100 uploads
    python bench/webhook_bench.py --quick    # 50 and 30: about 20 s

Two ``twistd -n devpid`` on 127.0.0.1, each with its own serverdir: one stage
without webhooks, one whose stage has 3 webhook URLs (signed) on a real local
receiver (tests/fixtures/webhook_receiver.py, which fsyncs a line per POST).

**(a) Uploads.** Small wheels uploaded one after another to each devpid, in
alternating rounds of 10. Printed: each one's upload p50 and p99 and the
ratio with/without webhooks (the queueing and sending run on the same reactor).

**(b) Delivery latency.** For the devpid with webhooks, from the upload's answer
until the receiver logged the POST, for each of the 3 URLs: p50, p99, worst.

**(c) Backlog.** The receiver stops; uploads go on (3 deliveries each, all
queued); the receiver starts again. Printed: seconds until the queue is empty,
and deliveries per second.

Every process started is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for devpid, tests.fixtures

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.ports import free_consecutive_ports, wait_until
from tests.test_nginx import basic_auth, build_wheel, create_stage, json_call, upload
from tests.test_webhooks import OPTIONS, Receiver

NO_UPSTREAM = "http://127.0.0.1:9/simple/"
USER, INDEX, PROJECT = "alice", "alice/dev", "benchpkg"
URLS = 3


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_upload(devpid: DevpidProcess, wheels: Path, version: str) -> tuple[float, float]:
    """Seconds the upload took, and the wall time of its answer."""
    wheel = build_wheel(wheels, PROJECT, version)
    started = time.monotonic()
    answer = upload(f"{devpid.url}/{INDEX}/", wheel, USER, PROJECT, version)
    took = time.monotonic() - started
    assert answer.status == 200, answer
    return took, time.time()


def pending(devpid: DevpidProcess) -> int:
    return int(devpid.status()["webhooks"]["pending"])


def delivered(devpid: DevpidProcess) -> int:
    return int(devpid.status()["webhooks"]["delivered"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--uploads", type=int)
    parser.add_argument("--backlog", type=int)
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    uploads = args.uploads or (50 if args.quick else 200)
    backlog = args.backlog or (30 if args.quick else 100)
    work = Path(tempfile.mkdtemp(prefix="devpid-bench-webhooks-"))
    receiver = Receiver(free_consecutive_ports(1), work / "received.jsonl")
    started: list[DevpidProcess] = []
    try:
        receiver.start()
        plain = DevpidProcess.start(work / "plain", NO_UPSTREAM, *OPTIONS, name="plain")
        started.append(plain)
        hooked = DevpidProcess.start(work / "hooked", NO_UPSTREAM, *OPTIONS, name="hooked")
        started.append(hooked)
        base = f"http://127.0.0.1:{receiver.port}/ok"
        for devpid in started:
            create_stage(devpid.url, USER)
        body = {"webhooks": [f"{base}/{n}" for n in range(URLS)], "webhook_secret": "b" * 32}
        patched = json_call(hooked.url, "PATCH", f"/{INDEX}", body, Authorization=basic_auth(USER))
        assert patched.status == 200, patched
        wheels = work / "wheels"
        wheels.mkdir()
        took: dict[str, list[float]] = {"plain": [], "hooked": []}
        answered: dict[str, float] = {}
        for first in range(0, uploads, 10):
            for name, devpid in (("plain", plain), ("hooked", hooked)):
                for n in range(first, min(first + 10, uploads)):
                    seconds, at = timed_upload(devpid, wheels, f"1.{n}")
                    took[name].append(seconds)
                    if name == "hooked":
                        answered[f"1.{n}"] = at
        assert wait_until(lambda: delivered(hooked) == uploads * URLS, 120)
        latencies = []
        for record in receiver.records():
            version = json.loads(record["body"])["version"]
            latencies.append(record["at"] - answered[version])
        assert len(latencies) == uploads * URLS, len(latencies)

        receiver.stop()
        for n in range(backlog):
            timed_upload(hooked, wheels, f"2.{n}")
        assert wait_until(lambda: pending(hooked) == backlog * URLS, 60)
        receiver.start()
        drain_started = time.monotonic()
        total = (uploads + backlog) * URLS
        assert wait_until(lambda: delivered(hooked) == total, 300, interval=0.02)
        drained = time.monotonic() - drain_started

        print(f"webhooks bench: {uploads} uploads per devpid, {URLS} URLs, backlog {backlog}")
        print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}")
        for name in ("plain", "hooked"):
            values = took[name]
            p50, p99 = statistics.median(values) * 1000, percentile(values, 0.99) * 1000
            print(f"upload, {name:16}{p50:10.1f}{p99:10.1f}")
        ratio = statistics.median(took["hooked"]) / statistics.median(took["plain"])
        print(f"upload p50 with/without webhooks: {ratio:.2f}")
        print(
            f"delivery latency: p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.1f} ms, "
            f"worst {max(latencies) * 1000:.1f} ms"
        )
        print(
            f"backlog of {backlog * URLS} deliveries drained in {drained:.2f} s "
            f"({backlog * URLS / drained:.0f}/s; the first retry waits up to "
            "--webhook-backoff-max, 0.5 s here)"
        )
    finally:
        for devpid in started:
            devpid.stop()
        receiver.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
