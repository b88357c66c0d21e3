"""Whether a bundle is whole: what was read against the manifest, and the manifest against
the header.

The header vouches for the manifest (its sha256), the manifest for every other file (path,
size, sha256). A bundle is damaged when any of that fails, when it holds a file the
manifest does not list, or when the reader found something that may not be in a bundle
(a symlink, a device, a path that escapes, a tar member named twice). ``check_integrity``
lists every such problem, one line each; the records are checked after it
(``verify_records``), only on a whole bundle.
"""

from __future__ import annotations

from pathlib import Path

import attrs

from devpid.tools.bundle.format import (
    HEADER,
    MANIFEST,
    RECORDS,
    BundleError,
    Header,
    ManifestEntry,
    parse_manifest,
    path_problem,
)
from devpid.tools.bundle.reader import Received

#: The header and the manifest are read into memory: refuse absurd ones.
MAX_HEADER_BYTES = 1 << 20


@attrs.frozen
class Integrity:
    """What the header and manifest say, and every problem found (none: the bundle is whole)."""

    header: Header | None
    manifest: dict[str, ManifestEntry]
    problems: list[str]

    @property
    def whole(self) -> bool:
        return not self.problems and self.header is not None


def _read_small(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise BundleError(f"{path.name} is larger than {limit} bytes")
    return data


def _header(received: Received, staged_root: Path, problems: list[str]) -> Header | None:
    if HEADER not in received.files:
        problems.append(f"{HEADER}: missing (an incomplete bundle, or not a bundle)")
        return None
    try:
        return Header.from_bytes(_read_small(staged_root / HEADER, MAX_HEADER_BYTES))
    except BundleError as e:
        problems.append(str(e))
        return None


def _manifest(
    received: Received, staged_root: Path, header: Header | None, problems: list[str]
) -> dict[str, ManifestEntry]:
    if MANIFEST not in received.files:
        problems.append(f"{MANIFEST}: missing")
        return {}
    hashed = received.files[MANIFEST]
    if header is not None and hashed.sha256 != header.manifest_sha256:
        problems.append(
            f"{MANIFEST}: sha256 {hashed.sha256}, the header says {header.manifest_sha256}"
        )
    with open(staged_root / MANIFEST, "rb") as f:
        data = f.read()  # one line a file: about 150 bytes each
    try:
        entries = parse_manifest(data)
    except BundleError as e:
        problems.append(str(e))
        return {}
    return {entry.path: entry for entry in entries}


def check_integrity(received: Received, staged_root: Path) -> Integrity:
    """Every way the bundle read into ``received`` (its small files staged under
    ``staged_root``) is damaged."""
    problems = list(received.problems)
    header = _header(received, staged_root, problems)
    manifest = _manifest(received, staged_root, header, problems)
    for path, entry in sorted(manifest.items()):
        why = path_problem(path)
        if why is None and path in (HEADER, MANIFEST):
            why = "the manifest does not list itself or the header"
        if why is not None:
            problems.append(f"{MANIFEST} lists {path[:300]!r}: {why}")
            continue
        got = received.files.get(path)
        if got is None:
            problems.append(f"{path}: missing (the manifest lists it)")
        elif (got.size, got.sha256) != (entry.size, entry.sha256):
            problems.append(
                f"{path}: damaged: {got.size} bytes with sha256 {got.sha256}, "
                f"the manifest says {entry.size} bytes with sha256 {entry.sha256}"
            )
    if manifest or MANIFEST in received.files:
        for path in sorted(set(received.files) - set(manifest) - {HEADER, MANIFEST}):
            problems.append(f"{path}: not in the manifest")
        if RECORDS not in manifest:
            problems.append(f"{RECORDS}: missing (the manifest does not list it)")
    if header is not None and manifest:
        files, size = len(manifest), sum(e.size for e in manifest.values())
        counts = header.counts
        if counts.get("files") != files or counts.get("bytes") != size:
            problems.append(
                f"{HEADER}: counts say {counts.get('files')} files and {counts.get('bytes')} "
                f"bytes, the manifest lists {files} files and {size} bytes"
            )
    return Integrity(header, manifest, problems)
