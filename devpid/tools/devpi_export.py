"""A devpi-server export (``devpi-export DIR`` / ``devpi-server --export DIR``) turned into a
devpid bundle directory (format 1), for ``devpid import --from-devpi``.

What is carried over, and how (``devpid.tools.devpi`` does each part):

- users, with the password hash devpi had (argon2, or devpi's legacy salted sha256, which
  devpid verifies too), email, title, description, custom data, creation time;
- indexes: a stage's bases, ``volatile``, ACLs, mirror whitelist, title, description...;
  a mirror's configuration (its cached files are not in a devpi export unless asked for,
  and devpid fetches them again);
- each stage's versions with their metadata, release files, doc zips and tox results,
  every file hashed from its bytes (a hash the export recorded must agree), a wheel's
  ``.metadata`` extracted as at upload.

What is not (a plugin's index types and keys, names devpid does not allow, a mirror's
cached files) is left out and said in the warnings, one line each. The bundle is written
as any other: files first, ``records.jsonl``, ``MANIFEST.jsonl``, and the header last.
Files are hard-linked from the export where the file system allows, else copied; each is
read once. Re-running on the same export gives the same records and files.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import devpid
from devpid.private.indexconfig import MIRROR
from devpid.private.names import InvalidConfig
from devpid.tools.bundle.format import (
    HEADER,
    MANIFEST,
    RECORD_KINDS,
    RECORDS,
    Header,
    hash_file,
    manifest_bytes,
    record_line,
)
from devpid.tools.devpi.accounts import (
    IndexPlan,
    convert_index_config,
    convert_user,
    plan_index,
)
from devpid.tools.devpi.dataindex import DATAINDEX, Dataindex, DevpiExportError, read_dataindex
from devpid.tools.devpi.placing import BundleFiles
from devpid.tools.devpi.releases import StageConverter

__all__ = ["DevpiExportError", "convert"]

SOURCE_KIND = "devpi-server"


def convert(export_dir: Path, bundle_dir: Path) -> list[str]:
    """Fill the empty directory ``bundle_dir`` with a complete bundle (format 1) made from the
    devpi-server export in ``export_dir``, linking files where it can; the warnings (what was
    not carried over, one line each)."""
    if any(bundle_dir.iterdir()):
        raise DevpiExportError(f"{bundle_dir} is not empty")
    dataindex = read_dataindex(export_dir)
    warnings: list[str] = []
    records: dict[str, dict[str, Mapping[str, Any]]] = {kind: {} for kind in RECORD_KINDS}
    for name, config in sorted(dataindex.users.items()):
        user = convert_user(name, config, warnings)
        if user is not None:
            records["user"][name] = user
    files = BundleFiles(bundle_dir)
    try:
        _convert_indexes(dataindex, export_dir, files, records, warnings)
    finally:
        files.finish()
    _write_records(files, records)
    manifest = manifest_bytes(list(files.entries.values()))
    (bundle_dir / MANIFEST).write_bytes(manifest)
    header = Header(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        devpid=devpid.__version__,
        source={
            "kind": SOURCE_KIND,
            "version": dataindex.devpi_server,
            "uuid": _export_uuid(export_dir),
            # a devpi export records no serial
            "serial": 0,
        },
        mirror="none",
        counts={
            "records": sum(len(of_kind) for of_kind in records.values()),
            "files": len(files.entries),
            "bytes": sum(entry.size for entry in files.entries.values()),
        },
        manifest_sha256=hashlib.sha256(manifest).hexdigest(),
    )
    (bundle_dir / HEADER).write_bytes(header.encoded())
    return warnings


def _index_configs(plans: list[IndexPlan], warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Each carried index's configuration; an index that can't be (a constrained index
    whose bases all stayed behind) is dropped, and the others are worked out again
    without it, so no base names an index the bundle lacks."""
    carried = {plan.name for plan in plans}
    while True:
        attempt: list[str] = []
        configs: dict[str, dict[str, Any]] = {}
        for plan in plans:
            if plan.name not in carried:
                continue
            try:
                configs[plan.name] = convert_index_config(plan, frozenset(carried), attempt)
            except InvalidConfig as e:
                warnings.append(f"index {plan.name} not carried over: {e.message}")
                carried.discard(plan.name)
                break
        else:
            warnings.extend(attempt)
            return configs


def _convert_indexes(
    dataindex: Dataindex,
    export_dir: Path,
    files: BundleFiles,
    records: dict[str, dict[str, Mapping[str, Any]]],
    warnings: list[str],
) -> None:
    plans = [
        plan
        for name, data in sorted(dataindex.indexes.items())
        if (plan := plan_index(name, data, records["user"], warnings)) is not None
    ]
    configs = _index_configs(plans, warnings)
    for plan in plans:
        config = configs.get(plan.name)
        if config is None:
            continue
        records["index"][plan.name] = config
        data = dataindex.indexes[plan.name]
        if config["type"] == MIRROR:
            cached = len(data.get("files") or ())
            if cached:
                warnings.append(
                    f"index {plan.name}: {cached} cached files of the mirror not carried over "
                    "(devpid fetches them again)"
                )
            continue
        stage = StageConverter(plan.name, export_dir, files, warnings)
        stage.add_versions(data.get("projects") or {})
        stage.add_files([f for f in data.get("files") or () if isinstance(f, Mapping)])
        records["version"].update(stage.records())


def _write_records(
    files: BundleFiles, records: Mapping[str, Mapping[str, Mapping[str, Any]]]
) -> None:
    path = files.root / RECORDS
    with open(path, "wb") as f:
        for kind in RECORD_KINDS:
            for name, value in sorted(records[kind].items()):
                f.write(record_line(kind, name, value))
    files.add_records(*hash_file(path))


def _export_uuid(export_dir: Path) -> str:
    """devpi's export names no node: an id of the export's ``dataindex.json`` stands for it
    (the same export, the same id)."""
    _size, digest = hash_file(export_dir / DATAINDEX)
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"devpi-export:{digest}"))
