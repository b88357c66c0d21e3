"""Checking a download's bytes (sha256 and length) and committing the file to the cache.

Nothing reaches the cache, nor its last byte a client, until the bytes on
disk are the ones received, as many as announced, with the hash the index gave.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from devpid.mirror.tee.state import DownloadState

log = Logger()


def publish_verified_or_fail(download: DownloadState) -> None:
    """Commit the download's file if its bytes are right, else fail it; either way it ends."""
    problem = _problem(download)
    if problem:
        download.fail(problem)
        return
    assert download.partial_path is not None
    try:
        # The temporary file stays open (and flock-ed) until it is in place.
        download.files.commit(download.partial_path, download.spec.final_path)
    except OSError as e:
        download.fail(f"cannot commit to the cache: {e.strerror}")
        return
    download.state = "verified"
    download.committed_here = True
    download.releasable = download.received
    spec = download.spec
    log.info(
        "upstream GET {url} -> 200 {size} bytes in {seconds:.3f}s, verified {check}",
        url=spec.url,
        size=download.received,
        seconds=download.clock.seconds() - download.started_at,
        check="sha256+length" if spec.sha256 else "length only (no hash upstream)",
    )
    download.headers_known()
    download.finish()


def _problem(download: DownloadState) -> str | None:
    """Why the bytes received are not the file to commit; None when they are.

    Needs the length: what the temporary file holds (while this process
    writes it) must be what was received, so a second writer shows, and
    that must be the total announced, when one was.
    """
    url, received, total = download.spec.url, download.received, download.total
    if download.fd is not None:
        on_disk = os.fstat(download.fd).st_size
        if on_disk != received:
            return f"the temporary file of {url} holds {on_disk} bytes, not the {received} received"
    if total is not None and received != total:
        return f"got {received} of {total} bytes from {url}"
    digest = download.hasher.hexdigest()
    sha256 = download.spec.sha256
    if sha256 is not None and digest != sha256:
        return f"sha256 mismatch for {url}: got {digest}, index says {sha256}"
    return None
