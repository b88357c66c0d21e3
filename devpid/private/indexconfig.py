"""Index configurations: creating one from a ``PUT`` body, changing one with ``PATCH``.

devpi-api.md sections 4.1 and 4.2 and trap 7. devpi-client sends every value
as a string (``{"bases": "a/b,c/d", "volatile": "False"}``), so each key has a
normaliser that accepts the string form and stores the typed one. Refusals are
``InvalidConfig`` with devpi's exact 400 message; where devpi answers 500
(``unknown+=x``, a non-string where it calls ``.lower()``) this answers a 400
with a message of its own. Pure: the caller says which indexes exist.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

from devpid.config import shown_url
from devpid.private.constraints import (
    CONSTRAINED,
    check_one_per_project,
    constraint_line,
    normalise_constraints,
)
from devpid.private.names import (
    InvalidConfig,
    check_index_name,
    check_user_name,
    normalize_project,
    shown,
)

__all__ = [
    "CONSTRAINED",
    "MIRROR",
    "STAGE",
    "new_index_config",
    "parse_bool",
    "patch_index_config",
]

STAGE, MIRROR = "stage", "mirror"

_ANONYMOUS, _AUTHENTICATED = ":ANONYMOUS:", ":AUTHENTICATED:"

#: Keys whose value is a list, which the list-PATCH ``+=`` and ``-=`` ops work on.
_LIST_KEYS = {
    STAGE: (
        "bases",
        "acl_upload",
        "acl_toxresult_upload",
        "acl_pkg_read",
        "mirror_whitelist",
        "webhooks",
    ),
    MIRROR: ("acl_pkg_read",),
}
_LIST_KEYS[CONSTRAINED] = (*_LIST_KEYS[STAGE], "constraints")

#: What a list key starts from when ``key+=`` meets an index stored without it.
_LIST_STARTS: dict[str, list[str]] = {"acl_pkg_read": [_ANONYMOUS]}

#: Keys that have a default, and so can't be dropped with ``key-=``.
_DEFAULTED_KEYS = {
    STAGE: frozenset(
        {
            "type",
            "volatile",
            "bases",
            "acl_upload",
            "acl_toxresult_upload",
            "mirror_whitelist",
            "mirror_whitelist_inheritance",
        }
    ),
    MIRROR: frozenset({"type", "volatile"}),
}
_DEFAULTED_KEYS[CONSTRAINED] = _DEFAULTED_KEYS[STAGE] | {"constraints"}

#: Keys a mirror silently drops: devpi-client sends them for every index type.
_DROPPED_ON_MIRROR = frozenset({"bases", "acl_upload", "mirror_whitelist"})

#: Never part of the configuration: the ``GET`` answer adds it.
_IGNORED = "projects"

_MAX_UNKNOWN_SHOWN = 10

_Normaliser = Callable[[Any], Any]


# -- value normalisers -------------------------------------------------------------


def parse_bool(value: object, key: str) -> bool:
    """A bool, or ``true``/``false``/``yes``/``no`` in any case; ``1``/``0`` are refused.

    ``key`` is not in devpi's message; it is taken for the caller's symmetry.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.lower()
        if lowered in ("true", "yes"):
            return True
        if lowered in ("false", "no"):
            return False
    raise InvalidConfig(f"Unknown boolean value {shown(value)}.")


def _as_list(value: object) -> list[Any]:
    """A list as given, or a comma string split, stripped, empty parts dropped."""
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    raise InvalidConfig(f"Unknown list value {shown(value)}.")


def _as_strings(key: str, value: object) -> list[str]:
    items = _as_list(value)
    for item in items:
        if not isinstance(item, str):
            raise InvalidConfig(f"The {key!r} setting takes names, not {shown(item)}")
    return items


def _acl_entry(name: str) -> str:
    upper = name.upper()
    return upper if upper in (_ANONYMOUS, _AUTHENTICATED) else name


def _acl(key: str) -> _Normaliser:
    def normalise(value: object) -> list[str]:
        return [_acl_entry(name) for name in _as_strings(key, value)]

    return normalise


def _whitelist_entry(name: str) -> str:
    return name if name == "*" else normalize_project(name)


def _whitelist(value: object) -> list[str]:
    return [_whitelist_entry(name) for name in _as_strings("mirror_whitelist", value)]


def _inheritance(value: object) -> str:
    lowered = value.lower() if isinstance(value, str) else value
    if lowered not in ("intersection", "union"):
        raise InvalidConfig(
            f"Unknown value {shown(lowered)} for mirror_whitelist_inheritance, "
            "must be 'intersection' or 'union'."
        )
    return str(lowered)


