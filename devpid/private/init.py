"""A serverdir's first private data: the ``root`` user and the ``root/pypi`` mirror.

``devpid init`` (like devpi-init) and the first start of ``twistd devpid`` on
an empty serverdir both call ``initialize``: one transaction, serial 0. It does
nothing where users already exist, so concurrent first starts of several
workers end with one root.
"""

from __future__ import annotations

from typing import Any

from devpid.private.data import PrivateData
from devpid.private.database import Transaction

ROOT = "root"
ROOT_PYPI = "root/pypi"


def root_pypi_config(mirror_url: str, cache_expiry: int) -> dict[str, Any]:
    return {
        "type": "mirror",
        "volatile": False,
        "title": "PyPI",
        "mirror_url": mirror_url,
        "mirror_cache_expiry": cache_expiry,
    }


def initialize(data: PrivateData, root_pwhash: str, mirror_url: str | None, created: str) -> bool:
    """Create root (and root/pypi mirroring ``mirror_url``, unless None); False if
    the serverdir already had users."""

    def change(tx: Transaction) -> bool:
        if tx.names("user"):
            return False
        tx.put("user", ROOT, {"pwhash": root_pwhash, "created": created})
        if mirror_url is not None:
            tx.put("index", ROOT_PYPI, root_pypi_config(mirror_url, data.default_cache_expiry))
        return True

    done, _ = data.database.write("initialize", None, change)
    return done
