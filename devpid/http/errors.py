"""Every error answer of the routes: one line, never a traceback.

A route raises ``HTTPError(code, reason)``; the private data raises
``Refused`` (devpi's code and message), ``InvalidConfig`` (a 400) and
``DatabaseError`` (a 503: nothing written); routing itself raises werkzeug's
``NotFound`` and ``MethodNotAllowed``; anything else is a bug, logged here.
``ErrorAnswers`` turns them all into ``<code> <phrase>: <reason>`` on the one
Klein app, or devpi's ``{"message": ...}`` for clients asking for
``application/json``, so every route area answers errors alike.
"""

from __future__ import annotations

import json

from klein import Klein
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.server import Request
from werkzeug.exceptions import HTTPException

from devpid.private.data import Refused
from devpid.private.database import DatabaseError
from devpid.private.names import InvalidConfig

#: JSON answers up to this size are indented, as devpi indents them (for people
#: reading them with curl); larger ones (a project of thousands of versions) are not.
INDENT_MAX = 256 * 1024
#: Reason phrases twisted.web does not know.
_PHRASES = {429: b"Too Many Requests"}


class HTTPError(Exception):
    """An answer other than 200, with a one-line reason for the body (and extra headers)."""

    def __init__(self, code: int, reason: str, headers: dict[bytes, bytes] | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.headers = headers or {}


def json_answer(
    request: Request, code: int, document: object, phrase: bytes | None = None
) -> bytes:
    """``document`` as devpi formats JSON answers, typed exactly ``application/json``
    (devpi-client compares for equality, and drops the ``message`` otherwise)."""
    request.setResponseCode(code, phrase)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    compact = json.dumps(document, separators=(",", ":"))
    if len(compact) > INDENT_MAX:
        # indenting runs in pure Python, ten times slower: big documents go compact
        return compact.encode("utf-8") + b"\n"
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def plain_error(request: Request, code: int, reason: str) -> bytes:
    """Set ``code`` on ``request`` and return its one-line body: ``404 Not Found: no index a/b``.

    A client that asks for ``application/json`` (devpi-client) gets devpi's
    ``{"message": ...}`` instead, typed exactly ``application/json``.
    """
    phrase_bytes = _PHRASES.get(code)
    if b"application/json" in (request.getHeader(b"accept") or b""):
        return json_answer(request, code, {"message": " ".join(reason.split())}, phrase_bytes)
    request.setResponseCode(code, phrase_bytes)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    phrase = (phrase_bytes or http.RESPONSES.get(code, b"Error")).decode()
    line = " ".join(f"{code} {phrase}: {reason}".split())
    return line.encode("utf-8", errors="replace") + b"\n"


class ErrorAnswers:
    """The Klein error handlers, tried in the order ``register`` adds them."""

    log = Logger()

    def register(self, app: Klein) -> None:
        app.handle_errors(HTTPError)(self.http_error)  # type: ignore[arg-type]
        app.handle_errors(HTTPException)(self.werkzeug_error)  # type: ignore[arg-type]
        app.handle_errors(Refused)(self.refused)  # type: ignore[arg-type]
        app.handle_errors(InvalidConfig)(self.invalid_config)  # type: ignore[arg-type]
        app.handle_errors(DatabaseError)(self.database_error)  # type: ignore[arg-type]
        app.handle_errors(Exception)(self.unexpected_error)  # type: ignore[arg-type]

    def http_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        return plain_error(request, error.code, error.reason)

    def werkzeug_error(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPException)
        code = error.code or 500
        if 300 <= code < 400:
            # Werkzeug's slash redirects; devpid's own redirects are explicit.
            return plain_error(request, 404, "not found")
        reason = {404: "not found", 405: "method not allowed"}.get(code, error.name.lower())
        return plain_error(request, code, reason)

    def refused(self, request: Request, failure: Failure) -> bytes:
        """A change or lookup of the private data devpi answers with its own code."""
        error = failure.value
        assert isinstance(error, Refused)
        return plain_error(request, error.code, error.message)

    def invalid_config(self, request: Request, failure: Failure) -> bytes:
        """A name or configuration devpi refuses: 400 with its message."""
        return plain_error(request, 400, str(failure.value))

    def database_error(self, request: Request, failure: Failure) -> bytes:
        """The private data could not be written (another worker held it too long, a
        full disk): nothing was changed, the client may retry."""
        self.log.warn("private data: {error}", error=str(failure.value))
        request.setHeader(b"retry-after", b"1")
        return plain_error(request, 503, "the private data is busy or cannot be written; retry")

    def unexpected_error(self, request: Request, failure: Failure) -> bytes:
        self.log.failure("unexpected error handling {uri}", failure, uri=request.uri)
        return plain_error(request, 500, "internal error (logged on the server)")
