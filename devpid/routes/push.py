"""``PUSH /<user>/<index>`` (or ``POST`` with JSON): a version copied elsewhere (spec 9).

To another index of this server (``targetindex``): the files are linked (or
copied) under the target, then one transaction registers the version there
with the source's logs and a ``push`` entry. To a legacy upload URL
(``posturl``, twine's protocol): each file is POSTed as a multipart form with
the version's metadata, and each answer becomes a row of the action log.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
import treq
from treq.multipart import MultiPartProducer
from twisted.logger import Logger
from twisted.web.client import FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.server import Request

from devpid import __version__
from devpid.auth.acl import Action
from devpid.common.offload import Offload
from devpid.files.releases import FileBusy, Placed, ReleaseFiles
from devpid.http.devpi import envelope, json_body, set_serial
from devpid.http.errors import HTTPError
from devpid.private.data import PrivateData
from devpid.private.indexconfig import MIRROR
from devpid.private.metadata import METADATA_KEYS
from devpid.private.names import normalize_project
from devpid.private.releases import DOCZIP, RELEASE, TOXRESULT, Releases, basename
from devpid.routes.access import Access

_KNOWN_KEYS = frozenset({"name", "version", "targetindex", "no_docs", "only_docs"})
_EXTERNAL_KEYS = frozenset({"posturl", "username", "password", "register_project"})
#: Seconds an external upload URL may take to answer one file.
EXTERNAL_TIMEOUT = 300.0
#: Bytes of an external upload URL's answer kept for the action log.
MAX_ANSWER = 64 * 1024
_BASIC = {b"www-authenticate": b'Basic realm="pypi"'}


def links_to_push(
    version: Mapping[str, Any], no_docs: bool, only_docs: bool
) -> list[Mapping[str, Any]]:
    """devpi's order: release files by name, each followed by its tox results, then the doc zip."""
    links = list(version.get("+links") or ())
    chosen: list[Mapping[str, Any]] = []
    if not only_docs:
        releases = sorted(
            (link for link in links if link.get("rel") == RELEASE),
            key=lambda link: basename(link["entrypath"]),
        )
        for release in releases:
            chosen.append(release)
            chosen += [
                link
                for link in links
                if link.get("rel") == TOXRESULT
                and link.get("for_entrypath") == release["entrypath"]
            ]
    if not no_docs:
        chosen += [link for link in links if link.get("rel") == DOCZIP]
    return chosen


