"""Request bodies that are uploads: streamed to disk as they arrive, never held in memory.

twisted.web collects a request body before a route runs. For an upload
(``POST /<user>/<index>[/]`` with a ``multipart/form-data`` body, spec
section 8) that would be the whole distribution in memory or in an anonymous
temporary file, read a second time afterwards. Instead, the site hands such a
body, chunk by chunk, to a ``StreamingForm`` that writes the file part to a
temporary file in the serverdir while hashing it; the route then finds the
parsed form on the request (``received_form``).

An upload is held to ``--max-upload-size`` instead of ``--max-body-size``; a
tox result (``POST`` to a file's URL, JSON) to ``MAX_TOXRESULT_SIZE``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import attrs
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from devpid.upload.form import FormLimits, StreamingForm, boundary_of

#: ``/<user>/<index>`` or ``/<user>/<index>/`` (devpi's ``pypisubmit`` URL), query allowed.
_SUBMIT_PATH = re.compile(rb"^/[^+/?][^/?]*/[^+/?][^/?]*/?(\?.*)?\Z")
#: A file's URL, where tox results are posted.
_FILE_PATH = re.compile(rb"^/[^+/?][^/?]*/[^+/?][^/?]*/(\+|%2[bB])f/")
#: Bytes of a tox result (the JSON ``tox --result-json`` writes).
MAX_TOXRESULT_SIZE = 16 << 20
#: Room for an upload's fields and part headers beside its file, in the body limit.
FORM_SLACK = 16 << 20

_ATTRIBUTE = "devpid_upload_form"
_SERIAL = "devpid_upload_serial"


def _index_of(path: bytes) -> str:
    user, _, rest = path.partition(b"?")[0].lstrip(b"/").partition(b"/")
    return (user + b"/" + rest.partition(b"/")[0]).decode("utf-8", "replace")


@attrs.frozen
class UploadReceiver:
    """Starts a ``StreamingForm`` for each upload request, its file under ``directory``."""

    limits: FormLimits
    create_file: Callable[[], tuple[Path, int]]
    #: The private data's serial, caught up: when an upload starts, for the race check.
    current_serial: Callable[[], int]
    #: Whether ``user/index`` is a stage (caught up): only a stage's uploads are streamed
    #: to disk; one to a mirror or to no index is held to the small body limit.
    is_stage: Callable[[str], bool]

    def body_limit(self, command: bytes, path: bytes, headers: Headers) -> int | None:
        """The body limit of a request that is an upload or a tox result; None for others."""
        if command != b"POST":
            return None
        if _SUBMIT_PATH.match(path):
            if self._boundary(headers) is None or not self.is_stage(_index_of(path)):
                return None
            return self.limits.max_file_size + FORM_SLACK
        if _FILE_PATH.match(path):
            return MAX_TOXRESULT_SIZE
        return None

    def start(self, command: bytes, path: bytes, headers: Headers) -> StreamingForm | None:
        if command != b"POST" or not _SUBMIT_PATH.match(path):
            return None
        boundary = self._boundary(headers)
        if boundary is None or not self.is_stage(_index_of(path)):
            return None
        return StreamingForm(boundary, self.limits, self.create_file)

    @staticmethod
    def _boundary(headers: Headers) -> bytes | None:
        return boundary_of(headers.getRawHeaders(b"content-type", [None])[0])


def attach_form(request: Request, form: StreamingForm, serial: int) -> None:
    setattr(request, _ATTRIBUTE, form)
    setattr(request, _SERIAL, serial)


def upload_started_at(request: Request) -> int:
    """The private data's serial when the upload's body began to arrive."""
    serial = getattr(request, _SERIAL, -1)
    return serial if isinstance(serial, int) else -1


def received_form(request: Request) -> StreamingForm | None:
    """The streamed form of an upload request, if it was one."""
    form = getattr(request, _ATTRIBUTE, None)
    return form if isinstance(form, StreamingForm) else None
