"""Version metadata as devpi stores it: its keys, which are lists, and its checks (spec 5.1)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from devpid.private.names import InvalidConfig

#: The keys a version's metadata keeps (devpi's ``metadata_keys``).
METADATA_KEYS = (
    "name",
    "version",
    "metadata_version",
    "summary",
    "home_page",
    "author",
    "author_email",
    "maintainer",
    "maintainer_email",
    "license",
    "description",
    "keywords",
    "platform",
    "classifiers",
    "download_url",
    "supported_platform",
    "comment",
    "provides",
    "requires",
    "obsoletes",
    "project_urls",
    "provides_dist",
    "obsoletes_dist",
    "requires_dist",
    "requires_external",
    "requires_python",
    "description_content_type",
    "provides_extras",
    "dynamic",
    "license_expression",
    "license_file",
)
#: The keys whose values are lists; every other value is a string.
LIST_KEYS = frozenset(
    {
        "platform",
        "classifiers",
        "supported_platform",
        "provides",
        "requires",
        "obsoletes",
        "project_urls",
        "provides_dist",
        "obsoletes_dist",
        "requires_dist",
        "requires_external",
        "provides_extras",
        "dynamic",
        "license_file",
    }
)

_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?\Z", re.IGNORECASE)
_FORBIDDEN = re.compile(r'[<>%#"/\x00-\x1f\x7f]')
#: Longest name or version devpid keeps.
MAX_NAME_LENGTH = 200


def with_defaults(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Every key, as devpi fills them on a version's first registration."""
    return {key: metadata.get(key, [] if key in LIST_KEYS else "") for key in METADATA_KEYS}


def check_name_and_version(name: str | None, version: str | None) -> tuple[str, str]:
    """devpi's metadata validation: ``invalid metadata: <reason>`` (a 400)."""
    if not name:
        raise InvalidConfig("invalid metadata: missing name")
    if not version:
        raise InvalidConfig("invalid metadata: missing version")
    if len(name) > MAX_NAME_LENGTH or not _NAME.match(name):
        raise InvalidConfig(f"invalid metadata: invalid project name {name[:100]!r}")
    if (
        len(version) > MAX_NAME_LENGTH
        or _FORBIDDEN.search(version)
        or version.strip() != version
        or version in (".", "..")
        or version.startswith("+")  # a URL segment devpi's routes never take as a version
    ):
        raise InvalidConfig(f"invalid metadata: invalid version {version[:100]!r}")
    return name, version