@attrs.define
class Pusher:
    data: PrivateData
    releases: Releases
    files: ReleaseFiles
    access: Access
    offload: Offload
    log = Logger()

    async def push(self, request: Request, index: str) -> bytes:
        body = json_body(request)
        if not isinstance(body, dict):
            raise HTTPError(400, "Bad request: could not decode json")
        name, version = body.get("name"), body.get("version")
        if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
            raise HTTPError(400, "push needs the name and the version to push")
        config = self.data.index(index)
        if config is None:
            raise HTTPError(404, f"The stage {index} could not be found.")
        project = normalize_project(name)
        source = self.data.versions(index, project).get(version)
        if source is None or config.get("type") == MIRROR:
            raise HTTPError(400, f"there are no files for {name} {version} on stage {index}")
        no_docs, only_docs = bool(body.get("no_docs")), bool(body.get("only_docs"))
        if no_docs and only_docs:
            raise HTTPError(400, "can't use 'no_docs' and 'only_docs' together")
        links = links_to_push(source, no_docs, only_docs)
        if not links:
            raise HTTPError(404, f"no release/files found for {name} {version}")
        if "targetindex" not in body:
            return await self._push_out(request, index, body, source, links)
        extra = sorted(set(body) - _KNOWN_KEYS)
        if extra:
            raise HTTPError(400, f"unknown additional options: {', '.join(extra)[:200]}")
        target = body["targetindex"]
        if not isinstance(target, str) or target.count("/") != 1:
            raise HTTPError(400, "targetindex not in format user/index")
        target_config = self.data.index(target)
        if target_config is None:
            raise HTTPError(404, f"The stage {target} could not be found.")
        if target_config.get("type") == MIRROR:
            raise HTTPError(404, "cannot push to mirror index")
        who = await self.access.who(request)
        if not self.access.policy.permits(
            who, Action.UPLOAD, index=target, index_config=target_config
        ):
            raise HTTPError(401, f"user {who.user!r} cannot upload to {target!r}")
        return await self._push_here(request, index, target, project, version, links, who.user)

    async def _push_here(
        self,
        request: Request,
        index: str,
        target: str,
        project: str,
        version: str,
        links: list[Mapping[str, Any]],
        who: str | None,
    ) -> bytes:
        copies = [(link, f"{target}/{link['entrypath'].split('/', 2)[2]}") for link in links]
        placed: list[tuple[Placed, str]] = []
        try:
            for link, path in copies:
                source = str(link["entrypath"])
                try:
                    copied = await self.offload(partial(self.files.copy, source, path))
                except FileBusy:
                    self._forget(placed)
                    raise HTTPError(
                        409, f"{path.rpartition('/')[2]} is being stored by another request"
                    ) from None
                except BaseException:
                    self._forget(placed)
                    raise
                placed.append((copied, path))
            try:
                change, actions = self.releases.push(index, target, project, version, copies, who)
            except BaseException:
                self._forget(placed)
                raise
        finally:
            for copied, _ in placed:
                copied.release()
        self.files.remove(change.unlinked)
        set_serial(request, change.serial)
        return envelope(request, result=actions, type="actionlog")

    def _forget(self, placed: list[tuple[Placed, str]]) -> None:
        """Copies a push made but did not link: they go (unless something links them)."""
        for copied, path in placed:
            copied.release()
            self.files.remove([path])

    async def _push_out(
        self,
        request: Request,
        index: str,
        body: Mapping[str, Any],
        source: Mapping[str, Any],
        links: list[Mapping[str, Any]],
    ) -> bytes:
        posturl = body.get("posturl")
        if not isinstance(posturl, str) or not posturl.startswith(("http://", "https://")):
            raise HTTPError(400, "push needs targetindex, or posturl with the upload URL")
        extra = sorted(set(body) - _KNOWN_KEYS - _EXTERNAL_KEYS)
        if extra:
            raise HTTPError(400, f"unknown additional options: {', '.join(extra)[:200]}")
        username = str(body.get("username") or "")
        password = str(body.get("password") or "")
        if not (await self.access.who(request)).authenticated:
            # devpi lets anyone with pkg_read push out; devpid makes the server POST
            # elsewhere only for a user it knows
            raise HTTPError(401, "log in to push to another server", _BASIC)
        metadata = _form_metadata(source)
        name, version = str(source.get("name")), str(source.get("version"))
        rows: list[list[Any]] = []
        auth = (username, password) if username or password else None
        if body.get("register_project"):
            code, _ = await self._post(posturl, auth, {**metadata, ":action": "submit"}, None)
            rows.append([code, "register", name, version])
        for link in links:
            if link.get("rel") == TOXRESULT:
                continue
            path = str(link["entrypath"])
            filename = basename(path)
            if link.get("rel") == DOCZIP:
                fields = {**metadata, ":action": "doc_upload"}
                code, text = await self._post(posturl, auth, fields, (filename, path))
                rows.append([code, "docfile", name])
                continue
            fields = {
                **metadata,
                ":action": "file_upload",
                "protocol_version": "1",
                "filetype": "bdist_wheel" if filename.endswith(".whl") else "sdist",
                "pyversion": _pyversion(filename),
                "sha256_digest": str(link.get("hashes", {}).get("sha256", "")),
            }
            code, text = await self._post(posturl, auth, fields, (filename, path))
            row: list[Any] = [code, "upload", path]
            if code not in (200, 201):
                row.append(text)
            rows.append(row)
        ok = bool(rows) and rows[-1][0] in (200, 201)
        return envelope(request, 200 if ok else 502, result=rows, type="actionlog")

    async def _post(
        self,
        url: str,
        auth: tuple[str, str] | None,
        fields: Mapping[str, Any],
        file: tuple[str, str] | None,
    ) -> tuple[int, str]:
        """One multipart POST (always multipart, as twine's protocol is, with a
        ``Content-Length``: the file's size is known); the status and the answer's text."""
        parts: list[tuple[str, Any]] = list(_form_items(fields))
        handle = None
        try:
            if file is not None:
                filename, path = file
                handle = open(self.files.path_of(path), "rb")  # noqa: SIM115 (closed below)
                parts.append(
                    ("content", (filename, "application/octet-stream", FileBodyProducer(handle)))
                )
            body = MultiPartProducer(parts)
            headers = Headers(
                {
                    b"user-agent": [f"devpid/{__version__}".encode()],
                    b"content-type": [b"multipart/form-data; boundary=" + body.boundary],
                }
            )
            response = await treq.post(
                url,
                data=body,
                auth=auth,
                headers=headers,
                timeout=EXTERNAL_TIMEOUT,
                # a connection per upload: legacy endpoints often close after answering
                persistent=False,
            )
            answer = _Bounded(MAX_ANSWER)
            await treq.collect(response, answer)
            text = b"".join(answer.parts).decode("utf-8", "replace").strip()
            return response.code, " ".join(text.split())[:500] or response.phrase.decode()
        except Exception as e:
            self.log.warn("push to {url} failed: {error}", url=_without_userinfo(url), error=str(e))
            return -1, f"exception on {url}: {str(e)[:200]}"
        finally:
            if handle is not None:
                handle.close()


@attrs.define
class _Bounded:
    """Keeps the first ``limit`` bytes of an answer (the rest is read and dropped)."""

    limit: int
    parts: list[bytes] = attrs.field(factory=list)
    size: int = 0

    def __call__(self, data: bytes) -> None:
        if self.size < self.limit:
            self.parts.append(data[: self.limit - self.size])
            self.size += len(data)


def _without_userinfo(url: str) -> str:
    """A URL fit for the log: no ``user:password@``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", ""))


def _form_metadata(source: Mapping[str, Any]) -> dict[str, Any]:
    return {key: source[key] for key in METADATA_KEYS if source.get(key) not in (None, "", [])}


def _form_items(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    for key, value in fields.items():
        if isinstance(value, list):
            items += [(key, str(item)) for item in value]
        else:
            items.append((key, str(value)))
    return items


def _pyversion(filename: str) -> str:
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return parts[-3] if len(parts) >= 5 else "any"
    return "source"


__all__ = ["Pusher", "links_to_push"]
