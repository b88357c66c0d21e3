"""One URL, two answers: a browser gets the web page, everybody else the API.

devpi-web's pages live at the API's own URLs (``/``, ``/alice/dev``,
``/alice/dev/hello/1.0``), so links can be shared. ``BrowserDispatch`` sits in
front of both Klein apps: a request the web app has a route for goes there when
it comes from a browser (``devpid.web.negotiate``), or always for the web's own
paths (``/+static/``, the refresh form's ``POST``); anything else goes to the
API unchanged. A browser asking for ``/alice/dev/`` is redirected to the
slashless page, as devpi-web does.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import unquote

from klein import Klein
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import MapAdapter, RequestRedirect

from devpid.web.negotiate import wants_html

#: Endpoints that answer whatever the client accepts (their paths are the web's own).
ALWAYS_WEB = frozenset({"WebRoutes.static_file", "WebRoutes.refresh_form", "WebRoutes.search_page"})


class BrowserDispatch(Resource):
    isLeaf = True

    def __init__(self, api: IResource, web: Klein) -> None:
        super().__init__()
        self.api = api
        self.web = web.resource()
        self._routes: MapAdapter = web.url_map.bind("localhost")
        # The web's routes are fixed: a path's endpoint is worked out once, not per
        # request (werkzeug's match, a failing one above all, was ~8% of a cached page).
        self._endpoint = functools.lru_cache(maxsize=4096)(self._endpoint)  # type: ignore[method-assign]

    def _endpoint(self, path: str, method: str) -> str | None:
        try:
            endpoint, _ = self._routes.match(path, method=method)
        except RequestRedirect:
            return None
        except HTTPException:
            return None
        return str(endpoint)

    def render(self, request: Request) -> Any:
        method = request.method.decode("ascii", "replace")
        try:
            path = unquote(request.path.decode("utf-8"), errors="strict")
        except UnicodeDecodeError:
            return self.api.render(request)
        endpoint = self._endpoint(path, method)
        if endpoint is not None and (endpoint in ALWAYS_WEB or wants_html(request)):
            return self.web.render(request)
        if (
            method in ("GET", "HEAD")
            and len(path) > 1
            and path.endswith("/")
            # before the second match: an installer's request (most of them) needs none
            and wants_html(request)
            and self._endpoint(path.rstrip("/"), method) not in (None, *ALWAYS_WEB)
        ):
            location = request.path.rstrip(b"/")
            query = request.uri.partition(b"?")[2]
            request.setResponseCode(302)
            request.setHeader(b"location", location + (b"?" + query if query else b""))
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"moved\n"
        return self.api.render(request)