def _boolean(key: str) -> _Normaliser:
    return lambda value: parse_bool(value, key)


#: What ``visible_index`` shows in place of a secret.
HIDDEN = "***"

#: The most webhooks one index may have, and the longest URL one may be.
MAX_WEBHOOKS, MAX_WEBHOOK_URL = 20, 2000


def checked_http_url(value: object, message: str) -> SplitResult:
    """``value`` split, if it is an http(s) URL with a host (and a valid port), printable
    and on one line: it is fetched and put in headers. Else ``InvalidConfig(message)``."""
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise InvalidConfig(message)
    if not value.isprintable() or any(c.isspace() for c in value):
        raise InvalidConfig(message)
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidConfig(message) from None
    if not parts.hostname:
        raise InvalidConfig(message)
    return parts


def _webhook_url(value: object) -> str:
    """One webhook target: an http(s) URL with a host, printable, on one line."""
    message = f"webhook {shown(value)} must be an http:// or https:// URL"
    if isinstance(value, str) and len(value) > MAX_WEBHOOK_URL:
        raise InvalidConfig(message)
    checked_http_url(value, message)
    assert isinstance(value, str)
    return value


def _webhooks(value: object) -> list[str]:
    urls = [_webhook_url(url) for url in _as_list(value)]
    if len(urls) > MAX_WEBHOOKS:
        raise InvalidConfig(f"an index may have at most {MAX_WEBHOOKS} webhooks")
    return list(dict.fromkeys(urls))


#: The shortest and longest webhook secret.
MIN_WEBHOOK_SECRET, MAX_WEBHOOK_SECRET = 16, 256


def _webhook_secret(value: object) -> str:
    """The shared secret that signs webhook bodies; never answered (shown as ``***``).

    ``***`` passes here: ``keep_hidden_password`` puts the stored secret back.
    """
    if value == HIDDEN:
        return HIDDEN
    if (
        not isinstance(value, str)
        or not MIN_WEBHOOK_SECRET <= len(value) <= MAX_WEBHOOK_SECRET
        or not value.isprintable()
        or any(c.isspace() for c in value)
    ):
        raise InvalidConfig(
            f"'webhook_secret' must be {MIN_WEBHOOK_SECRET} to {MAX_WEBHOOK_SECRET} "
            "printable characters without spaces"
        )
    return value


def _mirror_url(value: object) -> str:
    """An http(s) URL with a host, on one line: it is fetched and put in headers."""
    checked_http_url(value, "'mirror_url' option must be a URL.")
    assert isinstance(value, str)
    return value


#: The longest a mirror page may count as fresh: a year.
MAX_CACHE_EXPIRY = 365 * 24 * 3600


def _cache_expiry(value: object) -> int:
    expiry = _cache_expiry_integer(value)
    if not 0 <= expiry <= MAX_CACHE_EXPIRY:
        raise InvalidConfig(
            f"'mirror_cache_expiry' must be from 0 to {MAX_CACHE_EXPIRY} seconds (a year)"
        )
    return expiry


def _cache_expiry_integer(value: object) -> int:
    message = "'mirror_cache_expiry' option must be an integer"
    if isinstance(value, bool):
        raise InvalidConfig(message)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:  # also the digit-count limit of int()
            raise InvalidConfig(message) from None
    raise InvalidConfig(message)


def _as_given(value: object) -> Any:
    return copy.deepcopy(value)


#: Every key each type accepts and how its input becomes the stored form.
#: ``bases`` is not here: checking it needs to know which indexes exist.
_NORMALISERS: dict[str, dict[str, _Normaliser]] = {
    STAGE: {
        "volatile": _boolean("volatile"),
        "acl_upload": _acl("acl_upload"),
        "acl_toxresult_upload": _acl("acl_toxresult_upload"),
        "acl_pkg_read": _acl("acl_pkg_read"),
        "webhooks": _webhooks,
        "webhook_secret": _webhook_secret,
        "mirror_whitelist": _whitelist,
        "mirror_whitelist_inheritance": _inheritance,
        "title": _as_given,
        "description": _as_given,
        "custom_data": _as_given,
    },
    MIRROR: {
        "volatile": _boolean("volatile"),
        "mirror_url": _mirror_url,
        "acl_pkg_read": _acl("acl_pkg_read"),
        "mirror_cache_expiry": _cache_expiry,
        "mirror_no_project_list": _boolean("mirror_no_project_list"),
        "mirror_use_external_urls": _boolean("mirror_use_external_urls"),
        "mirror_ignore_serial_header": _boolean("mirror_ignore_serial_header"),
        "mirror_provides_core_metadata": _boolean("mirror_provides_core_metadata"),
        "mirror_web_url_fmt": _as_given,
        "title": _as_given,
        "description": _as_given,
        "custom_data": _as_given,
    },
}
#: A constrained index is a stage that shows its bases through its ``constraints``.
_NORMALISERS[CONSTRAINED] = {**_NORMALISERS[STAGE], "constraints": normalise_constraints}


