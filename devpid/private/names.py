"""User, index and project names as devpi accepts them (devpi-api.md 0.6).

Every refusal of user or index input in this package is an ``InvalidConfig``
whose message is the one line devpi answers with a 400. Values quoted in a
message go through ``shown`` so a hostile value cannot add lines or length.
"""

from __future__ import annotations

import re

__all__ = [
    "MAX_NAME_LENGTH",
    "InvalidConfig",
    "check_index_name",
    "check_user_name",
    "normalize_project",
    "shown",
]

#: Longer user or index names are refused: they end up in URLs, keys and logs.
MAX_NAME_LENGTH = 100

#: What a value quoted in a message is cut to.
_SHOWN_LENGTH = 100

# devpi's blocklist (control characters, space and every ASCII symbol but
# ``-.@_``), plus DEL, which is a control character too.
_BLOCKED = re.compile(r"[\x00-\x20\x7f!\"#$%&'()*+,/:;<=>?\[\\\]^`{|}~]")

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


class InvalidConfig(Exception):
    """A 400: the message is the one-line text devpi sends (args[0])."""

    def __init__(self, message: str) -> None:
        # A safety net: whatever built the message, the answer stays one line.
        super().__init__(" ".join(str(message).splitlines()))

    @property
    def message(self) -> str:
        return str(self.args[0])


def shown(value: object) -> str:
    """``repr(value)`` cut to about 100 characters: safe inside a one-line message."""
    try:
        text = repr(value)
    except Exception:  # a hostile __repr__ must not turn a 400 into a 500
        text = f"<{type(value).__name__}>"
    if len(text) > _SHOWN_LENGTH:
        text = text[: _SHOWN_LENGTH - 3] + "..."
    return text


def _check_name(kind: str, name: object) -> None:
    if not isinstance(name, str):
        raise InvalidConfig(f"{kind} must be a string, got {shown(name)}")
    if not name:
        raise InvalidConfig(f"{kind} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidConfig(f"{kind} {shown(name)} is longer than {MAX_NAME_LENGTH} characters")
    if _BLOCKED.search(name):
        raise InvalidConfig(
            f"{kind} {shown(name)} contains characters that aren't allowed. "
            "Any ascii symbol besides -.@_ is blocked."
        )
    if name in (".", ".."):
        # Allowed by devpi, but no URL can address them: clients collapse them.
        raise InvalidConfig(f"{kind} {shown(name)} is not allowed")


def check_user_name(name: str) -> None:
    """Refuse a user name devpi would refuse (and empty, overlong, ``.``/``..``)."""
    _check_name("username", name)


def check_index_name(name: str) -> None:
    """Refuse an index name (the part after ``user/``) devpi would refuse."""
    _check_name("indexname", name)


def normalize_project(name: str) -> str:
    """devpi's project normalisation: ``foo+bar`` and ``Foo_Bar`` become ``foo-bar``.

    Not exactly PEP 503 (dots become dashes too, but so do ``+`` and spaces).
    """
    return _NOT_ALNUM.sub("-", name).lower()
