"""A streaming ``multipart/form-data`` sink for uploads: the file goes to disk as it arrives.

twisted.web hands the request body over chunk by chunk; ``StreamingForm``
parses each chunk at once (with ``multipart``'s sans-io parser), writes the
file part to a temporary file while hashing it, and keeps only the small
fields in memory, all of it bounded by ``FormLimits``. Nothing here touches
the reactor, so it is tested by feeding bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import attrs
import multipart

#: A boundary may be 1 to 70 characters (RFC 2046); some clients go a little over.
_MAX_BOUNDARY = 200
#: Bytes of one part header line, and header lines per part (RFC 7578 needs three).
_MAX_HEADER_SIZE = 8 << 10
_MAX_HEADER_COUNT = 8


class FormError(Exception):
    """A body that cannot be an upload form: ``code`` is the HTTP status, ``message`` one line.

    400 for a malformed form, 413 for one over a limit, 500 when the server
    cannot store the file (a full disk): that is not the client's fault.
    """

    def __init__(self, code: int, message: str) -> None:
        message = " ".join(message.split())  # one line, whatever a library said
        super().__init__(message)
        self.code = code
        self.message = message


@attrs.frozen
class FormLimits:
    """How much of a form is kept: the file on disk, the fields in memory."""

    max_file_size: int = 1 << 30
    max_field_size: int = 4 << 20
    max_fields_size: int = 16 << 20
    max_fields: int = 1000


@attrs.define
class ReceivedFile:
    """The form's file part in its temporary file; the caller owns ``fd`` after ``finish``."""

    field: str
    filename: str
    path: Path
    fd: int
    size: int
    sha256: str
    #: Computed only when the form announced that digest before the file (twine does):
    #: each costs as much as the sha256 again. None: not computed while streaming.
    md5: str | None = None
    blake2_256: str | None = None

    def discard(self) -> None:
        """Close and remove the temporary file, unless it was put in place (``fd`` -1)."""
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.fd = -1
        self.path.unlink(missing_ok=True)


@attrs.define
class UploadForm:
    """A complete form: its fields (in order, repeated ones kept) and at most one file."""

    fields: dict[str, list[str]]
    file: ReceivedFile | None

    def first(self, name: str) -> str | None:
        """The first value of a field, or None when the form has no such field."""
        values = self.fields.get(name)
        return values[0] if values else None


def boundary_of(content_type: bytes | None) -> bytes | None:
    """The boundary of a ``multipart/form-data`` Content-Type, or None for anything else."""
    if not content_type:
        return None
    try:
        text = content_type.decode("ascii")
    except UnicodeDecodeError:
        return None
    kind, options = multipart.parse_options_header(text)
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary or len(boundary) > _MAX_BOUNDARY:
        return None
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in boundary):
        return None
    return str(boundary).encode("ascii")


def check_filename(filename: str) -> None:
    """Refuse a file name that is not a plain base name: it ends up in a path on disk."""
    if not filename or filename in (".", ".."):
        raise FormError(400, f"invalid file name {filename!r}")
    if any(char in "/\\" or ord(char) < 0x20 or ord(char) == 0x7F for char in filename):
        raise FormError(400, f"invalid file name {filename!r}")


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@attrs.define
class _FilePart:
    """The file part while it is written."""

    field: str
    filename: str
    path: Path
    fd: int
    size: int = 0
    sha256: _Hasher = attrs.field(factory=hashlib.sha256)
    md5: _Hasher | None = None
    blake2_256: _Hasher | None = None


@attrs.define
class _FieldPart:
    """A field part while it arrives (bounded by the field limits)."""

    name: str
    chunks: list[bytes] = attrs.Factory(list)
    size: int = 0