def _is_known(index_type: str, key: object) -> bool:
    return key in _NORMALISERS[index_type] or (index_type != MIRROR and key == "bases")


# -- bases ---------------------------------------------------------------------------


def _base_name(spec: object) -> str | None:
    """``user/index`` from a base spec (surrounding slashes dropped, as devpi does)."""
    if not isinstance(spec, str):
        return None
    parts = spec.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        return None
    return "/".join(parts)


def _well_formed(name: str) -> bool:
    user, index = name.split("/")
    try:
        check_user_name(user)
        check_index_name(index)
    except InvalidConfig:
        return False
    return True


def _check_base(spec: object, index_exists: Callable[[str], bool], itself: str | None) -> str:
    """The stored form of one base, or the message saying what is wrong with it."""
    name = _base_name(spec)
    if name is None:
        raise InvalidConfig(f"invalid base index spec: {shown(spec)}")
    if name == itself:
        raise InvalidConfig(f"base index {shown(name)} is the index itself")
    # A malformed name can't exist: don't hand it to the store.
    if not _well_formed(name) or not index_exists(name):
        raise InvalidConfig(f"base index {shown(spec)} does not exist")
    return name


def _bases(value: object, index_exists: Callable[[str], bool], itself: str | None) -> list[str]:
    """Every base checked; all the errors at once, joined with ``, `` as devpi does."""
    bases: list[str] = []
    errors: list[str] = []
    for spec in _as_list(value):
        try:
            bases.append(_check_base(spec, index_exists, itself))
        except InvalidConfig as e:
            errors.append(e.message)
    if errors:
        raise InvalidConfig(", ".join(errors))
    return bases


# -- building a configuration ---------------------------------------------------------


def _defaults(index_type: str, owner: str, default_cache_expiry: int) -> dict[str, Any]:
    if index_type == MIRROR:
        return {"type": MIRROR, "volatile": True, "mirror_cache_expiry": default_cache_expiry}
    if index_type == CONSTRAINED:
        return {**_defaults(STAGE, owner, 0), "type": CONSTRAINED, "constraints": []}
    return {
        "type": STAGE,
        "volatile": True,
        "bases": [],
        "acl_upload": [owner],
        "acl_toxresult_upload": [_ANONYMOUS],
        "mirror_whitelist": [],
        "mirror_whitelist_inheritance": "intersection",
    }


def _show_setting(value: object) -> str:
    """A value as devpi prints it with ``%s``, unless it would break the line."""
    if isinstance(value, str) and value.isprintable() and len(value) <= 100:
        return value
    return shown(value)


def _unexpected(items: Iterable[tuple[object, object]]) -> InvalidConfig:
    pairs = [f"{_show_setting(key)}={_show_setting(value)}" for key, value in items]
    if len(pairs) > _MAX_UNKNOWN_SHOWN:
        pairs = [*pairs[:_MAX_UNKNOWN_SHOWN], "..."]
    return InvalidConfig("indexconfig got unexpected keyword arguments: " + ", ".join(pairs))


def _apply(
    config: dict[str, Any],
    index_type: str,
    given: Mapping[Any, Any],
    *,
    index_exists: Callable[[str], bool],
    itself: str | None,
    tolerated: Mapping[str, Any],
) -> None:
    """Normalise each given key into ``config``; ``type`` and ``projects`` are the caller's.

    Unknown keys are refused after the known ones are checked, as in devpi,
    except those in ``tolerated`` given with their current value (a client
    sending a stored configuration back).
    """
    normalisers = _NORMALISERS[index_type]
    unknown: list[tuple[object, object]] = []
    for key, value in given.items():
        if key in ("type", _IGNORED):
            continue
        if index_type == MIRROR and key in _DROPPED_ON_MIRROR:
            continue
        if index_type != MIRROR and key == "bases":
            config["bases"] = _bases(value, index_exists, itself)
        elif key in normalisers:
            config[key] = normalisers[key](value)
        elif not (isinstance(key, str) and key in tolerated and tolerated[key] == value):
            unknown.append((key, value))
    if unknown:
        raise _unexpected(unknown)


