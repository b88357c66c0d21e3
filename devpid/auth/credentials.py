"""Credentials offered on a request, in devpi's precedence order; garbage is skipped."""

from __future__ import annotations

import base64
import binascii

import attrs

MAX_CREDENTIALS_BYTES = 4096


@attrs.frozen
class Credentials:
    user: str
    secret: str
    source: str  # "x-devpi-auth" | "basic"


def _decode(value: bytes, source: str) -> Credentials | None:
    if len(value) > MAX_CREDENTIALS_BYTES:
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, sep, secret = text.partition(":")
    if not sep or not user:
        return None
    return Credentials(user, secret, source)


def offered_credentials(
    x_devpi_auth: bytes | None, authorization: bytes | None
) -> list[Credentials]:
    """X-Devpi-Auth first, then Basic; other Authorization schemes are ignored."""
    found: list[Credentials] = []
    if x_devpi_auth is not None:
        creds = _decode(x_devpi_auth, "x-devpi-auth")
        if creds is not None:
            found.append(creds)
    if authorization is not None:
        scheme, _, rest = authorization.strip().partition(b" ")
        if scheme.lower() == b"basic":
            creds = _decode(rest, "basic")
            if creds is not None:
                found.append(creds)
    return found