class StreamingForm:
    """Parse a multipart body as it arrives; write its one file part to a temporary file.

    ``create_file`` is called when the file part starts and returns the path
    and an open, ``flock``-ed descriptor of a fresh temporary file (as
    ``FileStore.create_partial`` does). ``feed`` never raises, since it runs
    in the reactor's ``dataReceived``: the first problem is kept in ``error``,
    the file is removed at once and later data is ignored.
    """

    def __init__(
        self, boundary: bytes, limits: FormLimits, create_file: Callable[[], tuple[Path, int]]
    ) -> None:
        self.limits = limits
        self.error: FormError | None = None
        self._create_file = create_file
        self._fields: dict[str, list[str]] = {}
        self._fields_size = 0
        self._part: _FilePart | _FieldPart | None = None
        self._file: _FilePart | None = None
        self._closed_fd = False
        self._parser: multipart.PushMultipartParser | None = None
        try:
            self._parser = multipart.PushMultipartParser(
                boundary,
                max_header_size=_MAX_HEADER_SIZE,
                max_header_count=_MAX_HEADER_COUNT,
                max_segment_count=limits.max_fields,
                strict=False,
            )
        except multipart.MultipartError as err:
            self.error = FormError(400, f"invalid multipart boundary: {err}")

    def feed(self, data: bytes) -> None:
        """Take the next chunk of the body; problems go to ``error``, never up to the caller."""
        if self.error is not None or not data:
            return
        assert self._parser is not None
        try:
            for event in self._parser.parse(data):
                self._on_event(event)
        except FormError as err:
            self._fail(err)
        except multipart.ParserLimitReached as err:
            self._fail(_limit_error(err, self.limits))
        except multipart.MultipartError as err:
            self._fail(FormError(400, f"malformed multipart body: {err}"))
        except OSError as err:
            self._fail(FormError(500, f"cannot store the upload: {err.strerror or err}"))
        except Exception as err:  # dataReceived must go on; the route answers from ``error``
            self._fail(FormError(500, f"cannot store the upload: {type(err).__name__}"))

    def finish(self) -> UploadForm:
        """The form, once the whole body was fed; the file's fd stays open (the caller commits).

        Raises the remembered ``error``, or a 400 when the final boundary never came.
        """
        if self.error is None and self._parser is not None:
            try:
                self._parser.close()  # raises unless the final boundary was seen
            except multipart.MultipartError:
                self._fail(FormError(400, "the multipart body is truncated"))
        if self.error is not None:
            raise self.error
        received = None
        if self._file is not None:
            part = self._file
            self._closed_fd = True  # handed over: ``abort`` no longer touches it
            received = ReceivedFile(
                field=part.field,
                filename=part.filename,
                path=part.path,
                fd=part.fd,
                size=part.size,
                sha256=part.sha256.hexdigest(),
                md5=part.md5.hexdigest() if part.md5 is not None else None,
                blake2_256=part.blake2_256.hexdigest() if part.blake2_256 is not None else None,
            )
        return UploadForm(fields=self._fields, file=received)

    def abort(self) -> None:
        """Close and remove the temporary file (the client went away); safe to call twice.

        Does nothing once ``finish`` handed the file over.
        """
        if self._file is None or self._closed_fd:
            return
        self._closed_fd = True
        # Called from the reactor (a disconnect, a failed chunk): it must not raise.
        with contextlib.suppress(OSError):
            os.close(self._file.fd)
        with contextlib.suppress(OSError):
            self._file.path.unlink(missing_ok=True)

    def _fail(self, error: FormError) -> None:
        self.error = error
        self._part = None
        if self._parser is not None:
            self._parser.close(check_complete=False)
        self.abort()

    def _on_event(self, event: multipart.MultipartSegment | bytes | None) -> None:
        if isinstance(event, multipart.MultipartSegment):
            self._start_part(event)
        elif event is None:
            self._end_part()
        else:
            self._take(event)

    def _start_part(self, segment: multipart.MultipartSegment) -> None:
        name = segment.name or ""
        if segment.filename is None:
            self._part = _FieldPart(name)
            return
        if self._file is not None:
            raise FormError(400, "more than one file in the form")
        check_filename(segment.filename)
        path, fd = self._create_file()
        part = _FilePart(field=name, filename=segment.filename, path=path, fd=fd)
        if "md5_digest" in self._fields:
            part.md5 = hashlib.md5(usedforsecurity=False)
        if "blake2_256_digest" in self._fields:
            part.blake2_256 = hashlib.blake2b(digest_size=32)
        self._file = self._part = part

    def _take(self, chunk: bytes) -> None:
        part = self._part
        if isinstance(part, _FilePart):
            part.size += len(chunk)
            if part.size > self.limits.max_file_size:
                raise FormError(413, f"the file is larger than {self.limits.max_file_size} bytes")
            view = memoryview(chunk)
            while view:
                written = os.write(part.fd, view)
                view = view[written:]
            part.sha256.update(chunk)
            if part.md5 is not None:
                part.md5.update(chunk)
            if part.blake2_256 is not None:
                part.blake2_256.update(chunk)
        elif isinstance(part, _FieldPart):
            part.size += len(chunk)
            if part.size > self.limits.max_field_size:
                limit = self.limits.max_field_size
                raise FormError(413, f"form field {part.name!r} is larger than {limit} bytes")
            self._fields_size += len(chunk)
            if self._fields_size > self.limits.max_fields_size:
                raise FormError(
                    413, f"the form fields are larger than {self.limits.max_fields_size} bytes"
                )
            part.chunks.append(chunk)

    def _end_part(self) -> None:
        part, self._part = self._part, None
        if isinstance(part, _FieldPart):
            try:
                value = b"".join(part.chunks).decode("utf-8")
            except UnicodeDecodeError:
                raise FormError(400, f"form field {part.name!r} is not UTF-8") from None
            self._fields.setdefault(part.name, []).append(value)


def _limit_error(err: multipart.ParserLimitReached, limits: FormLimits) -> FormError:
    """The parser's own limits (parts, part headers) are the client's mistake: 400."""
    if "count" in str(err) and "header" not in str(err):
        return FormError(400, f"the form has more than {limits.max_fields} parts")
    return FormError(400, f"malformed multipart body: {err}")
