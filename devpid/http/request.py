"""What the routes read from a request, and how a streaming route waits on one.

Small helpers shared by the route areas: a header as text, whether the client
is an installer, ETag matching, content negotiation (media type, gzip), the
link prefix a client asked for (``X-Outside-URL``), and the Deferred that
fires when a streamed response is over.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.web.server import Request

from devpid.http.errors import HTTPError
from devpid.simple.render import LinkRenderer, NotAcceptable, negotiate

INSTALLER_AGENTS = (b"pip/", b"uv/", b"poetry/", b"pdm/", b"hatch/", b"twine/")


def header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else None


def has_query_key(request: Request, key: bytes) -> bool:
    """Whether the query string names ``key``, with a value or not (``?force``,
    ``?force=``, ``?force=1``): devpi's flags. twisted.web's ``args`` drops bare keys."""
    query = request.uri.partition(b"?")[2]
    return any(part.partition(b"=")[0] == key for part in query.split(b"&"))


def is_installer(request: Request) -> bool:
    agent = request.getHeader(b"user-agent") or b""
    accept = request.getHeader(b"accept") or b""
    return any(token in agent for token in INSTALLER_AGENTS) or b"vnd.pypi.simple" in accept


def etag_matches(if_none_match: bytes | None, etag: bytes) -> bool:
    if not if_none_match:
        return False
    candidates = [c.strip().removeprefix(b"W/") for c in if_none_match.split(b",")]
    return etag in candidates or b"*" in candidates


def accepts_gzip(request: Request) -> bool:
    """Whether ``Accept-Encoding`` allows gzip: listed (or ``*``) with a q-value above 0."""
    value = request.getHeader(b"accept-encoding")
    if not value:
        return False
    qualities: dict[str, float] = {}
    for item in value.decode("latin-1").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, number = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(number.strip())
                except ValueError:
                    quality = 0.0
        coding = coding.lower()
        coding = "gzip" if coding == "x-gzip" else coding
        qualities[coding] = max(quality, qualities.get(coding, 0.0))
    quality = qualities.get("gzip", qualities.get("*", 0.0))
    return quality > 0


def media_type(request: Request) -> str:
    """The media type to answer in (``Accept``, or ``?format=``); 406 when none fits."""
    fmt = request.args.get(b"format", [None])[0]
    try:
        return negotiate(
            header(request, b"accept"), fmt.decode("latin-1") if fmt is not None else None
        )
    except NotAcceptable as e:
        raise HTTPError(406, str(e)) from None


def links_for(request: Request, outside_url: str | None, index: str) -> LinkRenderer:
    """Links under the client's ``X-Outside-URL``, else the configured outside URL, else root."""
    prefix = header(request, b"x-outside-url")
    if prefix is not None:
        try:
            parts = urlsplit(prefix.strip())
        except ValueError:  # e.g. an unclosed IPv6 bracket
            raise HTTPError(400, "X-Outside-URL must be an http(s) URL") from None
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or any(c in prefix for c in "\"'<> \t\r\n")
        ):
            raise HTTPError(400, "X-Outside-URL must be an http(s) URL")
        prefix = prefix.strip().rstrip("/")
    else:
        prefix = outside_url or ""
    return LinkRenderer(prefix, index)


def is_cross_site(request: Request) -> bool:
    """What the browser itself says: another site's page sent this request."""
    fetch_site = (request.getHeader(b"sec-fetch-site") or b"").lower()
    if fetch_site in (b"cross-site", b"same-site"):
        return True
    origin = request.getHeader(b"origin")
    if origin is None or origin == b"null":
        return origin == b"null"
    try:
        netloc = urlsplit(origin.decode("latin-1")).netloc.lower()
    except ValueError:
        return True
    host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
    if netloc == host:
        return False
    # nginx passes ``Host: $host``, without the port the browser used
    return ":" in host or netloc.rpartition(":")[0] != host


def until_finished(request: Request) -> Deferred[None]:
    """Fires when the response is complete or the client has gone.

    A route that streams awaits this, so Klein neither finishes the request
    early nor (when cancelled on disconnect) touches the shared download.
    """
    finished: Deferred[None] = Deferred()

    def done(_: object) -> None:
        if not finished.called:
            finished.callback(None)

    request.notifyFinish().addBoth(done)
    return finished