def _index_type(value: object) -> str:
    if value not in (STAGE, MIRROR, CONSTRAINED):
        raise InvalidConfig(f"unknown index type {shown(value)}")
    return str(value)


def _require_object(body: object) -> dict[Any, Any]:
    if not isinstance(body, dict):
        raise InvalidConfig("index config must be a JSON object")
    return body


def new_index_config(
    owner: str,
    body: object,
    *,
    index_exists: Callable[[str], bool],
    default_cache_expiry: int,
) -> dict[str, Any]:
    """The stored configuration of a new index of ``owner`` from a ``PUT`` body.

    The defaults of 4.1 fill what the body leaves out; ``index_exists`` is
    asked about each base (as ``user/index``).
    """
    body = _require_object(body)
    index_type = _index_type(body.get("type", STAGE))
    config = _defaults(index_type, owner, default_cache_expiry)
    _apply(config, index_type, body, index_exists=index_exists, itself=None, tolerated={})
    return _whole(config)


# -- PATCH -----------------------------------------------------------------------------


def patch_index_config(
    name: str,
    owner: str,
    current: Mapping[str, Any],
    body: object,
    *,
    index_exists: Callable[[str], bool],
) -> dict[str, Any]:
    """The complete new configuration of index ``name`` (``user/index``) after a ``PATCH``.

    ``body`` is a dict to merge (or the ``{"type": "indexconfig", "result":
    {...}}`` envelope of a ``GET``), or a list of ``key=value``, ``key+=value``,
    ``key-=value`` and ``key-=`` items applied all or nothing. ``current`` is
    left untouched; stored keys this module doesn't know survive.
    """
    index_type = _index_type(current.get("type", STAGE))
    config = copy.deepcopy(dict(current))
    index_exists = _or_kept(index_exists, current.get("bases"))
    if isinstance(body, list):
        _apply_ops(config, index_type, name, owner, body, index_exists)
        return _whole(config)
    body = _require_object(body)
    if body.get("type") == "indexconfig" and "result" in body:
        body = body["result"]
        if not isinstance(body, dict):
            raise InvalidConfig("the 'result' of an indexconfig must be a JSON object")
    if "type" in body and body["type"] != index_type:
        raise InvalidConfig("the 'type' of an index can't be changed")
    _apply(
        config,
        index_type,
        body,
        index_exists=index_exists,
        itself=name,
        tolerated=_unknown_keys(current, index_type),
    )
    return _whole(config)


def _whole(config: dict[str, Any]) -> dict[str, Any]:
    """The checks that look at several keys at once (devpi-constrained's)."""
    if config.get("type") == CONSTRAINED:
        if not config.get("bases"):
            raise InvalidConfig("a constrained index needs at least one base")
        check_one_per_project(config.get("constraints") or ())
    return config


def _or_kept(index_exists: Callable[[str], bool], bases: object) -> Callable[[str], bool]:
    """Bases already configured pass unchecked: a deleted base must not block every PATCH."""
    kept = frozenset(b for b in bases if isinstance(b, str)) if isinstance(bases, list) else ()
    return lambda name: name in kept or index_exists(name)


def _unknown_keys(current: Mapping[str, Any], index_type: str) -> dict[str, Any]:
    return {
        key: value
        for key, value in current.items()
        if key not in ("type", _IGNORED) and not _is_known(index_type, key)
    }


def _split_op(item: object) -> tuple[str, str, str]:
    """``(op, key, value)`` of one list item; devpi splits on the first ``=``."""
    if not isinstance(item, str):
        raise InvalidConfig(
            f"index config changes must be strings like key=value, not {shown(item)}"
        )
    key, sep, value = item.partition("=")
    if not sep:
        raise InvalidConfig(f"index config change {shown(item)} is not key=value")
    if key.endswith("+"):
        return "add", key[:-1], value
    if key.endswith("-"):
        return ("del" if value else "drop"), key[:-1], value
    return "set", key, value


def _apply_ops(
    config: dict[str, Any],
    index_type: str,
    name: str,
    owner: str,
    items: list[Any],
    index_exists: Callable[[str], bool],
) -> None:
    """Apply every op to ``config`` in order; the first refusal refuses them all."""
    ops = [_split_op(item) for item in items]
    for op, key, value in ops:
        if key == _IGNORED or (index_type == MIRROR and key in _DROPPED_ON_MIRROR):
            continue
        if op == "set":
            if key == "type":
                if value != index_type:
                    raise InvalidConfig("the 'type' of an index can't be changed")
                continue
            _apply(
                config,
                index_type,
                {key: value},
                index_exists=index_exists,
                itself=name,
                tolerated={},
            )
        elif op == "drop":
            if key in _DEFAULTED_KEYS[index_type]:
                raise InvalidConfig("Default values can't be removed.")
            # Unknown keys may be dropped too: the way to clean up a removed plugin's.
            config.pop(key, None)
        else:
            _change_list(config, index_type, name, owner, op, key, value, index_exists)


