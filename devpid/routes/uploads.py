"""Uploads and pushes: ``POST /<user>/<index>/`` (twine, ``devpi upload``) and ``PUSH``.

An upload's body has been streamed to disk while it arrived
(``devpid.http.uploads``); here it is checked in devpi's order (spec 8.2),
looked into (is it really a wheel or an sdist, and what does its metadata
say: the file wins over the form), put in its place, and linked to its
version in one transaction. Failures answer devpi's way for uploads: the
message is the HTTP reason phrase (trap 1), with a small HTML body.

A ``POST`` without a form, or the ``PUSH`` method, is a push (spec 9):
to another index of this server, or to a legacy upload URL elsewhere.
"""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from packaging.version import InvalidVersion, Version
from twisted.logger import Logger
from twisted.web.server import Request

from devpid.auth.acl import Action
from devpid.common.offload import Offload
from devpid.files.releases import FileBusy, Placed, ReleaseFiles
from devpid.files.store import UnsafePath
from devpid.http.devpi import set_serial
from devpid.http.errors import HTTPError
from devpid.http.uploads import received_form, upload_started_at
from devpid.private.data import PrivateData, Refused
from devpid.private.indexconfig import MIRROR
from devpid.private.metadata import check_name_and_version
from devpid.private.names import InvalidConfig, normalize_project
from devpid.private.releases import (
    DOCZIP,
    RELEASE,
    NewFile,
    Releases,
    Stored,
    doc_hashes,
    doczip_name,
    entrypath,
)
from devpid.routes import labelled
from devpid.routes.access import Access
from devpid.routes.push import Pusher
from devpid.simple.model import METADATA
from devpid.upload.archive import (
    BadArchive,
    has_archive_extension,
    inspect_distribution,
    merged_metadata,
    metadata_from_form,
)
from devpid.upload.docs import BadDocZip, DocLimits, unpack_docs
from devpid.upload.form import FormError, ReceivedFile, UploadForm, boundary_of

