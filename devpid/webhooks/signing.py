"""The signature of a webhook body: GitHub's ``sha256=<hex HMAC-SHA256>`` with the index's secret.

A receiver computes the HMAC of the raw body it got with the same secret and
compares in constant time (``verify``). Without a ``webhook_secret`` deliveries
are sent unsigned: no ``X-Devpid-Signature`` header.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    """The ``X-Devpid-Signature`` value of ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return PREFIX + digest


def verify(body: bytes, secret: str, signature: str | None) -> bool:
    """Whether ``signature`` (the header as received) signs ``body`` with ``secret``."""
    if not signature:
        return False
    return hmac.compare_digest(sign(body, secret).encode(), signature.strip().encode())
