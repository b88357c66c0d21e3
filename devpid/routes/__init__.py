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

Each route is registered through ``labelled``, which notes its label (one of
``devpid.ops.requests.ROUTES``) on the request as Klein dispatches to it: the
access log counts by what the router decided, whatever the path's spelling.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

from klein import Klein

from devpid.http.errors import HTTPError
from devpid.mirror.index import MirrorIndex
from devpid.ops.requests import ROUTE_ATTRIBUTE

_Result = TypeVar("_Result")


def labelled(route: str, handler: Callable[..., _Result]) -> Callable[..., _Result]:
    """``handler``, noting ``route`` on the request before it runs."""

    @functools.wraps(handler)
    def handle(request: Any, *args: Any, **kwargs: Any) -> _Result:
        setattr(request, ROUTE_ATTRIBUTE, route)
        return handler(request, *args, **kwargs)

    # Klein names a route's endpoint after its function, and a second function of the
    # same name silently takes over the first's routes: ``Class.method`` is unique.
    handle.__name__ = handle.__qualname__
    return handle


def unrouted(request: Any) -> HTTPError:
    """The 404 of a path a route's pattern took but devpi's URL space has not (a ``+``
    segment where a name belongs): counted as ``other``, like the router's own 404s."""
    setattr(request, ROUTE_ATTRIBUTE, "other")
    return HTTPError(404, "not found")


class RouteArea(Protocol):
    def register(self, app: Klein) -> None:
        """Add this area's routes to ``app``."""


def mirror_named(indexes: Mapping[str, MirrorIndex], user: str, index: str) -> MirrorIndex:
    """The index ``<user>/<index>`` of a URL, or a 404."""
    mirror = indexes.get(f"{user}/{index}")
    if mirror is None:
        raise HTTPError(404, f"no index {user}/{index}")
    return mirror
