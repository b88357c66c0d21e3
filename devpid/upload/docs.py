"""Documentation zips: checked for every trick a hostile zip can play, then unpacked safely.

Blocking (the caller runs both in a thread). The zip is checked from its
directory first (names, links, devices, counts, sizes, compression ratios),
then extracted into a fresh directory beside the destination counting the
bytes really written, since the directory's sizes may lie, and only then
renamed into place, so readers never see half a set of docs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

import attrs

#: Members smaller than this are not judged by their compression ratio: a
#: small file of blanks compresses very well and harms nobody.
_RATIO_FLOOR = 1 << 20
_CHUNK = 1 << 16


class BadDocZip(Exception):
    """A documentation zip refused; the message is one line for a 400."""


@attrs.frozen
class DocLimits:
    """How much one documentation zip may unpack to."""

    max_total_size: int = 512 << 20
    max_files: int = 20000
    #: Uncompressed over compressed size of one member (for members past 1 MiB).
    max_ratio: int = 200


def _check_name(name: str) -> None:
    if not name or "\x00" in name or "\\" in name:
        raise BadDocZip(f"unsafe member name {name!r}")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise BadDocZip(f"absolute member name {name!r}")
    parts = name.rstrip("/").split("/")
    if ".." in parts:
        raise BadDocZip(f"member name {name!r} leaves the directory")
    if any(part in ("", ".") for part in parts):
        raise BadDocZip(f"unsafe member name {name!r}")
    if any(ord(char) < 0x20 for char in name):
        raise BadDocZip(f"unsafe member name {name!r}")


def _check_member(info: zipfile.ZipInfo, limits: DocLimits) -> None:
    _check_name(info.filename)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise BadDocZip(f"member {info.filename!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise BadDocZip(f"member {info.filename!r} is not a regular file")
    if info.flag_bits & 0x1:
        raise BadDocZip(f"member {info.filename!r} is encrypted")
    if info.file_size > _RATIO_FLOOR and (
        info.file_size > limits.max_ratio * max(info.compress_size, 1)
    ):
        raise BadDocZip(f"member {info.filename!r} is compressed suspiciously well")


def _too_large(limits: DocLimits) -> BadDocZip:
    return BadDocZip(f"the documentation unpacks to more than {limits.max_total_size} bytes")


def _members(path: Path, limits: DocLimits) -> tuple[zipfile.ZipFile, list[zipfile.ZipInfo]]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise BadDocZip(f"not a valid zip file: {' '.join(str(err).split())}") from None
    try:
        infos = archive.infolist()
        if len(infos) > limits.max_files:
            raise BadDocZip(f"more than {limits.max_files} files in the documentation zip")
        seen: set[str] = set()
        total = 0
        for info in infos:
            _check_member(info, limits)
            key = info.filename.rstrip("/")
            if key in seen:
                raise BadDocZip(f"member {key!r} appears twice")
            seen.add(key)
            total += info.file_size
            if total > limits.max_total_size:
                raise BadDocZip(
                    f"the documentation unpacks to more than {limits.max_total_size} bytes"
                )
    except BaseException:
        archive.close()
        raise
    return archive, infos


def check_doc_zip(path: Path, limits: DocLimits) -> None:
    """Raise ``BadDocZip`` unless ``path`` is a zip that is safe to unpack within ``limits``."""
    archive, _ = _members(path, limits)
    archive.close()


def unpack_doc_zip(path: Path, destination: Path, limits: DocLimits) -> int:
    """Unpack a checked zip to ``destination``, replacing what was there; the files written."""
    archive, infos = _members(path, limits)
    with archive:
        destination.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{destination.name}.new-", dir=destination.parent))
        try:
            os.chmod(fresh, 0o755)
            written = _extract(archive, infos, fresh, limits)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
    _swap_in(fresh, destination)
    return written


def _extract(
    archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path, limits: DocLimits
) -> int:
    real_root = root.resolve()
    total = 0
    files = 0
    for info in infos:
        target = root / info.filename.rstrip("/")
        resolved = target.resolve()
        if resolved == real_root or not resolved.is_relative_to(real_root):
            raise BadDocZip(f"member {info.filename!r} leaves the directory")
        try:
            if info.is_dir():
                _make_dirs(resolved, real_root)
                continue
            _make_dirs(resolved.parent, real_root)
            fd = os.open(
                resolved, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
            )
            with os.fdopen(fd, "wb") as out, archive.open(info) as member:
                os.fchmod(out.fileno(), 0o644)  # whatever the umask says
                while chunk := member.read(_CHUNK):
                    total += len(chunk)
                    if total > limits.max_total_size:
                        raise _too_large(limits)
                    out.write(chunk)
        except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as err:
            raise BadDocZip(f"member {info.filename!r} cannot be read: {err}") from None
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise BadDocZip(f"member {info.filename!r} clashes with another member") from None
        files += 1
    return files


def _make_dirs(directory: Path, root: Path) -> None:
    """Create ``directory`` and its parents below ``root``, each 0o755 whatever the umask."""
    missing = []
    while directory != root and not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        each.mkdir()  # a file in the way raises FileExistsError
        os.chmod(each, 0o755)


def _swap_in(fresh: Path, destination: Path) -> None:
    """Put ``fresh`` where ``destination`` is: the old one is renamed away, then removed."""
    old = destination.with_name(f".{destination.name}.old-{secrets.token_hex(4)}")
    try:
        os.rename(destination, old)
    except FileNotFoundError:
        os.rename(fresh, destination)
        return
    os.rename(fresh, destination)
    shutil.rmtree(old, ignore_errors=True)


def unpack_docs(path: Path, size: int, target: Path, limits: DocLimits) -> None:
    """Check and unpack a doc zip; an empty file is an empty documentation set (devpi-client
    uploads one for a project without docs). Blocking."""
    if size == 0:
        target.mkdir(parents=True, exist_ok=True)
        return
    try:
        check_doc_zip(path, limits)
        unpack_doc_zip(path, target, limits)
    except OSError as e:  # a member name too long for the file system, say
        raise BadDocZip(f"the doc zip cannot be unpacked: {e.strerror or e}") from None
