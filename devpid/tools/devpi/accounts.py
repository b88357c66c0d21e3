"""devpi's users and index configurations as devpid's ``user`` and ``index`` records.

A user keeps its password hash as devpi had it: an argon2 string (devpi-server 6), which
devpid verifies as it is, or devpi's legacy ``pwsalt`` + hex sha256, which devpid verifies
too (``devpid.auth.passwords``). devpi's computed keys (``username``, ``indexes``) go.

An index configuration is stored exactly as devpid stores one it created
(``new_index_config``): values normalised, defaults filled in. What devpid does not know
(a plugin's keys, index types of plugins) or refuses (a name devpid does not allow, a base
that is not in the export) is left out with a warning, never guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from devpid.auth.passwords import looks_like_hash
from devpid.private.indexconfig import CONSTRAINED, MIRROR, STAGE, new_index_config
from devpid.private.names import InvalidConfig, check_index_name, check_user_name
from devpid.private.userconfig import USER_FIELDS

#: devpi-server's default ``--mirror-cache-expiry``, for a mirror that never set one.
DEVPI_CACHE_EXPIRY = 1800
#: What devpi sets on import for a user without a creation time.
EPOCH = "1970-01-01T00:00:00Z"
#: devpi's own keys of a user record that devpid keeps as they are.
_KEPT_USER_KEYS = frozenset({"pwhash", "pwsalt", "created", "modified", *USER_FIELDS})
#: devpi computes these; devpid too.
_COMPUTED_USER_KEYS = frozenset({"username", "indexes"})
#: A name that is also a path segment in a bundle (``devpid.tools.bundle.format``).
_PATH_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_LEGACY_HASH = re.compile(r"^[0-9a-f]{64}\Z")
_UNKNOWN_KEYS = "indexconfig got unexpected keyword arguments"


def _name_problem(kind: str, name: str) -> str | None:
    try:
        (check_user_name if kind == "user" else check_index_name)(name)
    except InvalidConfig as e:
        return e.message
    if not _PATH_PART.match(name):
        return f"{kind} name {name!r} is not one devpid can use in file paths"
    return None


def convert_user(
    name: str, config: Mapping[str, Any], warnings: list[str]
) -> dict[str, Any] | None:
    """The devpid user record of devpi's user ``name``, or None (and why, in ``warnings``)."""
    problem = _name_problem("user", name)
    if problem is not None:
        warnings.append(f"user {name!r} not carried over: {problem}")
        return None
    record = {
        key: value
        for key, value in config.items()
        if key in _KEPT_USER_KEYS and (value or key not in USER_FIELDS)
    }
    dropped = sorted(set(config) - _KEPT_USER_KEYS - _COMPUTED_USER_KEYS)
    if dropped:
        warnings.append(f"user {name}: devpi's keys {', '.join(dropped)} not carried over")
    record.setdefault("created", EPOCH)
    pwhash, salt = record.get("pwhash"), record.get("pwsalt")
    if not salt:
        record.pop("pwsalt", None)
    if not isinstance(pwhash, str) or not pwhash:
        record.pop("pwhash", None)
        warnings.append(f"user {name} has no password hash: only a token or a new password logs in")
    elif salt:
        if not isinstance(salt, str) or not _LEGACY_HASH.match(pwhash):
            warnings.append(f"user {name}: devpi's pwsalt/pwhash are malformed: the password fails")
        else:
            warnings.append(
                f"user {name} keeps devpi's legacy salted sha256 password hash: it logs in; "
                "a new password (devpi user -m / devpid passwd) stores argon2"
            )
    elif not pwhash.startswith("$argon2"):
        warnings.append(f"user {name}: a password hash devpid cannot verify: the password fails")
    elif not looks_like_hash(pwhash):
        warnings.append(f"user {name}: an argon2 hash costlier than devpid's limits (kept)")
    return record


@attrs.frozen
class IndexPlan:
    """One of devpi's indexes that devpid takes: its name, type and configuration as given."""

    name: str
    owner: str
    index_type: str
    config: Mapping[str, Any]


def plan_index(
    name: str, data: Mapping[str, Any], users: Mapping[str, Any], warnings: list[str]
) -> IndexPlan | None:
    """Whether devpi's index ``name`` can be carried over (its owner among ``users``)."""
    owner, slash, index = name.partition("/")
    config = data.get("indexconfig")
    if not slash or not isinstance(config, Mapping):
        warnings.append(f"index {name!r} not carried over: not user/index with a configuration")
        return None
    problem = _name_problem("user", owner) or _name_problem("index", index)
    if problem is not None:
        warnings.append(f"index {name!r} not carried over: {problem}")
        return None
    if owner not in users:
        warnings.append(f"index {name} not carried over: its owner {owner} is not carried over")
        return None
    index_type = config.get("type", STAGE)
    if index_type not in (STAGE, MIRROR, CONSTRAINED):
        warnings.append(
            f"index {name} not carried over: its type {index_type!r} is a devpi plugin's"
        )
        return None
    return IndexPlan(name, owner, str(index_type), config)


def convert_index_config(
    plan: IndexPlan, carried: frozenset[str], warnings: list[str]
) -> dict[str, Any]:
    """devpid's stored configuration for ``plan``; ``carried`` names every index taken."""
    body: dict[str, Any] = {"type": plan.index_type}
    if plan.index_type == MIRROR:
        body["mirror_cache_expiry"] = DEVPI_CACHE_EXPIRY
    unknown: list[str] = []
    for key, value in plan.config.items():
        if key in ("type", "projects", "bases"):
            continue
        problem = _key_problem(plan, key, value)
        if problem == _UNKNOWN_KEYS:
            unknown.append(key)
        elif problem is not None:
            warnings.append(f"index {plan.name}: {key} not carried over: {problem}")
        else:
            body[key] = value
    if unknown:
        warnings.append(
            f"index {plan.name}: keys devpid does not know not carried over (a devpi "
            f"plugin's?): {', '.join(sorted(unknown))}"
        )
    if plan.index_type in (STAGE, CONSTRAINED):
        body["bases"] = _bases(plan, carried, warnings)
    elif plan.config.get("bases"):
        warnings.append(f"index {plan.name}: a mirror's bases are not carried over")
    return new_index_config(
        plan.owner, body, index_exists=carried.__contains__, default_cache_expiry=0
    )


#: The base a constrained index's keys are checked with, one at a time.
_PROBE_BASE = "probe/probe"


def _key_problem(plan: IndexPlan, key: str, value: object) -> str | None:
    try:
        body = {"type": plan.index_type, key: value}
        if plan.index_type == CONSTRAINED:  # it needs a base to be checked at all
            body["bases"] = [_PROBE_BASE]
        new_index_config(
            plan.owner,
            body,
            index_exists=lambda name: name == _PROBE_BASE,
            default_cache_expiry=0,
        )
    except InvalidConfig as e:
        return _UNKNOWN_KEYS if e.message.startswith(_UNKNOWN_KEYS) else e.message
    return None


def _bases(plan: IndexPlan, carried: frozenset[str], warnings: list[str]) -> list[str]:
    given = plan.config.get("bases") or []
    if isinstance(given, str):
        given = [part.strip() for part in given.split(",") if part.strip()]
    bases: list[str] = []
    for base in given if isinstance(given, list | tuple) else ():
        name = str(base).strip("/")
        if name in carried and name != plan.name:
            if name not in bases:
                bases.append(name)
        else:
            warnings.append(f"index {plan.name}: its base {name} is not carried over: dropped")
    return bases