_NOT_IN_VERSION = re.compile(r"[^\w\d.]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SubmitError(HTTPError):
    """An upload refused: answered by ``refusal`` (its reason as the reason phrase, devpi's
    way for uploads), not as the other routes' errors are."""


def refusal(request: Request, error: SubmitError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name, value)
    return submit_answer(request, error.code, error.reason)


def submit_answer(request: Request, code: int, message: str) -> bytes:
    """devpi's ``abort_submit``: the message as reason phrase, and an HTML page with it."""
    line = _CONTROL.sub(" ", message)[:400]
    request.setResponseCode(code, line.encode("utf-8", errors="replace"))
    request.setHeader(b"content-type", b"text/html; charset=UTF-8")
    request.setHeader(b"cache-control", b"no-store")
    title = html.escape(f"{code} {line}")
    return (
        f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>\n".encode()
    )


@attrs.define
class UploadRoutes:
    data: PrivateData
    releases: Releases
    files: ReleaseFiles
    access: Access
    offload: Offload
    pusher: Pusher
    doc_limits: DocLimits = attrs.field(factory=DocLimits)
    log = Logger()

    def register(self, app: Klein) -> None:
        index = "/<user>/<index>"
        app.route(index, methods=["POST"], strict_slashes=False)(
            labelled("upload", self.upload_or_push)
        )
        app.route(index, methods=["PUSH"], strict_slashes=False)(labelled("api", self.push))

    async def upload_or_push(self, request: Request, user: str, index: str) -> bytes:
        streamed = received_form(request)
        if streamed is None:
            if boundary_of(request.getHeader(b"content-type")) is not None:
                # a form to what takes none (a mirror, no index): not streamed, refused
                return await self._refuse_early(
                    request, user, index, 404, f"The stage {user}/{index} could not be found."
                )
            return await self.push(request, user, index)
        try:
            form = streamed.finish()
        except FormError as e:
            streamed.abort()
            return await self._refuse_early(request, user, index, e.code, e.message)
        try:
            return await self._upload(request, f"{user}/{index}", form)
        except SubmitError as e:
            return refusal(request, e)
        finally:
            if form.file is not None:
                form.file.discard()

    async def push(self, request: Request, user: str, index: str) -> bytes:
        return await self.pusher.push(request, f"{user}/{index}")

    async def _refuse_early(
        self, request: Request, user: str, index: str, code: int, message: str
    ) -> bytes:
        """A form that could not be read: the index and permission checks still come first."""
        try:
            await self._may_upload(request, f"{user}/{index}")
        except SubmitError as e:
            return refusal(request, e)
        return submit_answer(request, code, message)

    async def _may_upload(self, request: Request, index: str) -> str | None:
        config = self.data.index(index)
        if config is None:
            raise SubmitError(404, f"The stage {index} could not be found.")
        if config.get("type") == MIRROR:
            raise SubmitError(404, "cannot submit to mirror index")
        who = await self.access.who(request)
        if not self.access.policy.permits(who, Action.UPLOAD, index=index, index_config=config):
            if who.authenticated:
                raise SubmitError(403, "no permission to submit")
            raise SubmitError(401, "Unauthorized", {b"www-authenticate": b'Basic realm="pypi"'})
        return who.user

    async def _upload(self, request: Request, index: str, form: UploadForm) -> bytes:
        who = await self._may_upload(request, index)
        action = form.first(":action")
        if action == "submit":
            return self._register(request, index, form, who)
        if action not in ("file_upload", "doc_upload"):
            raise SubmitError(400, f"action {str(action)[:100]!r} not supported")
        received = form.file
        if received is None or received.field != "content":
            raise SubmitError(400, "content file field not found")
        if action == "doc_upload":
            return await self._doc_upload(request, index, form, received, who)
        return await self._file_upload(request, index, form, received, who)

    def _register(self, request: Request, index: str, form: UploadForm, who: str | None) -> bytes:
        metadata = metadata_from_form(form.fields)
        name, version = _checked_name_version(metadata.get("name"), metadata.get("version"))
        change = self.releases.register(index, normalize_project(name), version, metadata, who)
        set_serial(request, change.serial)
        return _accepted(request)

    async def _file_upload(
        self,
        request: Request,
        index: str,
        form: UploadForm,
        received: ReceivedFile,
        who: str | None,
    ) -> bytes:
        filename = received.filename
        name, version = form.first("name") or "", form.first("version") or ""
        _check_version_in(filename, version)
        if not has_archive_extension(filename):
            raise SubmitError(400, f"{filename!r} is not a valid archive name")
        _check_name_in(filename, name)
        await _check_digests(form, received, self.offload)
        try:
            filetype = form.first("filetype")
            info = await self.offload(
                lambda: inspect_distribution(received.path, filename, filetype=filetype)
            )
        except BadArchive as e:
            raise SubmitError(400, str(e)) from None
        metadata = merged_metadata(metadata_from_form(form.fields), info)
        name, version = _checked_name_version(metadata.get("name"), metadata.get("version"))
        # the file's own metadata must agree with its name as well
        _check_version_in(filename, version)
        _check_name_in(filename, name)
        project = normalize_project(name)
        path = entrypath(index, received.sha256, filename)
        core = None
        placed = await self._place(received, path)
        core_placed: Placed | None = None
        try:
            if info.core_metadata is not None:
                core_placed = await self.offload(
                    lambda: self.files.write_file(path, info.core_metadata or b"", METADATA)
                )
                core = _sha256(info.core_metadata)
            new = NewFile(RELEASE, path, received.sha256, received.size, core_metadata=core)
            return self._store(request, index, project, version, metadata, new, who, placed)
        finally:
            placed.release()
            if core_placed is not None:
                core_placed.release()

    async def _doc_upload(
        self,
        request: Request,
        index: str,
        form: UploadForm,
        received: ReceivedFile,
        who: str | None,
    ) -> bytes:
        name = form.first("name") or ""
        if not name:
            raise SubmitError(400, "invalid metadata: missing name")
        project = normalize_project(name)
        version = form.first("version") or self._latest_version(index, project)
        if not version:
            raise SubmitError(
                400,
                f"doczip has no version and {name!r} has no releases to derive one from",
            )
        _checked_name_version(name, version)
        path = entrypath(index, received.sha256, doczip_name(project, version))
        try:
            try:
                target = self.files.docs_dir(index, project, version, received.sha256)
                await self.offload(
                    partial(unpack_docs, received.path, received.size, target, self.doc_limits)
                )
            except (BadDocZip, UnsafePath) as e:
                raise SubmitError(400, str(e)) from None
            placed = await self._place(received, path)
            try:
                new = NewFile(DOCZIP, path, received.sha256, received.size)
                metadata = {"name": name, "version": version}
                return self._store(request, index, project, version, metadata, new, who, placed)
            finally:
                placed.release()
        finally:
            # replaced docs, or these if they were not linked (or not unpacked), go
            keep = doc_hashes(self.data.versions(index, project))
            await self.offload(partial(self.files.prune_docs, index, project, keep))

    def _latest_version(self, index: str, project: str) -> str | None:
        versions = list(self.data.versions(index, project))
        if not versions:
            return None
        return max(versions, key=_version_key)

    async def _place(self, received: ReceivedFile, path: str) -> Placed:
        try:
            placed = await self.offload(lambda: self.files.place(received.path, received.fd, path))
        except UnsafePath as e:
            raise SubmitError(400, f"invalid file name: {e}") from None
        except FileBusy:
            name = path.rpartition("/")[2]
            raise SubmitError(
                409, f"{name} was uploaded at the same time by another request"
            ) from None
        received.fd = -1  # place() owns it now
        return placed

    def _store(
        self,
        request: Request,
        index: str,
        project: str,
        version: str,
        metadata: Mapping[str, Any],
        new: NewFile,
        who: str | None,
        placed: Placed,
    ) -> bytes:
        started = upload_started_at(request)
        try:
            change = self.releases.store(index, project, version, metadata, new, who, started)
        except Refused as e:
            self._forget(placed, new.entrypath)
            raise SubmitError(e.code, e.message) from None
        except BaseException:
            self._forget(placed, new.entrypath)
            raise
        set_serial(request, change.serial)
        self.files.remove(change.unlinked)
        if change.stored is Stored.IDENTICAL:
            return submit_answer(request, 200, "Upload of identical file to non volatile index.")
        return _accepted(request)

    def _forget(self, placed: Placed, path: str) -> None:
        """An upload that was not linked: its file goes, unless something links it (or is
        about to: ``remove`` asks both)."""
        placed.release()
        self.files.remove([path])


def _accepted(request: Request) -> bytes:
    """devpi's answer to a successful upload: 200 with an empty HTML body."""
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/html; charset=UTF-8")
    return b""


def _file_digest(path: Path, algorithm: str) -> str:
    """A digest the form announced only after the file (blocking)."""
    with open(path, "rb") as f:
        if algorithm == "blake2_256":
            return hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=32)).hexdigest()
        return hashlib.file_digest(f, algorithm).hexdigest()


