"""The JSON bodies of ``PUT /{user}`` and ``PATCH /{user}``, and the userconfig answer.

devpi-api.md section 3. Pure: hashing the password and storing the record are
the caller's; this module only says what the request asks for, or refuses it
with devpi's 400 message.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import attrs

from devpid.private.names import InvalidConfig, shown

__all__ = [
    "USER_FIELDS",
    "NewUser",
    "UserChange",
    "parse_new_user",
    "parse_user_patch",
    "visible_user",
]

#: The settable keys that are also returned; a falsy value deletes the key.
USER_FIELDS = ("email", "title", "description", "custom_data")

#: Accepted on PUT and silently ignored: what devpi computes itself (``indexes``
#: would make devpi answer 500), and its legacy salt.
_IGNORED_ON_CREATE = frozenset({"indexes", "username", "created", "modified", "pwsalt"})

#: Keys of the stored record that the userconfig answer shows.
_VISIBLE = frozenset({*USER_FIELDS, "created", "modified"})

_MAX_UNKNOWN_SHOWN = 10


@attrs.frozen
class NewUser:
    """What ``PUT /{user}`` asks for.

    ``password`` is None only when ``pwhash`` is given: a given hash wins over
    a password, as in devpi.
    """

    password: str | None
    pwhash: str | None
    fields: dict[str, Any]


@attrs.frozen
class UserChange:
    """What ``PATCH /{user}`` asks for."""

    password: str | None
    pwhash: str | None
    set_fields: dict[str, Any]
    removed_fields: tuple[str, ...]

    @property
    def only_password(self) -> bool:
        """Nothing but the password changes: ``user_modify_password`` is enough."""
        changes_password = self.password is not None or self.pwhash is not None
        return changes_password and not self.set_fields and not self.removed_fields


def _require_object(body: object) -> dict[Any, Any]:
    if not isinstance(body, dict):
        raise InvalidConfig("user config must be a JSON object")
    return body


def _given_pwhash(body: Mapping[Any, Any]) -> str | None:
    """A non-empty ``pwhash``, which must look like an argon2 hash string."""
    pwhash = body.get("pwhash")
    if not pwhash:  # devpi: a falsy pwhash means none
        return None
    if not isinstance(pwhash, str) or not pwhash.startswith("$argon2") or not pwhash.isprintable():
        raise InvalidConfig("pwhash must be an argon2 hash string ($argon2...)")
    return pwhash


def _password(body: Mapping[Any, Any], *, pwhash: str | None) -> str | None:
    password = body.get("password")
    if password is None or pwhash is not None:
        return None
    if not isinstance(password, str):
        raise InvalidConfig("password must be a string")
    return password


def _split_fields(body: Mapping[Any, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The USER_FIELDS given: truthy ones to set, falsy ones to delete."""
    set_fields: dict[str, Any] = {}
    removed: list[str] = []
    for key in USER_FIELDS:
        if key not in body:
            continue
        value = body[key]
        if value:
            set_fields[key] = copy.deepcopy(value)
        else:
            removed.append(key)
    return set_fields, tuple(removed)


def parse_new_user(body: object) -> NewUser:
    """The ``PUT /{user}`` body, checked in devpi's order: password first, then keys."""
    body = _require_object(body)
    if "password" not in body:
        raise InvalidConfig("password needs to be set")
    pwhash = _given_pwhash(body)
    if body["password"] is None and pwhash is None:
        raise InvalidConfig("password must be a string")
    password = _password(body, pwhash=pwhash)
    known = {*USER_FIELDS, "password", "pwhash", *_IGNORED_ON_CREATE}
    unknown = sorted(
        shown(key) if not isinstance(key, str) else key for key in body if key not in known
    )
    if unknown:
        listed = [_one_line(key) for key in unknown[:_MAX_UNKNOWN_SHOWN]]
        if len(unknown) > _MAX_UNKNOWN_SHOWN:
            listed.append("...")
        raise InvalidConfig("Unknown keys in user config: " + ", ".join(listed))
    fields, _ = _split_fields(body)
    return NewUser(password=password, pwhash=pwhash, fields=fields)


def parse_user_patch(body: object) -> UserChange:
    """The ``PATCH /{user}`` body. Unknown keys are dropped silently.

    devpi-client PATCHes the whole userconfig back (``created``, ``modified``
    included), so refusing unknown keys would break ``devpi user -m``.
    """
    body = _require_object(body)
    pwhash = _given_pwhash(body)
    password = _password(body, pwhash=pwhash)
    set_fields, removed = _split_fields(body)
    return UserChange(
        password=password, pwhash=pwhash, set_fields=set_fields, removed_fields=removed
    )


def visible_user(
    name: str, stored: Mapping[str, Any], indexes: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The ``userconfig`` JSON: the stored record without its secrets, plus name and indexes.

    Only devpi's visible keys are copied, so a password hash or salt (or any
    future private key) can never leak through here.
    """
    result = {key: copy.deepcopy(value) for key, value in stored.items() if key in _VISIBLE}
    result["username"] = name
    result["indexes"] = {index: copy.deepcopy(dict(config)) for index, config in indexes.items()}
    return result


def _one_line(key: str) -> str:
    """A key as devpi prints it (``%s``), unless it would break the line or run long."""
    if key.isprintable() and len(key) <= 100:
        return key
    return shown(key)
