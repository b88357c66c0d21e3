"""The progress bars of ``devpid warm``: files and bytes, fed from several threads.

Totals grow as they become known (a resolution's files, a response's
Content-Length), so the bars are right by the end and honest on the way. One lock
guards both bars: tqdm's own lock guards the display, not the counts.
"""

from __future__ import annotations

import threading
from typing import NoReturn, TextIO

import attrs
from tqdm import tqdm


@attrs.define
class Progress:
    """Two bars on ``stream``, or nothing at all when not ``enabled``."""

    enabled: bool
    stream: TextIO
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _files: tqdm[NoReturn] = attrs.field(init=False)
    _bytes: tqdm[NoReturn] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        disable = not self.enabled
        self._files = tqdm(
            total=0,
            desc="files",
            unit="file",
            position=0,
            file=self.stream,
            disable=disable,
            dynamic_ncols=True,
        )
        self._bytes = tqdm(
            total=0,
            desc="bytes",
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            position=1,
            file=self.stream,
            disable=disable,
            dynamic_ncols=True,
        )

    def status(self, text: str) -> None:
        """What is happening now (resolving for a target, reading pages)."""
        with self._lock:
            self._files.set_postfix_str(text, refresh=True)

    def expect_file(self) -> None:
        with self._lock:
            self._files.total = (self._files.total or 0) + 1
            self._files.refresh()

    def expect_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes.total = (self._bytes.total or 0) + count
            self._bytes.refresh()

    def advance_bytes(self, count: int) -> None:
        with self._lock:
            self._bytes.update(count)

    def file_done(self) -> None:
        with self._lock:
            self._files.update(1)

    def close(self) -> None:
        with self._lock:
            self._files.set_postfix_str("", refresh=False)
            self._bytes.close()
            self._files.close()
