"""The replication secret shared by a primary and its replicas, and the signature it makes.

Every request a replica sends to ``/+replica/`` carries ``X-Devpid-Replication:
<unix time>:<hex HMAC-SHA256 of the time, method and path>``. The secret itself
never crosses the network, a captured signature is good for one path and a few
minutes, and the primary checks it in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

import attrs

HEADER = b"x-devpid-replication"
#: How far apart (seconds) a signature's time and the primary's clock may be.
MAX_SKEW = 300.0
#: The fewest characters a secret file must hold (``secrets.token_hex(32)`` gives 64).
MIN_LENGTH = 32


class SecretError(Exception):
    """The secret file cannot be used; the message is one line."""


@attrs.frozen
class ReplicationSecret:
    value: bytes = attrs.field(repr=False)

    @classmethod
    def from_file(cls, path: Path) -> ReplicationSecret:
        try:
            raw = path.read_bytes()
            mode = os.stat(path).st_mode
        except OSError as e:
            raise SecretError(
                f"cannot read --replication-secret-file {path}: {e.strerror}"
            ) from None
        value = raw.strip()
        if len(value) < MIN_LENGTH or any(b <= 32 or b > 126 for b in value):
            raise SecretError(
                f"--replication-secret-file {path} must hold one line of at least {MIN_LENGTH} "
                "printable characters without spaces (devpid gen-config writes one)"
            )
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"--replication-secret-file {path} is readable by others (chmod 600 it)"
            )
        return cls(value)

    def _mac(self, at: int, method: bytes, path: bytes) -> str:
        message = b"%d\n%s\n%s" % (at, method, path)
        return hmac.new(self.value, message, hashlib.sha256).hexdigest()

    def sign(self, method: bytes, path: bytes, now: float) -> bytes:
        """The header's value for a request of ``method`` to ``path`` (with its query)."""
        at = int(now)
        return f"{at}:{self._mac(at, method, path)}".encode("ascii")

    def verify(self, header: bytes | None, method: bytes, path: bytes, now: float) -> bool:
        if not header:
            return False
        at_text, _, mac = header.partition(b":")
        try:
            at = int(at_text.decode("ascii"))
            given = mac.decode("ascii")
        except (UnicodeDecodeError, ValueError):
            return False
        if abs(now - at) > MAX_SKEW:
            return False
        return hmac.compare_digest(given, self._mac(at, method, path))
