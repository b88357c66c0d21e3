"""Routes by area, all on the one Klein app of ``devpid.http.app``.

devpi's URL space: ``/<user>/<index>/+simple/[<project>/]`` and
``/<user>/<index>/+f/<h3>/<h13>/<filename>``, plus ``/+status`` and ``/+metrics``.

- ``simple``: an index's JSON, the project list, a project's page, refresh
- ``files``: a distribution file (or its metadata), from the cache or joining its download
- ``ops``: ``/+status`` and ``/+metrics``, for monitors

Each area is a class whose ``register(app)`` adds its routes to the shared app,
with its dependencies through its fields. A new area is a module here and one
line in ``DevpidRoutes``. No caching or I/O policy lives in the routes: they
parse the request, ask the index or the tee, and render the answer.
"""

from __future__ import annotations

from typing import Protocol

from klein import Klein

from devpid.http.errors import HTTPError
from devpid.mirror.index import MirrorIndex


class RouteArea(Protocol):
    def register(self, app: Klein) -> None:
        """Add this area's routes to ``app``."""


def mirror_named(indexes: dict[str, MirrorIndex], user: str, index: str) -> MirrorIndex:
    """The index ``<user>/<index>`` of a URL, or a 404."""
    mirror = indexes.get(f"{user}/{index}")
    if mirror is None:
        raise HTTPError(404, f"no index {user}/{index}")
    return mirror
