"""The streaming tee: one upstream download per file, any number of clients.

A ``Download`` writes upstream chunks to a temporary file beside the file's
final path. Each client is a ``TeeReader`` that reads that file from its own
offset and writes to its own request, as fast as *its* connection allows
(a push producer registered on the request: the valve). Slow clients never
slow the download, and the memory held per client is one chunk.

One job a module:

- ``download``: a download in a process alone, upstream to temporary file to readers
- ``state``: where a download stands, the fields and turns the other jobs use
- ``body``: the upstream's response body, and the watch that gives up on a stalled one
- ``verify``: the sha256 and length checks, and the commit into the cache
- ``reader``: one client of a download, at its own pace (the valve)
- ``manager``: the running downloads of this process, one per file
- ``shared``: a download shared with other processes: the lock, following, taking over
- ``adopt``: continuing the temporary file of a process that died, with a Range request
- ``peers``: the lock and announcement protocol over the state store
"""

from devpid.mirror.tee.download import Download, DownloadFailed
from devpid.mirror.tee.manager import DownloadManager
from devpid.mirror.tee.reader import TeeReader
from devpid.mirror.tee.state import FileSpec

__all__ = ["Download", "DownloadFailed", "DownloadManager", "FileSpec", "TeeReader"]
