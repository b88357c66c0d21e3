"""Login tokens (devpi's signed, expiring shape) and API tokens (stored as digests)."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import Any

import attrs
from itsdangerous import TimedSerializer, TimestampSigner
from twisted.internet.interfaces import IReactorTime

LOGIN_EXPIRATION = 36000
#: The longest an API token may live (a year), and how long it lives unless told.
MAX_API_TOKEN_LIFETIME = 365 * 24 * 3600
DEFAULT_API_TOKEN_LIFETIME = 90 * 24 * 3600


class _ClockSigner(TimestampSigner):
    def __init__(self, *args: Any, clock: IReactorTime, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clock = clock

    def get_timestamp(self) -> int:
        return int(self._clock.seconds())


@attrs.define
class LoginTokens:
    secret: bytes
    clock: IReactorTime

    def _serializer(self) -> TimedSerializer[str]:
        return TimedSerializer(
            self.secret, signer=_ClockSigner, signer_kwargs={"clock": self.clock}
        )

    def issue(self, user: str) -> str:
        """devpi's token: ``[user, [], true]`` signed with a timestamp; ASCII, no ':'."""
        return self._serializer().dumps([user, [], True])

    def user_of(self, token: str) -> str | None:
        try:
            payload = self._serializer().loads(token, max_age=LOGIN_EXPIRATION)
        except Exception:
            return None
        if isinstance(payload, list) and len(payload) == 3 and isinstance(payload[0], str):
            return payload[0]
        return None


API_TOKEN_PREFIX = "devpid_"
_API_TOKEN_RE = re.compile(r"devpid_([A-Za-z0-9_-]{12})_[A-Za-z0-9_-]{43}")


@attrs.frozen
class NewApiToken:
    token_id: str
    plaintext: str
    digest: str


def new_api_token() -> NewApiToken:
    token_id = secrets.token_urlsafe(9)
    plaintext = f"{API_TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
    return NewApiToken(token_id, plaintext, api_token_digest(plaintext))


def api_token_id(text: str) -> str | None:
    """The id if ``text`` has an API token's shape (fixed lengths, since ids may hold '_')."""
    match = _API_TOKEN_RE.fullmatch(text)
    return match.group(1) if match else None


def api_token_digest(text: str) -> str:
    """A plain sha256 suffices: the secret has 256 random bits."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
