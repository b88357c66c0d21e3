"""A base given as a URL: another devpid's or devpi's index, followed as a mirror.

Seed 002 writes ``bases=http://other:3141/root/dev``. devpid reads that as
"the packages of that index, below mine": the URL becomes a mirror index of
the same owner (``alice/other-3141-root-dev``), created in the same
transaction as the change that names it, and the stage's ``bases`` holds that
index's name. Everything a mirror has then comes for free: cached pages and
files, offline serving, eviction, the web pages.

A base URL is the index's own URL (``http://host:port/user/index``); its
simple pages are at ``<url>/+simple/``, which devpi and devpid both serve. A
URL that already ends in ``/+simple/`` or ``/simple/`` is taken as given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from devpid.config import shown_url
from devpid.private.indexconfig import checked_http_url
from devpid.private.names import MAX_NAME_LENGTH, InvalidConfig, shown

#: How long a page of another index counts as fresh: its uploads should show up
#: within a minute, where a public index's mirror uses the server's default.
URL_BASE_CACHE_EXPIRY = 60

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def is_url(spec: object) -> bool:
    return isinstance(spec, str) and spec.strip().lower().startswith(("http://", "https://"))


def simple_url(spec: str) -> str:
    """The ``mirror_url`` that follows the index at ``spec``."""
    url = spec.strip()
    parts = _parts(url)
    path = parts.path.rstrip("/")
    if path.endswith(("/+simple", "/simple")):
        return parts._replace(path=path + "/", query="", fragment="").geturl()
    return parts._replace(path=path + "/+simple/", query="", fragment="").geturl()


def mirror_name(spec: str) -> str:
    """The index name (after ``owner/``) of the mirror that follows ``spec``."""
    parts = _parts(spec.strip())
    path = parts.path.rstrip("/")
    for suffix in ("/+simple", "/simple"):
        path = path.removesuffix(suffix)
    words = [parts.hostname or "", str(parts.port or ""), path]
    name = _NOT_ALNUM.sub("-", "-".join(w for w in words if w)).strip("-").lower()
    name = name[:MAX_NAME_LENGTH].rstrip("-")
    if not name:
        raise InvalidConfig(f"base URL {shown(shown_url(spec))} gives no index name")
    return name


def _parts(url: str) -> Any:
    message = f"base URL {shown(shown_url(url))} must be an http:// or https:// URL of an index"
    if len(url) > 2000:
        raise InvalidConfig(message)
    parts = checked_http_url(url, message)
    if parts.username or parts.password:
        raise InvalidConfig(
            f"base URL {shown(shown_url(url))} carries credentials: create a mirror index with "
            "mirror_url instead, which keeps them hidden"
        )
    return parts


def _base_items(value: object) -> list[Any] | None:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple):
        return list(value)
    return None


def expand_url_bases(
    owner: str,
    body: object,
    follow: Callable[[str, str], str],
) -> object:
    """``body`` (a ``PUT`` or ``PATCH`` body) with each URL base replaced by an index name.

    ``follow(name, mirror_url)`` makes sure ``owner/name`` is a mirror of
    ``mirror_url`` (creating it if needed) and returns ``owner/name``; it is
    called only for URLs, so a body without any is returned unchanged.
    """

    def replaced(spec: object) -> object:
        if not is_url(spec):
            return spec
        assert isinstance(spec, str)
        return follow(mirror_name(spec), simple_url(spec))

    if isinstance(body, Mapping):
        inner = body
        if body.get("type") == "indexconfig" and isinstance(body.get("result"), Mapping):
            inner = body["result"]
        items = _base_items(inner.get("bases"))
        if items is None or not any(is_url(i) for i in items):
            return body
        new_inner = {**inner, "bases": [replaced(i) for i in items]}
        return {**body, "result": new_inner} if inner is not body else new_inner
    if isinstance(body, list):
        out: list[Any] = []
        for item in body:
            if isinstance(item, str):
                key, sep, value = item.partition("=")
                if sep and key.rstrip("+-") == "bases":
                    parts = _base_items(value) or []
                    if any(is_url(p) for p in parts):
                        item = key + "=" + ",".join(str(replaced(p)) for p in parts)
            out.append(item)
        return out
    return body


def mirror_follower(
    owner: str,
    get_index: Callable[[str], Mapping[str, Any] | None],
    put_index: Callable[[str, Mapping[str, Any]], None],
) -> Callable[[str, str], str]:
    """``follow`` for ``expand_url_bases`` over one transaction's records."""

    def follow(name: str, mirror_url: str) -> str:
        full = f"{owner}/{name}"
        current = get_index(full)
        if current is None:
            put_index(
                full,
                {
                    "type": "mirror",
                    "volatile": True,
                    "mirror_url": mirror_url,
                    "mirror_cache_expiry": URL_BASE_CACHE_EXPIRY,
                    "title": f"follows {mirror_url}",
                },
            )
        elif current.get("type") != "mirror" or current.get("mirror_url") != mirror_url:
            raise InvalidConfig(
                f"base URL {shown(mirror_url)} would be followed by index {shown(full)}, "
                "which exists already as something else"
            )
        return full

    return follow
