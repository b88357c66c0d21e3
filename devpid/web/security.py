"""What every page carries against injection and framing, and the cross-site check
of the web interface's one write action (refresh).

Pages are sent with a strict Content-Security-Policy: scripts, styles and images
only from devpid itself, no inline script or style, no frames, forms posting only
here. Escaping is Jinja2's autoescape; rendered descriptions are sanitised by
readme-renderer. Cross-site requests are refused twice over: a form must carry a
token bound to a ``SameSite=Strict`` cookie (double submit, the token an HMAC of
the cookie under the server secret), and a browser's own ``Sec-Fetch-Site`` or
``Origin`` saying the request comes from another site is refused outright.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import attrs
from twisted.web.server import Request

from devpid.http.errors import HTTPError
from devpid.http.request import is_cross_site

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
CSRF_COOKIE = b"devpid_csrf"
CSRF_FIELD = b"csrf_token"


def set_page_headers(request: Request) -> None:
    request.setHeader(b"content-type", b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"x-frame-options", b"DENY")
    request.setHeader(b"referrer-policy", b"same-origin")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"vary", b"Accept")


@attrs.frozen
class CrossSiteGuard:
    """Form tokens for the web's write actions, keyed by the server secret."""

    secret: bytes = attrs.field(repr=False)

    def _token_for(self, cookie: bytes) -> str:
        digest = hmac.new(self.secret, b"csrf:" + cookie, hashlib.sha256).hexdigest()
        return digest

    def token(self, request: Request) -> str:
        """The token to put in a form, setting the cookie it is bound to when missing."""
        cookie = request.getCookie(CSRF_COOKIE)
        if not cookie or len(cookie) != 32 or not cookie.isalnum():
            cookie = secrets.token_hex(16).encode("ascii")
            request.addCookie(CSRF_COOKIE, cookie, path=b"/", httpOnly=True, sameSite="strict")
        return self._token_for(cookie)

    def check(self, request: Request) -> None:
        """A 403 unless this is a same-site form post carrying its cookie's token."""
        if is_cross_site(request):
            raise HTTPError(403, "cross-site request refused")
        cookie = request.getCookie(CSRF_COOKIE) or b""
        sent = request.args.get(CSRF_FIELD, [b""])[0]
        if not cookie or not sent:
            raise HTTPError(403, "missing form token; reload the page and try again")
        expected = self._token_for(cookie).encode("ascii")
        if not hmac.compare_digest(expected, sent):
            raise HTTPError(403, "bad form token; reload the page and try again")
