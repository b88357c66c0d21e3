"""An index's simple pages: its JSON, the project list, a project's page, refresh.

The pages come parsed and cached from ``MirrorIndex``; here they are negotiated
(HTML or JSON), rendered with the client's link prefix and answered with an ETag
to revalidate against. Browsers are redirected to the canonical URL (trailing
slash, normalized name); installers get the page at the URL they asked for
unless the name is not normalized.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import attrs
from klein import Klein
from packaging.utils import canonicalize_name
from twisted.web.server import Request

from devpid.files.store import FileStore, UnsafePath
from devpid.http.errors import HTTPError
from devpid.http.request import (
    accepts_gzip,
    is_cross_site,
    is_installer,
    links_for,
    media_type,
)
from devpid.mirror.index import CachedPage, IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.mirror.pages import GZIP_MIN_BYTES, gzip_etag
from devpid.private.data import PrivateData
from devpid.private.resolve import resolve_project
from devpid.routes import labelled
from devpid.routes.listsend import send_list
from devpid.routes.pagesend import page_headers, send_spooled
from devpid.routes.stagepages import StagePages
from devpid.simple.model import METADATA, PROVENANCE, Link, is_valid_project_name
from devpid.simple.namelist import NamesContent
from devpid.simple.render import LinkRenderer


@attrs.define
class SimpleRoutes:
    indexes: Mapping[str, MirrorIndex]
    #: Offline, a page links only the files that are here.
    files: FileStore
    outside_url: str | None = None
    #: Users' indexes: a stage's pages come from its bases.
    private: PrivateData | None = None
    #: A stage's pages: its own files merged with its bases'.
    stage_pages: StagePages | None = None

    def register(self, app: Klein) -> None:
        simple = "/<user>/<index>/+simple"
        app.route(f"{simple}/", methods=["GET"], strict_slashes=False)(
            labelled("project_list", self.project_list)
        )
        app.route(f"{simple}/<project>/", methods=["GET"], strict_slashes=False)(
            labelled("project_page", self.project_page)
        )
        app.route(f"{simple}/<project>/refresh", methods=["POST"])(
            labelled("refresh", self.refresh)
        )

    async def project_list(self, request: Request, user: str, index: str) -> bytes | None:
        name = f"{user}/{index}"
        mirror = self.indexes.get(name)
        if mirror is None:
            self._must_exist(user, index)
        if not request.path.endswith(b"/") and not is_installer(request):
            return self._redirect(request, name, "+simple/")
        answer_type = media_type(request)
        try:
            if mirror is not None:
                entry = await mirror.project_list()
            else:
                assert self.stage_pages is not None
                entry = await self.stage_pages.project_list(name)
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        except ProjectNotFound as e:
            raise HTTPError(502, f"the upstream has no project list: {e}") from None
        urls = links_for(request, self.outside_url, name)
        if isinstance(entry.content, NamesContent):  # rendered to files, sent from them
            return await send_list(request, entry, answer_type, urls)
        return await self._send_page(request, mirror, entry, answer_type, urls)

    async def project_page(
        self, request: Request, user: str, index: str, project: str
    ) -> bytes | None:
        name = f"{user}/{index}"
        self._must_exist(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        trailing = request.path.endswith(b"/")
        if normalized != project or (not trailing and not is_installer(request)):
            return self._redirect(request, name, f"+simple/{normalized}/")
        answer_type = media_type(request)
        mirror = self.indexes.get(name)
        try:
            if mirror is None:
                assert self.stage_pages is not None
                source = await self.stage_pages.project_page(name, normalized)
                if source.merged is not None:
                    urls = links_for(request, self.outside_url, name)
                    select = self._cached_only if self._offline else None
                    return await self._send_page(
                        request, None, source.merged, answer_type, urls, select
                    )
                assert source.mirror is not None
                mirror = source.mirror
            entry = await mirror.project_page(normalized)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        urls = links_for(request, self.outside_url, mirror.name)
        select = partial(self._cached_only, mirror_name=mirror.name) if mirror.offline else None
        return await self._send_page(request, mirror, entry, answer_type, urls, select)

    @property
    def _offline(self) -> bool:
        return any(mirror.offline for mirror in self.indexes.values())

    async def refresh(self, request: Request, user: str, index: str, project: str) -> bytes:
        """devpi's refresh: revalidate one project's page now (on the index, or the mirror
        its pages come from), then show it."""
        if is_cross_site(request):
            raise HTTPError(403, "cross-site request refused")
        normalized = await self.refresh_project(user, index, project)
        prefix = links_for(request, self.outside_url, f"{user}/{index}").prefix
        location = f"{prefix}/{user}/{index}/+simple/{normalized}/"
        request.setResponseCode(302)
        request.setHeader(b"location", location.encode("utf-8"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"refreshed; see " + location.encode("utf-8") + b"\n"

    async def refresh_project(self, user: str, index: str, project: str) -> str:
        """Revalidate ``project``'s page now; its normalized name. 4xx/502 as ``HTTPError``."""
        self._must_exist(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        mirror = self._page_source(user, index, normalized)
        if mirror.offline:
            raise HTTPError(409, "devpid is offline: nothing to refresh from")
        try:
            await mirror.refresh(normalized)
        except ProjectNotFound as e:
            raise HTTPError(404, str(e)) from None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        return normalized

    def _must_exist(self, user: str, index: str) -> None:
        """A 404 unless ``user/index`` is a mirror or one of the users' indexes."""
        name = f"{user}/{index}"
        if name in self.indexes:
            return
        if self.private is None or self.private.index(name) is None:
            raise HTTPError(404, f"no index {name}")

    def _page_source(self, user: str, index: str, project: str) -> MirrorIndex:
        """The mirror a project's page comes from: the index itself, or for a stage the
        first mirror of its resolution order that the whitelist lets through."""
        name = f"{user}/{index}"
        mirror = self.indexes.get(name)
        if mirror is not None:
            return mirror
        assert self.private is not None
        resolution = resolve_project(
            name, project, self.private.stages(), self.private.has_private_project
        )
        for stage in resolution.stages:
            if stage in self.indexes:
                return self.indexes[stage]
        raise HTTPError(404, f"The project {project} does not exist.")

    def _redirect(self, request: Request, name: str, subpath: str) -> bytes:
        """A 301 to ``subpath`` of the index, under the outside URL when there is one."""
        prefix = links_for(request, self.outside_url, name).prefix
        location = f"{prefix}/{name}/{subpath}"
        query = request.uri.partition(b"?")[2]
        target = location.encode("utf-8") + (b"?" + query if query else b"")
        request.setResponseCode(301)
        request.setHeader(b"location", target)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"moved to " + target + b"\n"

    async def _send_page(
        self,
        request: Request,
        mirror: MirrorIndex | None,
        entry: CachedPage,
        answer_type: str,
        urls: LinkRenderer,
        select: Callable[[Link], Link | None] | None = None,
    ) -> bytes | None:
        """The page, gzipped (compressed once, kept) when the client accepts it and it is
        not tiny; each encoding has its own ETag, and a 304 answers either. A large
        page is rendered in a thread to files, and sent from them."""
        offload = (
            mirror.offload
            if mirror
            else next((m.offload for m in self.indexes.values() if m.offload is not None), None)
        )
        rendered = await entry.render(answer_type, urls, select, offload, self.files.pages_root)
        etag = rendered.etag
        compress = rendered.size >= GZIP_MIN_BYTES and accepts_gzip(request)
        if page_headers(request, answer_type, entry.serial, etag, compress):
            return b""
        if rendered.spool is not None:
            return await send_spooled(request, rendered.spool, compress)
        if compress:
            body, etag = await rendered.gzip(offload), gzip_etag(etag)
            request.setHeader(b"content-encoding", b"gzip")
        else:
            body = rendered.body
        request.setHeader(b"etag", etag)
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def _cached_only(self, link: Link, mirror_name: str | None = None) -> Link | None:
        """Offline, only a mirror's cached files are links (their metadata and provenance
        only if cached); a stage's files are all here."""
        index = link.index or mirror_name
        if index is None or index not in self.indexes:
            return link
        h = link.storage_hash
        try:
            path = self.files.file_path(index, h[:3], h[3:16], link.filename)
        except UnsafePath:
            return None
        if not path.is_file():
            return None
        metadata = path.with_name(path.name + METADATA)
        if link.core_metadata is not False and not metadata.is_file():
            link = attrs.evolve(link, core_metadata=False)
        provenance = path.with_name(path.name + PROVENANCE)
        if link.provenance is not None and not provenance.is_file():
            link = attrs.evolve(link, provenance=None)
        return link