#: The digests twine sends, and the attribute of ``ReceivedFile`` each must equal.
_DIGEST_FIELDS = (
    ("sha256_digest", "sha256"),
    ("md5_digest", "md5"),
    ("blake2_256_digest", "blake2_256"),
)


async def _check_digests(form: UploadForm, received: ReceivedFile, offload: Offload) -> None:
    """A digest the client sent must be the file's: a mismatch is a damaged upload."""
    for field, attribute in _DIGEST_FIELDS:
        claimed = (form.first(field) or "").strip().lower()
        if not claimed:
            continue
        actual = getattr(received, attribute)
        if actual is None:
            actual = await offload(partial(_file_digest, received.path, attribute))
        if claimed != actual:
            raise SubmitError(
                400, f"the file's {attribute} is {actual}, the form says {claimed[:128]}"
            )


def _check_version_in(filename: str, version: str) -> None:
    """devpi's check: the version (or its ``_`` form) is part of the file name."""
    if version and not (version in filename or _NOT_IN_VERSION.sub("_", version) in filename):
        raise SubmitError(400, f"filename {filename!r} does not contain version {version!r}")


def _check_name_in(filename: str, name: str) -> None:
    """devpi's check: the normalised file name starts with the normalised project name."""
    if name and not normalize_project(filename).startswith(normalize_project(name)):
        raise SubmitError(400, f"filename {filename!r} does not match project name {name!r}")


def _checked_name_version(name: Any, version: Any) -> tuple[str, str]:
    try:
        return check_name_and_version(
            str(name) if name else None, str(version) if version else None
        )
    except InvalidConfig as e:
        raise SubmitError(400, str(e)) from None


def _version_key(version: str) -> tuple[int, Any]:
    try:
        return 1, Version(version)
    except InvalidVersion:
        return 0, version


def _sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


__all__ = ["SubmitError", "UploadRoutes", "submit_answer"]
