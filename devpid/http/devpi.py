"""devpi's answer conventions: the JSON envelope, its error form, and the headers on every answer.

devpi-client compares ``Content-Type`` with ``application/json`` for equality
and only then prints an error's ``message``, so JSON answers carry exactly that
type. Every answer carries ``X-Devpi-Api-Version: 2`` (the client refuses
anything else) and the serial of the private data it was answered at.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

from devpid import __version__
from devpid.http.errors import HTTPError, json_answer
from devpid.http.request import links_for

#: The devpi-server API level devpid answers as (``X-Devpi-Server-Version``,
#: ``versioninfo["devpi-server"]`` of /+status): devpi-client reads both.
DEVPI_API_LEVEL = "6.20.3"
API_VERSION = b"2"


def wants_json(request: Request) -> bool:
    """devpi's ``json_preferred``: ``application/json`` appears in ``Accept``."""
    return b"application/json" in (request.getHeader(b"accept") or b"")


def envelope(
    request: Request,
    code: int = 200,
    *,
    result: Any = None,
    type: str | None = None,
    message: str | None = None,
) -> bytes:
    """``{"result", "type", "message"}`` (each only when given) as devpi formats it."""
    document: dict[str, Any] = {}
    if result is not None:
        document["result"] = result
        if type is not None:
            document["type"] = type
    if message:
        document["message"] = message
    return json_answer(request, code, document)


def set_serial(request: Request, serial: int) -> None:
    request.setHeader(b"x-devpi-serial", b"%d" % serial)


@attrs.define
class NodeHeaders:
    """What every answer says about this node, and the catch-up before each request."""

    uuid: str
    serial: Callable[[], int]
    catch_up: Callable[[], object]
    #: A replica's: its primary's uuid (None until heard from); None on a primary.
    primary_uuid: Callable[[], str | None] | None = None

    def apply(self, request: Request) -> None:
        self.catch_up()
        uuid = self.uuid.encode("ascii")
        primary = self.primary_uuid() if self.primary_uuid is not None else None
        primary_uuid = primary.encode("ascii") if primary else uuid
        request.setHeader(b"x-devpi-api-version", API_VERSION)
        request.setHeader(b"x-devpi-server-version", DEVPI_API_LEVEL.encode())
        request.setHeader(b"x-devpi-uuid", uuid)
        request.setHeader(b"x-devpi-primary-uuid", primary_uuid)
        request.setHeader(b"x-devpi-master-uuid", primary_uuid)
        request.setHeader(b"x-devpid-version", __version__.encode())
        set_serial(request, self.serial())


class WithNodeHeaders(Resource):
    """The app's resource, with ``NodeHeaders`` applied before every request reaches it."""

    isLeaf = True
    log = Logger()

    def __init__(self, inner: IResource, headers: NodeHeaders) -> None:
        super().__init__()
        self.inner = inner
        self.headers = headers

    def render(self, request: Request) -> Any:
        try:
            self.headers.apply(request)
        except Exception:
            # the private data could not be read: answer from what is in memory
            self.log.failure("catching up with the private data")
        return self.inner.render(request)


def root_url(request: Request, outside_url: str | None) -> str:
    """devpi's absolute URL root: ``X-Outside-Url``, else ``--outside-url``, else the
    client's own ``Host`` (devpi-client compares printed URLs with the one it used)."""
    prefix = links_for(request, outside_url, "").prefix
    if prefix:
        return prefix
    host = (request.getHeader(b"host") or b"localhost").decode("latin-1")
    scheme = "https" if request.isSecure() else "http"
    return f"{scheme}://{host}"


def json_body(request: Request) -> Any:
    """The request's JSON body; 400 ``Bad request: could not decode json`` otherwise."""
    content = request.content
    raw = content.read() if content is not None else b""
    try:
        document = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise HTTPError(400, "Bad request: could not decode json") from None
    if _depth_over(document, MAX_JSON_DEPTH):
        raise HTTPError(400, f"Bad request: JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return document


#: No configuration needs more; deeper documents would reach recursion limits later.
MAX_JSON_DEPTH = 32


def _depth_over(document: Any, limit: int) -> bool:
    """Whether lists and objects nest deeper than ``limit`` (iterative: no recursion)."""
    pending = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False
