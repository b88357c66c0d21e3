"""Whether an uploaded file really is a wheel or an sdist, and the metadata inside it.

Runs in a thread (it reads archives); reads only what it needs and never
extracts anything to disk: member sizes are checked before a member is read.
The metadata is mapped to devpi's 31 stored keys (spec 5.1), and a form's
metadata (what twine and devpi-client send, spec 8.1) to the same keys, so
the two can be merged with the file's word winning.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from devpid.private.metadata import LIST_KEYS, METADATA_KEYS


class BadArchive(Exception):
    """The file is not what its name says; the message is one line for a 400."""


#: devpi's accepted upload extensions (``K:validation.py``).
ARCHIVE_EXTENSIONS: tuple[str, ...] = (
    *("exe", "tar.gz", "bz2", "rpm", "deb", "zip"),
    *("tgz", "egg", "dmg", "msi", "whl"),
)

#: ``packaging``'s raw metadata names that devpi spells differently.
_RAW_TO_DEVPI = {
    "platforms": "platform",
    "supported_platforms": "supported_platform",
    "provides_extra": "provides_extras",
    "license_files": "license_file",
}

#: What an unset core-metadata field says in old setuptools output.
_UNKNOWN = "UNKNOWN"


@attrs.frozen
class DistributionInfo:
    """What the file says about itself; name, version and metadata empty for a plain zip."""

    name: str | None
    version: str | None
    metadata: dict[str, Any]
    #: A wheel's raw METADATA, served as its PEP 658 ``.metadata`` file; None for others.
    core_metadata: bytes | None


def has_archive_extension(filename: str) -> bool:
    """Whether devpi would take a file of this name as a release file."""
    lowered = filename.lower()
    return any(lowered.endswith("." + ext) for ext in ARCHIVE_EXTENSIONS)


def inspect_distribution(
    path: Path, filename: str, max_metadata_size: int = 4 << 20, filetype: str | None = None
) -> DistributionInfo:
    """Check that ``path`` is the archive its ``filename`` says, and read its metadata.

    A tar archive must hold a ``PKG-INFO`` unless the form says it is not an sdist
    (``filetype`` ``bdist_dumb``, say: a binary archive has none). Blocking: the
    caller runs it in a thread. Raises ``BadArchive``.
    """
    try:
        size = path.stat().st_size
    except OSError as err:
        raise BadArchive(f"{filename} cannot be read: {err.strerror}") from None
    if size == 0:
        raise BadArchive(f"{filename} is empty")
    lowered = filename.lower()
    if lowered.endswith(".whl"):
        return _inspect_wheel(path, filename, max_metadata_size)
    if lowered.endswith((".tar.gz", ".tgz", ".bz2")):
        sdist = filetype in (None, "", "sdist")
        return _inspect_tar_sdist(path, filename, max_metadata_size, sdist)
    if lowered.endswith(".zip"):
        return _inspect_zip_sdist(path, filename, max_metadata_size)
    if lowered.endswith(".egg"):
        _open_zip(path, filename, "egg").close()
    return DistributionInfo(name=None, version=None, metadata={}, core_metadata=None)


#: What a broken archive raises while it is read.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,  # an encrypted zip member
    NotImplementedError,  # an unsupported compression method
    ValueError,
)


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _open_zip(path: Path, filename: str, kind: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except _ARCHIVE_ERRORS as err:
        raise BadArchive(f"{filename} is not a valid {kind}: {_one_line(err)}") from None


def _read_zip_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, filename: str, kind: str, limit: int
) -> bytes:
    if info.file_size > limit:
        raise BadArchive(f"{filename} is not a valid {kind}: {info.filename} is too large")
    with archive.open(info) as member:
        data = member.read(limit + 1)  # the header's size may lie
    if len(data) > limit:
        raise BadArchive(f"{filename} is not a valid {kind}: {info.filename} is too large")
    return data


def _inspect_wheel(path: Path, filename: str, limit: int) -> DistributionInfo:
    kind = "wheel"
    with _open_zip(path, filename, kind) as archive:
        try:
            infos = {info.filename: info for info in archive.infolist()}
            dist_infos = {
                name.split("/", 1)[0]
                for name in infos
                if "/" in name and name.split("/", 1)[0].endswith(".dist-info")
            }
            if len(dist_infos) != 1:
                found = "no" if not dist_infos else "more than one"
                raise BadArchive(f"{filename} is not a valid wheel: {found} .dist-info directory")
            (dist_info,) = dist_infos
            for required in ("METADATA", "WHEEL"):
                if f"{dist_info}/{required}" not in infos:
                    raise BadArchive(f"{filename} is not a valid wheel: no {dist_info}/{required}")
            raw = _read_zip_member(archive, infos[f"{dist_info}/METADATA"], filename, kind, limit)
        except BadArchive:
            raise
        except _ARCHIVE_ERRORS as err:
            raise BadArchive(f"{filename} is not a valid {kind}: {_one_line(err)}") from None
    return _info_from(raw, core_metadata=raw)


def _is_top_pkg_info(name: str) -> bool:
    """``<top>/PKG-INFO`` (or ``PKG-INFO`` at the root, as hand-made archives have it): the
    sdist's own metadata, not an egg-info's copy deeper down."""
    parts = name.split("/")
    if len(parts) == 1:
        return parts[0] == "PKG-INFO"
    return len(parts) == 2 and parts[0] not in ("", ".", "..") and parts[1] == "PKG-INFO"


def _inspect_zip_sdist(path: Path, filename: str, limit: int) -> DistributionInfo:
    kind = "zip file"
    with _open_zip(path, filename, kind) as archive:
        try:
            for info in archive.infolist():
                if _is_top_pkg_info(info.filename) and not info.is_dir():
                    raw = _read_zip_member(archive, info, filename, kind, limit)
                    return _info_from(raw, core_metadata=None)
        except BadArchive:
            raise
        except _ARCHIVE_ERRORS as err:
            raise BadArchive(f"{filename} is not a valid {kind}: {_one_line(err)}") from None
    # devpi takes plain zips too: nothing to say about them.
    return DistributionInfo(name=None, version=None, metadata={}, core_metadata=None)


def _inspect_tar_sdist(
    path: Path, filename: str, limit: int, sdist: bool = True
) -> DistributionInfo:
    kind = "sdist"
    try:
        with tarfile.open(path, "r:*") as archive:
            raw = None
            while (member := archive.next()) is not None:
                if raw is None and _is_top_pkg_info(member.name) and member.isfile():
                    if member.size > limit:
                        raise BadArchive(f"{filename} is not a valid sdist: PKG-INFO is too large")
                    extracted = archive.extractfile(member)
                    assert extracted is not None  # a regular file
                    raw = extracted.read(limit + 1)
                # Don't keep every header: a 1 GB tar of empty files is 2M of them.
                archive.members.clear()  # type: ignore[attr-defined]
    except BadArchive:
        raise
    except _ARCHIVE_ERRORS as err:
        raise BadArchive(f"{filename} is not a valid {kind}: {_one_line(err)}") from None
    if raw is None:
        if not sdist:
            return DistributionInfo(name=None, version=None, metadata={}, core_metadata=None)
        raise BadArchive(f"{filename} is not a valid sdist: no PKG-INFO")
    return _info_from(raw, core_metadata=None)


def _info_from(raw: bytes, core_metadata: bytes | None) -> DistributionInfo:
    metadata = metadata_from_core(raw)
    return DistributionInfo(
        name=metadata.get("name") or None,
        version=metadata.get("version") or None,
        metadata=metadata,
        core_metadata=core_metadata,
    )


def metadata_from_core(raw: bytes) -> dict[str, Any]:
    """devpi's keys from core metadata (METADATA or PKG-INFO); fields it lacks are left out."""
    # at the first upload, not at start-up (the email parser behind it is not small)
    from packaging.metadata import parse_email

    parsed, unparsed = parse_email(raw)
    found: dict[str, Any] = {}
    for raw_key, value in parsed.items():
        key = _RAW_TO_DEVPI.get(raw_key, raw_key)
        if key == "keywords" and isinstance(value, list):
            value = ",".join(value)
        elif key == "project_urls" and isinstance(value, dict):
            value = [f"{label}, {url}" for label, url in value.items()]
        if key in METADATA_KEYS:
            found[key] = value
    comments = unparsed.get("comment")
    if isinstance(comments, list) and comments and isinstance(comments[0], str):
        found["comment"] = comments[0]
    return {key: _devpi_value(key, found[key]) for key in METADATA_KEYS if key in found}


def _devpi_value(key: str, value: Any) -> Any:
    """A list for devpi's list keys, a string otherwise; ``UNKNOWN`` means nothing."""
    if key in LIST_KEYS:
        values = value if isinstance(value, list) else [value]
        return [str(item) for item in values if item != _UNKNOWN]
    if isinstance(value, list):
        value = value[0] if value else ""
    text = str(value)
    return "" if text == _UNKNOWN else text


def metadata_from_form(fields: Mapping[str, list[str]]) -> dict[str, Any]:
    """devpi's keys from an upload form's fields (twine and devpi-client send them)."""
    return {
        key: _devpi_value(key, fields[key]) for key in METADATA_KEYS if fields.get(key) is not None
    }


def merged_metadata(form: Mapping[str, Any], info: DistributionInfo) -> dict[str, Any]:
    """The form's metadata overlaid by the file's: the file cannot lie about itself."""
    merged = dict(form)
    merged.update(info.metadata)
    return merged
