"""The web login page: ``/+login`` and ``/+logout`` for browsers, and the page a refused
browser sees.

The form posts a user and a password; the answer is devpi's login token (signed,
10 hours, ``devpid.auth.tokens``) in a cookie, ``HttpOnly`` and ``SameSite=Strict``
(``Secure`` over https), which ``devpid.routes.access`` accepts like devpi-client's
``X-Devpi-Auth``: for reads, and for other methods only from devpid's own pages.
Both forms carry the cross-site token of ``devpid.web.security`` (a login forced by
another site would log the browser in as somebody else). Wrong passwords count
towards the same throttle as ``POST /+login``. After logging in, the browser goes
back to the page it was refused (``?goto=``, or devpi-lockdown's ``?goto_url=``; a
path on this server only).

``LockdownGate`` sends these paths here (devpi-client's JSON ``POST /+login`` goes
to the API), and asks ``refusal`` for the page of a refused browser.
"""

from __future__ import annotations

import base64
import re
from typing import Any

import attrs
from klein import Klein
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import Request

from devpid import __version__
from devpid.auth.authenticate import Throttled
from devpid.auth.lockdown import Verdict
from devpid.auth.tokens import LOGIN_EXPIRATION
from devpid.http.devpi import root_url
from devpid.http.errors import ErrorAnswers, HTTPError
from devpid.routes import labelled
from devpid.routes.access import LOGIN_COOKIE, Access, client_address, known_principal
from devpid.web.negotiate import wants_html
from devpid.web.security import CSRF_FIELD, CrossSiteGuard, set_page_headers
from devpid.web.templating import Templates

#: A place to go back to after logging in: a path on this server, nothing else.
_GOTO = re.compile(r"/(?![/\\])[\x21-\x7e]{0,2000}")
#: The longest user name or password the form takes (devpi's are far shorter).
MAX_FIELD = 4096


def safe_goto(value: bytes | str | None) -> str:
    """``value`` if it is a local path (``/alice/dev?x``), else ``/``."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if value and _GOTO.fullmatch(value) and "\\" not in value:
        return value
    return "/"


def goto_of(request: Request) -> str:
    """``?goto=`` (``?goto_url=``, devpi-lockdown's nginx redirect), made safe."""
    values = request.args.get(b"goto") or request.args.get(b"goto_url") or [b""]
    return safe_goto(values[0])


def _field(request: Request, name: bytes) -> str:
    values = request.args.get(name) or [b""]
    try:
        text = values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"{name.decode()} is not UTF-8") from None
    if len(text) > MAX_FIELD:
        raise HTTPError(400, f"{name.decode()} is too long")
    return text


def _is_https(request: Request) -> bool:
    forwarded = (request.getHeader(b"x-forwarded-proto") or b"").strip().lower()
    return bool(request.isSecure()) or forwarded == b"https"


@attrs.define
class LoginPage:
    access: Access
    guard: CrossSiteGuard
    outside_url: str | None = None
    templates: Templates = attrs.field(factory=Templates)
    app: Klein = attrs.field(init=False, factory=Klein)

    def __attrs_post_init__(self) -> None:
        app = self.app
        app.route("/+login", methods=["GET", "HEAD"])(labelled("login", self.show))
        app.route("/+logout", methods=["GET", "HEAD"])(labelled("login", self.show))
        app.route("/+login", methods=["POST"])(labelled("login", self.log_in))
        app.route("/+logout", methods=["POST"])(labelled("login", self.log_out))
        app.handle_errors(HTTPError)(self.error_page)  # type: ignore[arg-type]
        ErrorAnswers().register(app)

    def resource(self) -> IResource:
        resource: IResource = self.app.resource()
        return resource

    # -- pages ---------------------------------------------------------------------

    def _page(self, request: Request, **context: Any) -> bytes:
        set_page_headers(request)
        context.setdefault("message", "")
        context.setdefault("user", None)
        context.setdefault("goto", "/")
        context.setdefault("heading", "Log in")
        context.update(
            title="Log in",
            query="",
            root=root_url(request, self.outside_url),
            static=f"/+static/{__version__}",
            csrf_field=CSRF_FIELD.decode(),
            csrf_token=self.guard.token(request),
        )
        return self.templates.render("login.html", context)

    async def show(self, request: Request) -> bytes:
        who = await self.access.who(request)
        goto = goto_of(request)
        return self._page(request, user=who.user, goto=goto)

    def error_page(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        request.setResponseCode(error.code)
        if 300 <= error.code < 400:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"see other\n"
        goto = goto_of(request)
        return self._page(request, message=error.reason, goto=goto)

    def refusal(self, request: Request, verdict: Verdict) -> bytes:
        """The page of a browser ``LockdownGate`` refused; b"" for anybody else."""
        if not wants_html(request):
            return b""
        request.setResponseCode(verdict.code)
        who = known_principal(request)
        user = who.user if who is not None else None
        heading = "Log in" if verdict.code == 401 else "Not allowed"
        goto = safe_goto(request.uri)
        return self._page(request, message=verdict.reason, user=user, goto=goto, heading=heading)

    # -- the forms -----------------------------------------------------------------

    def _redirect(self, request: Request, path: str) -> HTTPError:
        location = root_url(request, self.outside_url) + path
        return HTTPError(303, f"see {path}", {b"location": location.encode("utf-8")})

    async def log_in(self, request: Request) -> bytes:
        self.guard.check(request)
        user, password = _field(request, b"username"), _field(request, b"password")
        if not user or ":" in user:
            raise HTTPError(400, "give a user name and a password")
        try:
            token = await self.access.authenticator.login(user, password, client_address(request))
        except Throttled as e:
            seconds = b"%d" % max(1, round(e.retry_after))
            raise HTTPError(429, str(e), {b"retry-after": seconds}) from None
        if token is None:
            raise HTTPError(401, "invalid user name or password")
        value = base64.b64encode(f"{user}:{token}".encode())
        request.addCookie(
            LOGIN_COOKIE,
            value,
            path=b"/",
            max_age=str(LOGIN_EXPIRATION).encode(),
            httpOnly=True,
            secure=_is_https(request),
            sameSite="strict",
        )
        raise self._redirect(request, goto_of(request))

    def log_out(self, request: Request) -> bytes:
        self.guard.check(request)
        request.addCookie(
            LOGIN_COOKIE,
            b"",
            path=b"/",
            max_age=b"0",
            expires=b"Thu, 01 Jan 1970 00:00:00 GMT",
            httpOnly=True,
            secure=_is_https(request),
            sameSite="strict",
        )
        raise self._redirect(request, "/+login")
