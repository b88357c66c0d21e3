"""``Offload``: what runs a blocking function in a thread and gives its result back.

``deferToThreadPool`` on the reactor's pool in the server; in tests with a memory
reactor, a function that runs it at once. Parsing big pages, argon2, archive checks,
fsyncs and doc zips go through it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

Offload = Callable[[Callable[[], Any]], Deferred[Any]]
