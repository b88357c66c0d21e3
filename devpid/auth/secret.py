"""The server secret that signs login tokens, shared by every process of one server."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

SECRET_BYTES = 32


class SecretFileError(Exception):
    """The secret file exists but cannot be used."""


def _read(path: Path) -> bytes:
    try:
        text = path.read_bytes().strip()
    except OSError as e:
        raise SecretFileError(f"cannot read secret file {path}: {e.strerror}") from None
    if not text:
        raise SecretFileError(f"secret file {path} is empty")
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except ValueError:
        raise SecretFileError(f"secret file {path} does not hold hex") from None
    if len(secret) < SECRET_BYTES:
        raise SecretFileError(f"secret in {path} is shorter than {SECRET_BYTES} bytes")
    return secret


def load_or_create_secret(path: Path) -> bytes:
    """Read the secret, creating it first if missing.

    The new file is written in full to a temporary sibling, then hard-linked into place:
    link never overwrites, so of two processes starting at once one wins and both read its secret.
    """
    if not path.exists():
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
        except OSError as e:
            raise SecretFileError(f"cannot create secret file {path}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(SECRET_BYTES) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError as e:
                raise SecretFileError(f"cannot create secret file {path}: {e.strerror}") from None
        finally:
            os.unlink(tmp)
    return _read(path)
