"""The lockdown: what a request must show before it is let in, decided from its URL alone.

``--require-auth`` closes the whole server to anonymous requests, and an index's
``acl_pkg_read`` closes that index to everyone not listed. ``Lockdown.verdict``
answers for one request (its method and path) and one principal: let in, 401
(say who you are) or 403 (you may not). The answer itself comes from
``Policy.permits(PKG_READ)``, the one place permissions are decided.

Open to anyone whatever the settings: ``/+login`` and ``/+logout`` (devpi-client's
login and the web's login page), every ``+api`` (how clients find the login),
``/+authcheck`` (it answers for another URL), ``/+static/`` (the login page's
style sheet), ``/+replica/`` (replicas prove themselves with the replication
secret) and ``/+status?check=1`` (load balancers; see ``devpid.routes.gate``).

Reading an index (``GET``/``HEAD`` of anything under ``/<user>/<index>``) needs
``PKG_READ`` on it and on every index of its resolution order: an index whose base
is closed to a reader is closed to that reader too, so nothing of the base (names,
versions, files) shows through a derived index's pages. Other methods on an index
need only what ``--require-auth`` asks (a known user); the route checks its own
permission (``acl_upload``, ownership) as before.

The path is taken as the router takes it: percent-escapes decoded, repeated
slashes merged. A path that does not decode is never open.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote

import attrs

from devpid.auth.acl import ANONYMOUS, Action, Policy, Principal
from devpid.private.data import PrivateData
from devpid.private.resolve import resolution_order

#: Paths open to anyone, exactly (after decoding).
OPEN_PATHS = frozenset({"/+login", "/+logout", "/+api", "/+authcheck"})
#: Path prefixes open to anyone: each is an area with its own rule.
OPEN_PREFIXES = ("/+static/", "/+replica/")
#: The health check's path: open only with ``?check=1`` (any value but 0).
STATUS_PATH = "/+status"
READ_METHODS = frozenset({"GET", "HEAD"})
#: Verdicts on indexes kept per serial (principals times indexes read).
MAX_REMEMBERED_VERDICTS = 10_000
_SLASHES = re.compile(r"/{2,}")


@attrs.frozen
class Verdict:
    """200: let in; 401: credentials needed; 403: these credentials may not."""

    code: int
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.code == 200


LET_IN = Verdict(200)


def decoded_path(raw: bytes | str) -> str | None:
    """``raw`` (a request's path) as the router sees it, or None if it does not decode."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        path = unquote(text, errors="strict")
    except UnicodeDecodeError:
        return None
    if not path.startswith("/") or "\x00" in path:
        return None
    return _SLASHES.sub("/", path)


def is_health_check(path: str, args: Mapping[bytes, list[bytes]]) -> bool:
    """``/+status?check=1`` (``check`` given and not 0), as the status route reads it."""
    return path == STATUS_PATH and args.get(b"check", [b"0"])[0] not in (b"0", b"")


def is_open(path: str | None) -> bool:
    """Whether ``path`` (decoded) is open to anyone: the login, discovery, static files,
    replication and the authcheck itself."""
    if path is None:
        return False
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return True
    parts = path.strip("/").split("/")
    # /<user>/+api and /<user>/<index>/+api
    return parts[-1] == "+api" and len(parts) in (2, 3) and not parts[0].startswith("+")


def index_of(path: str) -> str | None:
    """The ``user/index`` a decoded path is under, or None (``/``, ``/+status``, ``/alice``)."""
    parts = path.lstrip("/").split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        return None
    if parts[0].startswith("+") or parts[1].startswith("+"):
        return None
    return f"{parts[0]}/{parts[1]}"


@attrs.define
class Lockdown:
    """The gate's decisions, over the policy and the index configurations."""

    policy: Policy
    data: PrivateData
    #: The indexes anonymous may not read, by the serial they were found at.
    _closed: tuple[int, frozenset[str]] = attrs.field(default=(-1, frozenset()))
    #: Verdicts on reading an index, by principal and index, at one serial.
    _verdicts: tuple[int, dict[tuple[Principal, str], Verdict]] = attrs.field(
        factory=lambda: (-1, {})
    )

    @property
    def require_auth(self) -> bool:
        return self.policy.require_auth

    def closed_indexes(self) -> frozenset[str]:
        """The indexes anonymous may not read: those whose ``acl_pkg_read`` leaves it out,
        and those resolving through one (found again per serial)."""
        serial = self.data.serial
        if self._closed[0] != serial:
            shut = {
                name
                for name, config in self.data.indexes().items()
                if not self.policy.permits(
                    ANONYMOUS, Action.PKG_READ, index=name, index_config=config
                )
            }
            closed = frozenset(
                name for name in self.data.indexes() if not shut.isdisjoint(self._read_order(name))
            )
            self._closed = (serial, closed)
        return self._closed[1]

    def needs_nothing(self, method: str, path: str | None) -> bool:
        """True when no principal can change the answer, so none need be worked out:
        the path is open, or neither ``--require-auth`` nor a closed index applies."""
        return is_open(path) or self.needs_nothing_beyond_open(method, path)

    def needs_nothing_beyond_open(self, method: str, path: str | None) -> bool:
        """``needs_nothing`` for a path that is not open."""
        if self.require_auth:
            return False
        closed = self.closed_indexes()
        if not closed or method not in READ_METHODS:
            return True
        if path is None:
            return False
        index = index_of(path)
        return index is None or index not in closed

    def verdict(self, who: Principal, method: str, path: str | None) -> Verdict:
        """May ``who`` send ``method`` to ``path`` (decoded; None: it did not decode)?"""
        if is_open(path):
            return LET_IN
        return self.verdict_shut(who, method, path)

    def verdict_shut(self, who: Principal, method: str, path: str | None) -> Verdict:
        """``verdict`` for a path that is not open."""
        if not self.policy.permits(who, Action.PKG_READ):
            return self._refused(who, "authentication required")
        if path is None or method not in READ_METHODS:
            return LET_IN
        index = index_of(path)
        return LET_IN if index is None else self.reading(who, index)

    def may_read(self, who: Principal, index: str) -> bool:
        """Whether ``who`` may read ``index`` (and every index it resolves through)."""
        return self.policy.permits(who, Action.PKG_READ) and self.reading(who, index).allowed

    def reading(self, who: Principal, index: str) -> Verdict:
        """The verdict on ``who`` reading ``index``, kept per principal and index."""
        serial = self.data.serial
        if self._verdicts[0] != serial:
            self._verdicts = (serial, {})
        known = self._verdicts[1]
        found = known.get((who, index))
        if found is None:
            found = self._index_verdict(who, index)
            if len(known) >= MAX_REMEMBERED_VERDICTS:
                known.clear()
            known[(who, index)] = found
        return found

    def _index_verdict(self, who: Principal, index: str) -> Verdict:
        for name in self._read_order(index):
            config = self.data.index(name)
            if config is None:
                continue  # the route answers 404
            if not self.policy.permits(who, Action.PKG_READ, index=name, index_config=config):
                if name == index:
                    return self._refused(who, f"no permission to read {name}")
                return self._refused(who, f"no permission to read {name}, a base of {index}")
        return LET_IN

    def _read_order(self, index: str) -> list[str]:
        """``index`` and the indexes it resolves through (itself alone if unknown)."""
        return resolution_order(index, self.data.stages()) or [index]

    def _refused(self, who: Principal, reason: str) -> Verdict:
        return Verdict(self.policy.denial_status(who, Action.PKG_READ), reason)
