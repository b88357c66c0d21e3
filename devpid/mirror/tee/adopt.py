"""Adopting the temporary file of a process that died mid-download, and resuming it.

A download that took the lock over from a dead owner continues the owner's
temporary file rather than fetching it all again: it renames the file to its
own name (only once no process holds its ``flock``), hashes the bytes already
there, and asks the upstream for the rest with a Range request. Clients that
followed the owner keep their offsets.
"""

from __future__ import annotations

import os
import re

from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.iweb import IResponse

from devpid.mirror.tee.peers import SharedDownloads
from devpid.mirror.tee.reader import settle_readers
from devpid.mirror.tee.state import DownloadState
from devpid.mirror.tee.verify import publish_verified_or_fail

#: Bytes hashed per reactor turn when adopting another process's temporary file.
ADOPT_HASH_STEP = 8 * 1024 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")

log = Logger()


async def adopt(download: DownloadState, peers: SharedDownloads) -> int:
    """Continue the temporary file of an owner that went away; the bytes it holds.

    Only for a download that holds the lock of its file. Needs the length: the
    owner's announced ``total`` must be the index's size (when it gave one),
    and it becomes the download's, to tell a complete file and check the Range.
    """
    final = download.spec.final_path
    announced = await peers.announcement(final)
    if download.over or not announced or announced.get("owner") == peers.token:
        return 0
    name, total = announced.get("partial"), announced.get("total")
    if not isinstance(name, str) or not isinstance(total, int) or "/" in name:
        return 0
    if download.spec.size is not None and total != download.spec.size:
        return 0
    adopted = download.files.adopt_partial(final.with_name(name), final)
    if adopted is None:
        return 0
    download.partial_path, download.fd = adopted
    download.read_fd = read_fd = os.open(download.partial_path, os.O_RDONLY)
    size = os.fstat(read_fd).st_size
    offset = 0
    while offset < size:  # hash what is there, a step per reactor turn
        data = os.pread(read_fd, min(ADOPT_HASH_STEP, size - offset), offset)
        if not data:
            break
        download.hasher.update(data)
        offset += len(data)
        await deferLater(download.clock, 0, lambda: None)
        if download.over:  # aborted meanwhile; fail removed the file
            return 0
    download.total = total
    settle_readers(download.readers, download.read_fd, download.total)
    download.received = download.releasable = download.resumed_from = offset
    if offset >= total:  # the owner died between its last byte and the rename
        publish_verified_or_fail(download)
        return offset
    log.info(
        "adopted {bytes} of {total} bytes of {url} from a process that went away",
        bytes=offset,
        total=total,
        url=download.spec.url,
    )
    return offset


def resume(download: DownloadState, response: IResponse, offset: int) -> tuple[int, str | None]:
    """Where the upstream's answer to a Range request from ``offset`` goes on from.

    With it, why that answer cannot continue the adopted file (None if it can).
    An answer that is neither a 200 nor a 206 is left to the caller.
    """
    if response.code == 200:
        # No range support: start again in a file of our own; clients of
        # the adopted bytes cannot be given bytes the new file vouches for.
        log.info("upstream ignored the Range request; fetching {url} again", url=download.spec.url)
        drop_adopted(download)
        return 0, None
    if response.code == 206:
        return offset, _content_range_problem(download, response, offset)
    return offset, None


def drop_adopted(download: DownloadState) -> None:
    """Forget the adopted bytes; ``_start_streaming`` cuts off the clients that had some."""
    if download.partial_path is not None:
        download.files.discard(download.partial_path)
    download.forget_file()


def _content_range_problem(download: DownloadState, response: IResponse, offset: int) -> str | None:
    """Why a 206 is not the rest of the adopted file. Needs the length: the total must match."""
    url = download.spec.url
    values = response.headers.getRawHeaders(b"content-range") or [b""]
    match = _CONTENT_RANGE.match(values[0].decode("latin-1"))
    if match is None:
        return f"upstream sent a 206 without a usable Content-Range for {url}"
    first, last, total = (int(g) for g in match.groups())
    if first != offset or last != total - 1 or total != download.total:
        return f"upstream sent bytes {first}-{last}/{total}, not {offset}- of {download.total}"
    return None
