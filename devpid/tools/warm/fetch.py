"""Fetch files from devpid to nowhere, a few at a time, counting and checking them.

Each file is one GET, its body read in 1 MiB chunks into a sha256 and dropped. What
devpid says in ``X-Devpid-Cache`` decides how it counts: ``miss`` is fetched now,
``hit`` was already there, no header means something served it from disk without
asking devpid's cache (nginx's ``X-Accel-Redirect`` or ``try_files``, or a private
file): already there too. A file fails with its reason: an HTTP status, a connection
error, a body shorter or longer than its Content-Length, a sha256 other than the
index's.
"""

from __future__ import annotations

import hashlib
import http.client
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import attrs

from devpid.tools.warm.http import CACHE_HEADER, CHUNK_SIZE, USER_AGENT, Origin, path_of
from devpid.tools.warm.progress import Progress
from devpid.tools.warm.summary import FileResult


@attrs.frozen
class Wanted:
    """A file to have in devpid's cache."""

    url: str
    filename: str
    sha256: str | None = None
    size: int | None = None


def fetch(wanted: Wanted, origin: Origin, timeout: float, progress: Progress) -> FileResult:
    """GET ``wanted`` from devpid, streamed to nowhere."""
    size, cache = 0, None

    def result(error: str | None = None) -> FileResult:
        return FileResult(wanted.filename, wanted.url, size, cache, error, "warm")

    connection = origin.connect(timeout)
    try:
        connection.request("GET", path_of(wanted.url), headers={"User-Agent": USER_AGENT})
        response = connection.getresponse()
        cache = response.getheader(CACHE_HEADER)
        if response.status != 200:
            return result(f"HTTP {response.status} {response.reason}")
        length_text = response.getheader("content-length")
        length = int(length_text) if length_text and length_text.isdigit() else None
        if wanted.size is None and length is not None:
            progress.expect_bytes(length)
        digest = hashlib.sha256()
        while chunk := response.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
            progress.advance_bytes(len(chunk))
    except (OSError, http.client.HTTPException) as e:
        detail = f": {e}" if str(e) else ""
        return result(f"cut off after {size} bytes ({e.__class__.__name__}{detail})")
    finally:
        connection.close()
    expected = length if length is not None else wanted.size
    if expected is not None and size != expected:
        return result(f"{size} bytes received, {expected} expected")
    if wanted.sha256 is not None and digest.hexdigest() != wanted.sha256.lower():
        return result(f"sha256 {digest.hexdigest()}, the index says {wanted.sha256}")
    return result()


def fetch_all(
    files: Iterable[Wanted],
    origin: Origin,
    *,
    jobs: int,
    timeout: float,
    progress: Progress,
    fetcher: Callable[[Wanted, Origin, float, Progress], FileResult] = fetch,
) -> Iterator[FileResult]:
    """Fetch ``files`` with ``jobs`` threads; results in the order of ``files``."""
    chosen = list(files)
    for wanted in chosen:
        progress.expect_file()
        if wanted.size is not None:
            progress.expect_bytes(wanted.size)

    def one(wanted: Wanted) -> FileResult:
        try:
            return fetcher(wanted, origin, timeout, progress)
        finally:
            progress.file_done()

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="devpid-warm") as pool:
        yield from pool.map(one, chosen)
