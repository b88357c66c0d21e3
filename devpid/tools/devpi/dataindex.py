"""``dataindex.json``, the index of a devpi-server export, read and brought up to date.

devpi-server writes dump version 2 since 2.2 (6.x included) and reads 1 and 2. Its
``Migrator`` fixes older dumps on the way in; the same fixes are made here:

- version 1 files name no version (it is taken from the file name);
- ``entrymapping`` hashes may be given as ``hash_spec`` (``sha256=...``) or ``md5``;
- ``pypi_whitelist`` was renamed ``mirror_whitelist`` (devpi-server 3.0), and an unset
  ``uploadtrigger_jenkins`` is dropped;
- tox results exported by devpi-server 6.5 to 6.8 carry the hash of their release, not
  their own: that hash is forgotten rather than reported as a mismatch.

The file is parsed whole (as devpi's importer does): it holds metadata, not file contents.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

DATAINDEX = "dataindex.json"
#: The dump versions devpi-server (up to 6.x) writes and reads.
DUMP_VERSIONS = ("1", "2")


class DevpiExportError(Exception):
    """The directory is not a devpi-server export devpid can read; the message is one line."""


@attrs.frozen
class Dataindex:
    """What ``dataindex.json`` says, as of dump version 2."""

    dumpversion: str
    devpi_server: str
    users: Mapping[str, Mapping[str, Any]]
    indexes: Mapping[str, Mapping[str, Any]]


def read_dataindex(export_dir: Path) -> Dataindex:
    path = export_dir / DATAINDEX
    if not export_dir.is_dir():
        raise DevpiExportError(f"{export_dir} is not a directory")
    try:
        with open(path, "rb") as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise DevpiExportError(
            f"{export_dir} is not a devpi-server export: it has no {DATAINDEX}"
        ) from None
    except (OSError, ValueError) as e:
        raise DevpiExportError(f"{path} cannot be read as JSON: {_one_line(e)}") from None
    if not isinstance(raw, dict):
        raise DevpiExportError(f"{path} is not a JSON object")
    dumpversion = str(raw.get("dumpversion"))
    if dumpversion not in DUMP_VERSIONS:
        raise DevpiExportError(
            f"{path}: dumpversion {raw.get('dumpversion')!r} is not one devpid reads "
            f"({', '.join(DUMP_VERSIONS)})"
        )
    users, indexes = raw.get("users"), raw.get("indexes")
    if not isinstance(users, dict) or not isinstance(indexes, dict):
        raise DevpiExportError(f"{path} lacks its users or indexes")
    return Dataindex(
        dumpversion=dumpversion,
        devpi_server=str(raw.get("devpi_server") or "unknown"),
        users={str(k): v for k, v in users.items() if isinstance(v, dict)},
        indexes={
            str(k): _migrate_index(v, dumpversion)
            for k, v in indexes.items()
            if isinstance(v, dict)
        },
    )


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _migrate_index(data: Mapping[str, Any], dumpversion: str) -> dict[str, Any]:
    index = dict(data)
    config = dict(index.get("indexconfig") or {})
    if "uploadtrigger_jenkins" in config and not config["uploadtrigger_jenkins"]:
        del config["uploadtrigger_jenkins"]
    if "pypi_whitelist" in config:
        whitelist = config.pop("pypi_whitelist")
        config.setdefault("mirror_whitelist", whitelist)
    index["indexconfig"] = config
    files = index.get("files")
    if isinstance(files, list):
        index["files"] = [_migrate_file(f, dumpversion) for f in files if isinstance(f, dict)]
    return index


def _migrate_file(data: Mapping[str, Any], dumpversion: str) -> dict[str, Any]:
    filedesc = dict(data)
    mapping = dict(filedesc.get("entrymapping") or {})
    hashes = {str(k): str(v) for k, v in dict(mapping.get("hashes") or {}).items()}
    if "md5" in mapping:
        hashes.setdefault("md5", str(mapping.pop("md5")))
    spec = mapping.pop("hash_spec", None)
    if isinstance(spec, str) and "=" in spec:
        algorithm, _, value = spec.partition("=")
        hashes.setdefault(algorithm, value)
    mapping["hashes"] = hashes
    filedesc["entrymapping"] = mapping
    if dumpversion == "1" and not filedesc.get("version") and mapping.get("version"):
        filedesc["version"] = mapping["version"]
    if filedesc.get("type") == "toxresult":
        _forget_release_hash(filedesc)
    return filedesc


def _forget_release_hash(filedesc: dict[str, Any]) -> None:
    """The 6.5-6.8 tox results: their directory (``sha256=<release's>``) and their recorded
    hash are the release's."""
    parts = str(filedesc.get("relpath", "")).split("/")
    if len(parts) != 5 or "=" not in parts[3]:
        return
    algorithm, _, value = parts[3].partition("=")
    hashes = filedesc["entrymapping"]["hashes"]
    if hashes.get(algorithm) == value:
        hashes.clear()
