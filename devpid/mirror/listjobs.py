"""Running a project-list job (``devpid.simple.namejob``): in a child process, or inline.

A worker never parses, sorts, renders or gzips a 700,000-name list itself:
that would hold the GIL (and the reactor) for seconds and raise its peak RSS
by hundreds of MB. ``ProcessJobs`` starts ``python -m devpid.simple.namejob``
with the job on its stdin and reads the answer from its stdout; the reactor
only sees a few small reads. Tests with a memory reactor use ``inline_jobs``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from devpid.simple import namejob
from devpid.simple.namelist import NameListError

#: Runs one job (its JSON spec) and gives its answer back; fails with ``NameListError``.
Jobs = Callable[[dict[str, Any]], Deferred[dict[str, Any]]]


def inline_jobs(spec: dict[str, Any]) -> Deferred[dict[str, Any]]:
    """The job run here and now (a memory reactor has no processes)."""
    try:
        return succeed(namejob.run(spec))
    except (NameListError, OSError, ValueError, KeyError) as e:
        return fail(NameListError(str(e) or type(e).__name__))


class _JobProtocol(ProcessProtocol):
    def __init__(self, spec: bytes, done: Deferred[dict[str, Any]]) -> None:
        self.spec = spec
        self.done = done
        self.out: list[bytes] = []
        self.err: list[bytes] = []

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.spec)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out.append(data)

    def errReceived(self, data: bytes) -> None:
        if sum(map(len, self.err)) < 64 * 1024:
            self.err.append(data)

    def processEnded(self, reason: Failure) -> None:
        error = b"".join(self.err).decode("utf-8", "replace").strip()
        if reason.check(ProcessDone):
            try:
                answer = json.loads(b"".join(self.out))
            except ValueError:
                self.done.errback(NameListError("the list job answered no JSON"))
                return
            self.done.callback(answer)
            return
        code = getattr(reason.value, "exitCode", None)
        if code == 2 and error:
            self.done.errback(NameListError(error.splitlines()[-1]))
        else:
            last = error.splitlines()[-1] if error else str(reason.value)
            self.done.errback(NameListError(f"the list job failed ({code}): {last}"[:500]))


@attrs.define
class ProcessJobs:
    """Each job in a ``python -m devpid.simple.namejob`` child process."""

    #: The reactor (``IReactorProcess``).
    reactor: Any
    python: str = sys.executable

    def __call__(self, spec: dict[str, Any]) -> Deferred[dict[str, Any]]:
        done: Deferred[dict[str, Any]] = Deferred()
        env = dict(os.environ)
        # the child imports devpid from where this process does
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        protocol = _JobProtocol(json.dumps(spec).encode(), done)
        self.reactor.spawnProcess(
            protocol,
            self.python,
            [self.python, "-m", "devpid.simple.namejob"],
            env=env,
        )
        return done


__all__ = ["Jobs", "ProcessJobs", "inline_jobs"]
