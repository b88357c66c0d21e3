"""Whether a request is a person's browser asking for a page.

devpi-web serves its pages at the API's own URLs: what decides is ``Accept``.
A browser lists ``text/html`` first; devpi-client and scripts ask for
``application/json``; installers are recognised by their user agent or the
simple API's media types; ``curl`` (``*/*``) keeps getting the API.
"""

from __future__ import annotations

from twisted.web.server import Request

from devpid.http.devpi import wants_json
from devpid.http.request import is_installer
from devpid.simple.render import parse_accept


def wants_html(request: Request) -> bool:
    """A browser: ``text/html`` asked for by name, no JSON, and not an installer."""
    if is_installer(request) or wants_json(request):
        return False
    accept = (request.getHeader(b"accept") or b"").decode("latin-1")
    return any(media == "text/html" and quality > 0 for media, quality in parse_accept(accept))
