"""The one Klein app: every route area of ``devpid.routes`` and the error answers, mounted.

All areas add their routes to a single ``Klein`` (one werkzeug map), so a
request is matched once, with nothing in between on the hot path, and every
area answers errors alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.resource import IResource

from devpid.auth.passwords import PasswordChecker
from devpid.auth.tokens import LoginTokens
from devpid.common.stats import Stats
from devpid.files.releases import ReleaseFiles
from devpid.files.store import FileStore
from devpid.http.devpi import NodeHeaders, WithNodeHeaders
from devpid.http.errors import ErrorAnswers
from devpid.mirror.index import MirrorIndex
from devpid.mirror.tee import DownloadManager
from devpid.ops.metrics import Metrics
from devpid.ops.status import StatusReport
from devpid.private.data import PrivateData
from devpid.private.releases import Releases
from devpid.replica.setup import Replication
from devpid.routes import RouteArea
from devpid.routes.access import Access
from devpid.routes.authcheck import AuthcheckRoutes
from devpid.routes.docs import DocRoutes
from devpid.routes.files import FileRoutes
from devpid.routes.findlinks import FindLinksRoutes
from devpid.routes.gate import LockdownGate
from devpid.routes.indexes import IndexRoutes
from devpid.routes.login import LoginRoutes
from devpid.routes.ops import OpsRoutes
from devpid.routes.projects import ProjectRoutes
from devpid.routes.push import Pusher
from devpid.routes.releases import ReleaseRoutes
from devpid.routes.simple import SimpleRoutes
from devpid.routes.stagefiles import StageFiles
from devpid.routes.stagepages import StagePages
from devpid.routes.uploads import UploadRoutes
from devpid.routes.users import UserRoutes
from devpid.web.app import Search, StatusPage, WebRoutes
from devpid.web.dispatch import BrowserDispatch
from devpid.web.login import LoginPage
from devpid.web.readme import Descriptions
from devpid.web.security import CrossSiteGuard


@attrs.frozen
class DevpidRoutes:
    """What the routes need, and the app they make.

    Frozen: the areas take their dependencies when this is built, so a field
    set later would reach none of them.
    """

    indexes: Mapping[str, MirrorIndex]
    downloads: DownloadManager
    files: FileStore
    stats: Stats
    status: StatusReport
    outside_url: str | None = None
    #: This app's Prometheus registry; without it /+metrics is 404.
    metrics: Metrics | None = None
    #: Users, indexes and who asks; without it only the mirrors are served.
    private: PrivateApi | None = None
    #: The web pages' own parts; with ``private``, browsers get devpi-web's pages.
    web: WebParts | None = None
    #: A primary's ``/+replica`` routes, or a replica's refusal of writes and its files.
    replication: Replication | None = None
    app: Klein = attrs.field(init=False, factory=Klein)
    #: devpi-web's pages, when ``web`` is given.
    web_routes: WebRoutes | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        data = self.private.data if self.private is not None else None
        pages = StagePages(data, self.indexes) if data is not None else None
        simple = SimpleRoutes(self.indexes, self.files, self.outside_url, data, pages)
        stages = None
        if self.private is not None:
            p = self.private
            stages = StageFiles(p.data, p.releases, p.release_files, p.access, p.offload)
        areas: list[RouteArea] = [
            OpsRoutes(self.status, self.metrics),
            simple,
            FileRoutes(
                self.indexes,
                self.downloads,
                self.files,
                self.stats,
                stages,
                self.replication.missing_stage_file if self.replication is not None else None,
            ),
        ]
        if self.replication is not None:
            areas.append(self.replication.routes)
        if self.private is not None:
            p = self.private
            pusher = Pusher(p.data, p.releases, p.release_files, p.access, p.offload)
            areas += [
                UploadRoutes(p.data, p.releases, p.release_files, p.access, p.offload, pusher),
                ReleaseRoutes(p.data, p.releases, p.release_files, p.access, p.offload),
                DocRoutes(p.data, p.release_files, p.offload),
                LoginRoutes(p.access.authenticator),
                AuthcheckRoutes(p.access, self.outside_url),
                UserRoutes(p.data, p.access, p.passwords, p.login_tokens, p.offload),
                IndexRoutes(p.data, p.access, self.indexes, self.outside_url, simple.project_list),
                ProjectRoutes(p.data, self.indexes, self.outside_url, simple.project_page),
                FindLinksRoutes(p.data, self.indexes, self.files, self.outside_url),
            ]
        for area in areas:
            area.register(self.app)
        ErrorAnswers().register(self.app)
        if self.private is not None and self.web is not None:
            web = WebRoutes(
                self.private.data,
                self.indexes,
                self.files,
                self.private.release_files,
                Descriptions(self.private.offload),
                CrossSiteGuard(self.web.secret),
                simple.refresh_project,
                self.web.status_page,
                self.web.search,
                self.outside_url,
                readable=self.private.access.readable_indexes,
            )
            object.__setattr__(self, "web_routes", web)  # frozen: set once, here

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        if self.private is None:
            return resource
        if self.web_routes is not None:
            resource = BrowserDispatch(resource, self.web_routes.app)
        resource = self._gated(resource)
        data = self.private.data
        headers = NodeHeaders(data.database.uuid, lambda: data.serial, data.catch_up_in_this_turn)
        if self.replication is not None:
            resource = self.replication.wrap(resource)
            if self.replication.primary_url is not None:  # a replica: its primary's uuid
                headers.primary_uuid = self.replication.primary_uuid
        return WithNodeHeaders(resource, headers)

    def _gated(self, resource: IResource) -> IResource:
        """``resource`` behind the lockdown (``devpid.routes.gate``), with the login page."""
        assert self.private is not None
        access = self.private.access
        gate = LockdownGate(resource, access, healthy=lambda: bool(self.status.report()["healthy"]))
        if self.web is not None:
            page = LoginPage(access, CrossSiteGuard(self.web.secret), self.outside_url)
            gate.login_page, gate.refusal_page = page.resource(), page.refusal
        return gate


@attrs.frozen
class WebParts:
    """What only the web pages need."""

    #: The server secret: the refresh form's tokens are keyed by it.
    secret: bytes = attrs.field(repr=False)
    status_page: StatusPage | None = None
    search: Search | None = None


@attrs.frozen
class PrivateApi:
    """What the private routes share: the data, who asks, and how passwords are hashed."""

    data: PrivateData
    access: Access
    passwords: PasswordChecker
    login_tokens: LoginTokens
    #: Releases and their files on disk.
    releases: Releases
    release_files: ReleaseFiles
    #: Runs argon2, archive checks and fsyncs off the reactor.
    offload: Callable[[Callable[[], Any]], Deferred[Any]]
