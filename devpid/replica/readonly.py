"""Writes sent to a replica: refused, with one line naming the primary.

A replica refuses every request that would change the private data (``PUT``,
``PATCH``, ``DELETE``, ``PUSH`` and ``POST``: uploads, tokens, tox results)
with 403 and ``this is a read-only replica of <primary>; send writes to the
primary``, also in the reason phrase, where twine shows it. Refusing, rather
than proxying to the primary, keeps a replica's behaviour predictable: it
never depends on the primary being up to answer a request, and a write is
never acknowledged by a machine that does not hold it. A load balancer (the
nginx of ``devpid gen-config --primary-url``) sends writes to the primary.

Allowed: reads (``GET``, ``HEAD``, ``OPTIONS``), ``POST /+login`` (the replica
checks the password against the replicated hash and signs the token with its
own ``--secretfile``), and a mirror page's refresh (``POST …/refresh``: the
replica's own cache, not replicated data).
"""

from __future__ import annotations

from typing import Any

from twisted.web.http_headers import Headers
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from devpid.http.errors import plain_error
from devpid.http.uploads import UploadReceiver
from devpid.upload.form import StreamingForm

READS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def refusal(primary_url: str) -> str:
    return f"this is a read-only replica of {primary_url}; send writes to the primary"


def is_write(method: bytes, path: bytes) -> bool:
    """Whether a request would change the private data (and so belongs to the primary)."""
    if method in READS:
        return False
    if method == b"POST":
        path = path.partition(b"?")[0].rstrip(b"/")
        if path == b"/+login" or path.endswith(b"/refresh"):
            return False
    return True


class ReadOnlyReplica(Resource):
    """The app's resource on a replica: writes refused before any route sees them."""

    isLeaf = True

    def __init__(self, inner: IResource, primary_url: str) -> None:
        super().__init__()
        self.inner = inner
        self.message = refusal(primary_url)

    def render(self, request: Request) -> Any:
        if not is_write(request.method, request.path):
            return self.inner.render(request)
        body = plain_error(request, 403, self.message)
        request.setResponseCode(403, self.message.encode("utf-8", "replace"))
        return body


class ReplicaUploads(UploadReceiver):
    """A replica's uploads: held to the upload size limit (so the refusal, not a 413,
    answers twine) but never written to disk."""

    def start(self, command: bytes, path: bytes, headers: Headers) -> StreamingForm | None:
        return None