def _change_list(
    config: dict[str, Any],
    index_type: str,
    name: str,
    owner: str,
    op: str,
    key: str,
    value: str,
    index_exists: Callable[[str], bool],
) -> None:
    """``key+=value`` (idempotent) or ``key-=value`` on one of the list settings."""
    if not _is_known(index_type, key):
        raise InvalidConfig(f"unknown index config key {shown(key)}")
    if key not in _LIST_KEYS[index_type]:
        raise InvalidConfig(f"The {key!r} setting is not a list")
    stored = config.get(key)
    if stored is None:  # an old record without the key: start from the default
        stored = _LIST_STARTS.get(key) or _defaults(index_type, owner, 0).get(key, [])
    if not isinstance(stored, list | tuple):
        raise InvalidConfig(f"The {key!r} setting is not a list")
    entries = list(stored)
    entry = _list_entry(key, value, op, name, index_exists)
    if op == "add":
        if entry not in entries:
            entries.append(entry)
    elif entry in entries:
        entries = [existing for existing in entries if existing != entry]
    else:
        raise InvalidConfig(f"The {key!r} setting doesn't have value {shown(value)}")
    config[key] = entries


def _list_entry(
    key: str, value: str, op: str, name: str, index_exists: Callable[[str], bool]
) -> str:
    """The stored form of one list entry, so ``+=``/``-=`` compare like with like."""
    if not value:
        raise InvalidConfig(f"The {key!r} setting can't have an empty value")
    if key == "bases":
        if op == "add":
            return _check_base(value, index_exists, name)
        # A base that no longer exists must still be removable.
        return _base_name(value) or value
    if key == "mirror_whitelist":
        return _whitelist_entry(value)
    if key == "webhooks":
        return _webhook_url(value)
    if key == "constraints":
        return _constraint_entry(value, op)
    return _acl_entry(value)


def _constraint_entry(value: str, op: str) -> str:
    """One line, normalised like the stored ones (``-=`` takes an unparsable one as given)."""
    try:
        return constraint_line(value.partition("#")[0].strip())
    except InvalidConfig:
        if op == "add":
            raise
        return value


def shown_webhook(url: str) -> str:
    """A webhook URL fit to answer: its password and its query's values as ``***``.

    A Jenkins build URL carries its token in the query (``?token=…``).
    """
    shown = shown_url(url)
    base, sep, query = shown.partition("?")
    if not sep:
        return shown
    pairs = [part.partition("=") for part in query.split("&")]
    return base + "?" + "&".join(k + (f"={HIDDEN}" if eq else "") for k, eq, _ in pairs)


def visible_index(config: Mapping[str, Any]) -> dict[str, Any]:
    """The configuration as answered: the secrets in it shown as ``***``.

    A password in ``mirror_url``, the webhooks' passwords and query values,
    and the ``webhook_secret`` itself.
    """
    shown = dict(config)
    url = shown.get("mirror_url")
    if isinstance(url, str):
        shown["mirror_url"] = shown_url(url)
    hooks = shown.get("webhooks")
    if isinstance(hooks, list):
        shown["webhooks"] = [shown_webhook(h) if isinstance(h, str) else h for h in hooks]
    if shown.get("webhook_secret"):
        shown["webhook_secret"] = HIDDEN
    return shown


def keep_hidden_password(current: Mapping[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A PATCH that sends back what ``visible_index`` showed (``***``) keeps the real values."""
    url = current.get("mirror_url")
    if isinstance(url, str) and new.get("mirror_url") == shown_url(url) != url:
        new["mirror_url"] = url
    hooks = current.get("webhooks")
    if isinstance(hooks, list) and isinstance(new.get("webhooks"), list):
        real = {shown_webhook(h): h for h in hooks if isinstance(h, str)}
        new["webhooks"] = [real.get(h, h) if isinstance(h, str) else h for h in new["webhooks"]]
    if new.get("webhook_secret") == HIDDEN:
        if not current.get("webhook_secret"):
            raise InvalidConfig("'webhook_secret' is not set: give the secret itself, not ***")
        new["webhook_secret"] = current["webhook_secret"]
    return new
