"""``/+authcheck``: nginx's ``auth_request`` asks whether a request may go on.

nginx (the configuration ``devpid gen-config --require-auth`` writes) sends every
request's headers here first, with the request's own URI in ``X-Original-URI``
and its method in ``X-Original-Method``, and serves the request (a cached file
from disk, say) only on a 2xx. The answer is the lockdown gate's for that URI,
with the credentials this request carries: 200, 401 (with
``WWW-Authenticate: Basic realm="pypi"``, which nginx passes on) or 403, and 403
instead of 401 for devpi-client (devpi's rule). Behind a path prefix, the prefix
(the path of ``X-Outside-URL``, else of ``--outside-url``) is taken off first.

A request without ``X-Original-URI`` (a misconfigured proxy) gets 400, which
nginx turns into a 500 for its client: it fails closed.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import attrs
from klein import Klein
from twisted.web.server import Request

from devpid.auth.lockdown import decoded_path, is_health_check
from devpid.http.errors import HTTPError
from devpid.routes import labelled
from devpid.routes.access import Access
from devpid.routes.gate import BASIC_CHALLENGE, refusal_code

#: The longest ``X-Original-URI`` looked at (devpid's own URL limit is smaller).
MAX_ORIGINAL_URI = 16384
_METHOD = re.compile(rb"[A-Z]{1,20}")
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PUSH"]


def prefix_path(request: Request, outside_url: str | None) -> str:
    """The path nginx serves devpid under (``/pypi``), from ``X-Outside-URL`` or the
    configured outside URL; ``""`` at the root or when neither says."""
    value = request.getHeader(b"x-outside-url")
    text = value.decode("latin-1") if value is not None else outside_url
    if not text:
        return ""
    try:
        return urlsplit(text.strip()).path.rstrip("/")
    except ValueError:
        return ""


def original_target(uri: bytes, prefix: str) -> tuple[str | None, dict[bytes, list[bytes]]]:
    """``X-Original-URI`` as the decoded path the gate judges (None: it cannot be judged,
    so nothing is open) and its query arguments."""
    try:
        text = uri.decode("latin-1").strip()
        parts = urlsplit(text)  # also takes the absolute form nginx may pass on
    except ValueError:
        return None, {}
    raw_path = parts.path or "/"
    if prefix:
        if raw_path != prefix and not raw_path.startswith(prefix + "/"):
            return None, {}
        raw_path = raw_path[len(prefix) :] or "/"
    args = {
        key.encode("latin-1"): [v.encode("latin-1") for v in values]
        for key, values in parse_qs(parts.query, keep_blank_values=True).items()
    }
    return decoded_path(raw_path.encode("latin-1")), args


@attrs.define
class AuthcheckRoutes:
    access: Access
    outside_url: str | None = None

    def register(self, app: Klein) -> None:
        app.route("/+authcheck", methods=_METHODS)(labelled("login", self.authcheck))

    async def authcheck(self, request: Request) -> bytes:
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        uri = request.getHeader(b"x-original-uri")
        if uri is None or not uri.strip():
            raise HTTPError(400, "X-Original-URI missing: /+authcheck answers nginx's auth_request")
        if len(uri) > MAX_ORIGINAL_URI:
            raise HTTPError(400, "X-Original-URI too long")
        method = (request.getHeader(b"x-original-method") or b"GET").strip()
        if not _METHOD.fullmatch(method):
            raise HTTPError(400, "X-Original-Method is not an HTTP method")
        path, args = original_target(uri, prefix_path(request, self.outside_url))
        if path is not None and is_health_check(path, args):
            return b"ok\n"
        verdict = await self.access.verdict(request, method.decode("ascii"), path)
        if verdict.allowed:
            return b"ok\n"
        code = refusal_code(request, verdict)
        headers = {b"www-authenticate": BASIC_CHALLENGE} if code == 401 else None
        raise HTTPError(code, verdict.reason, headers)
