"""The one Klein app: every route area of ``devpid.routes`` and the error answers, mounted.

All areas add their routes to a single ``Klein`` (one werkzeug map), so a
request is matched once, with nothing in between on the hot path, and every
area answers errors alike.
"""

from __future__ import annotations

import attrs
from klein import Klein
from twisted.web.resource import IResource

from devpid.common.stats import Stats
from devpid.files.store import FileStore
from devpid.http.errors import ErrorAnswers
from devpid.mirror.index import MirrorIndex
from devpid.mirror.tee import DownloadManager
from devpid.ops.metrics import Metrics
from devpid.ops.status import StatusReport
from devpid.routes import RouteArea
from devpid.routes.files import FileRoutes
from devpid.routes.ops import OpsRoutes
from devpid.routes.simple import SimpleRoutes


@attrs.frozen
class DevpidRoutes:
    """What the routes need, and the app they make.

    Frozen: the areas take their dependencies when this is built, so a field
    set later would reach none of them.
    """

    indexes: dict[str, MirrorIndex]
    downloads: DownloadManager
    files: FileStore
    stats: Stats
    status: StatusReport
    outside_url: str | None = None
    #: This app's Prometheus registry; without it /+metrics is 404.
    metrics: Metrics | None = None
    app: Klein = attrs.field(init=False, factory=Klein)

    def __attrs_post_init__(self) -> None:
        areas: list[RouteArea] = [
            OpsRoutes(self.status, self.metrics),
            SimpleRoutes(self.indexes, self.files, self.outside_url),
            FileRoutes(self.indexes, self.downloads, self.files, self.stats),
        ]
        for area in areas:
            area.register(self.app)
        ErrorAnswers().register(self.app)

    def resource(self) -> IResource:
        return self.app.resource()
