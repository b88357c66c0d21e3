"""A version's documentation: ``/<user>/<index>/<project>/<version>/+doc/<path>`` (and ``+d/``).

The doc zip uploaded with ``devpi upload --with-docs`` (or ``:action=doc_upload``)
was checked and unpacked at upload (``devpid.upload.docs``) into a directory
named by the zip's hash; one missing (a copy of the serverdir without
``+docs/``, a push) is unpacked again on the first request. The nearest stage
of the resolution order with docs for the version answers.

The pages are the uploader's HTML on devpid's origin, so they are sent with
``Content-Security-Policy: sandbox``: scripts in them run, but as a foreign
origin that can reach nothing of devpid's.
"""

from __future__ import annotations

import mimetypes
import re
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from klein import Klein
from twisted.web.server import Request
from twisted.web.static import File

from devpid.common.offload import Offload
from devpid.files.releases import ReleaseFiles
from devpid.files.store import UnsafePath
from devpid.http.errors import HTTPError
from devpid.private.data import PrivateData
from devpid.private.names import normalize_project
from devpid.private.releases import DOCZIP
from devpid.private.resolve import resolution_order
from devpid.routes import labelled
from devpid.upload.docs import BadDocZip, DocLimits, unpack_docs

_PART = re.compile(r"^[^/\x00-\x1f\\]{1,255}\Z")
SANDBOX = b"sandbox allow-scripts allow-popups allow-forms"


@attrs.define
class DocRoutes:
    data: PrivateData
    files: ReleaseFiles
    offload: Offload
    limits: DocLimits = attrs.field(factory=DocLimits)

    def register(self, app: Klein) -> None:
        base = "/<user>/<index>/<project>/<version>"
        for marker in ("+doc", "+d"):
            app.route(f"{base}/{marker}/", methods=["GET", "HEAD"])(labelled("docs", self.page))
            app.route(f"{base}/{marker}/<path:rest>", methods=["GET", "HEAD"])(
                labelled("docs", self.page)
            )

    async def page(
        self, request: Request, user: str, index: str, project: str, version: str, rest: str = ""
    ) -> Any:
        directory = await self._unpacked(f"{user}/{index}", normalize_project(project), version)
        parts = [part for part in rest.split("/") if part]
        if any(part in (".", "..") or not _PART.match(part) for part in parts):
            raise HTTPError(400, "invalid documentation path")
        path = directory.joinpath(*parts)
        if path.is_dir():
            path = path / "index.html"
        resolved = path.resolve()
        if not resolved.is_relative_to(directory.resolve()) or not resolved.is_file():
            raise HTTPError(404, f"no documentation page {rest[:200]!r}")
        resource = File(str(resolved))
        content_type, _ = mimetypes.guess_type(resolved.name)
        resource.type = content_type or "application/octet-stream"
        resource.encoding = None
        request.postpath = []  # the path is all read: the file is the answer
        request.setHeader(b"content-security-policy", SANDBOX)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"cache-control", b"max-age=60, public")
        return resource

    async def _unpacked(self, index: str, project: str, version: str) -> Path:
        """The directory of the version's docs, unpacked now if it is not yet."""
        for stage in resolution_order(index, self.data.stages()):
            value = self.data.versions(stage, project).get(version)
            docs = [link for link in (value or {}).get("+links") or () if link.get("rel") == DOCZIP]
            if not docs:
                continue
            link = docs[-1]
            sha256 = str(link.get("hashes", {}).get("sha256", ""))
            try:
                directory = self.files.docs_dir(stage, project, version, sha256)
                if not directory.is_dir():
                    zip_path = self.files.path_of(str(link["entrypath"]))
                    size = int(link.get("size") or 0)
                    await self.offload(partial(unpack_docs, zip_path, size, directory, self.limits))
            except (UnsafePath, BadDocZip, OSError) as e:
                raise HTTPError(404, f"the documentation cannot be read: {e}") from None
            return directory
        raise HTTPError(404, f"no documentation for {project} {version[:100]} on {index}")
