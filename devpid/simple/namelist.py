"""A project list of any size as a file: its format, its parsing, rendering and merging.

An upstream lists about 700,000 project names. As 700,000 ``str`` objects in
a tuple (plus the JSON to store them and the HTML to serve them) they cost a
worker well over 100 MB; here they live in a *names file*: sorted, normalised,
one a line, read a block at a time and never held whole by a worker.

The names file is also valid JSON, ``{"names": [...]}`` as the serverdir has
always held it (fsck, bundles and older readers keep working)::

    {"format":"devpid-names/1","tag":"<hex>","count":N,"names":[
    "first",
    ...
    "last"
    ]}

The first line says what follows: ``tag`` names the content (a hash of the
names), ``count`` how many there are. Normalised names hold no ``"`` or ``,``,
so a block of lines becomes names with two ``replace`` calls.

Everything here is plain Python with no Twisted: a worker reads blocks of the
file on its reactor, a child process (``devpid.simple.namejob``) does the heavy
parts (parsing an upstream's list, rendering and gzipping the pages).
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

import attrs
from packaging.utils import canonicalize_name

from devpid.simple.model import JSON_V1, is_valid_project_name

FORMAT = "devpid-names/1"
_HEADER_START = b'{"format":"' + FORMAT.encode() + b'"'
#: Bytes read at a time: about 5,000 names.
BLOCK_BYTES = 64 * 1024
#: A name needs no escaping in HTML or JSON (normalised names never do).
_PLAIN_NAME = re.compile(r"[a-z0-9][a-z0-9-]*\Z")
#: An anchor's text in an HTML project list (PEP 503: the text is the name).
_ANCHOR = re.compile(rb"<a\b[^>]*>([^<]*)</a\s*>", re.IGNORECASE)
_API_VERSION = "1.1"


class NameListError(Exception):
    """The upstream's list (or a names file) could not be understood; one line."""


@attrs.frozen
class Header:
    """What the first line of a names file says."""

    tag: str
    count: int
    #: Where the first name's line starts.
    offset: int


def read_header(path: Path | str) -> Header | None:
    """The header of a names file; None when it is in the older one-line form."""
    with open(path, "rb") as f:
        line = f.readline(4096)
    if not line.startswith(_HEADER_START) or not line.endswith(b"[\n"):
        return None
    try:
        data = json.loads(line[:-2] + b"[]}")
        return Header(str(data["tag"]), int(data["count"]), len(line))
    except (ValueError, KeyError, TypeError):
        return None


def names_tag(names: list[str]) -> str:
    digest = hashlib.blake2b(digest_size=12)
    for start in range(0, len(names), 10_000):
        digest.update("\n".join(names[start : start + 10_000]).encode() + b"\n")
    return digest.hexdigest()


def write_names_file(path: Path | str, names: list[str]) -> Header:
    """Write sorted, normalised, unique ``names`` as a names file (the caller renames it)."""
    tag = names_tag(names)
    first = json.dumps({"format": FORMAT, "tag": tag, "count": len(names)}, separators=(",", ":"))
    head = (first[:-1] + ',"names":[\n').encode()
    with open(path, "wb") as f:
        f.write(head)
        for start in range(0, len(names), 10_000):
            block = names[start : start + 10_000]
            text = '",\n"'.join(block)
            last = start + len(block) >= len(names)
            f.write(('"' + text + ('"\n' if last else '",\n')).encode())
        f.write(b"]}\n")
    return Header(tag, len(names), len(head))


def blocks(path: Path | str, offset: int, block_bytes: int = BLOCK_BYTES) -> Iterator[str]:
    """The names of a names file a block at a time: ``"a\\nb\\n...\\nz"`` (no empty block)."""
    with open(path, "rb") as f:
        f.seek(offset)
        yield from _blocks_of(f, block_bytes)


def _blocks_of(f: IO[bytes], block_bytes: int) -> Iterator[str]:
    rest = b""
    while True:
        data = f.read(block_bytes)
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n")
        if cut == -1:
            rest = data
            continue
        rest = data[cut + 1 :]
        text = _names_of(data[:cut])
        if text:
            yield text
    text = _names_of(rest)
    if text:
        yield text


def _names_of(lines: bytes) -> str:
    text = lines.decode("utf-8").replace('"', "").replace(",", "").replace("]}", "")
    return text.strip("\n")


def read_names(path: Path | str) -> list[str]:
    """Every name of a names file (tests, and small lists only)."""
    header = read_header(path)
    if header is None:
        return list(legacy_names(Path(path).read_bytes()))
    return [n for block in blocks(path, header.offset) for n in block.split("\n")]


def legacy_names(body: bytes) -> list[str]:
    """The names of the older one-line ``{"names": [...]}`` file."""
    try:
        names = json.loads(body)["names"]
    except (ValueError, KeyError, TypeError) as e:
        raise NameListError(f"not a project list file: {e}") from None
    if not isinstance(names, list):
        raise NameListError("not a project list file: no 'names' list")
    return normalised([n for n in names if isinstance(n, str)])


# -- parsing an upstream's list ------------------------------------------------------------


def normalised(names: Iterable[str]) -> list[str]:
    """Valid names, normalised, deduplicated and sorted."""
    return sorted({canonicalize_name(n) for n in names if n and is_valid_project_name(n)})


def parse_upstream_list(body: bytes, content_type: str) -> list[str]:
    """The names of an upstream's ``/simple/`` page, normalised, sorted, unique.

    A truncated or garbled page fails: a partial list must never replace a
    whole one. JSON is checked by its parser; HTML must reach its ``</body>``
    or ``</html>`` (a page cut short lists only some of the projects).
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("+json") or media == "application/json":
        return normalised(_json_names(body))
    if body.lstrip()[:1] in (b"{", b"["):
        raise NameListError("a JSON document where HTML was expected")
    tail = body[-4096:].lower()
    if b"</body>" not in tail and b"</html>" not in tail:
        raise NameListError("the HTML project list is cut short (no </body> or </html>)")
    names = (
        html.unescape(m.group(1).decode("utf-8", "replace")).strip() for m in _ANCHOR.finditer(body)
    )
    return normalised(names)


def _json_names(body: bytes) -> list[str]:
    found: list[str] = []

    def project(pairs: list[tuple[str, Any]]) -> Any:
        # each small object becomes its name (or nothing): no 700,000 dicts at once
        keys = dict(pairs)
        if "projects" in keys or "meta" in keys:
            return keys
        name = keys.get("name")
        if isinstance(name, str):
            found.append(name)
        return None

    try:
        data = json.loads(body, object_pairs_hook=project)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise NameListError(f"unparseable JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("projects"), list):
        raise NameListError("JSON project list has no 'projects' list")
    return found


# -- rendering -----------------------------------------------------------------------------


def html_head() -> str:
    return (
        "<!DOCTYPE html>\n"
        f'<html><head><meta name="pypi:repository-version" content="{_API_VERSION}">'
        "<title>Simple index</title></head><body>\n"
    )


HTML_TAIL = "</body></html>\n"


def json_head() -> str:
    return '{"meta":{"api-version":"' + _API_VERSION + '"},"projects":['


JSON_TAIL = "]}"


def html_lines(names: list[str], base: str) -> str:
    """The anchors of ``names``, one a line; ``base`` is ``<prefix>/<index>/+simple/``,
    HTML-escaped."""
    if all(_PLAIN_NAME.match(n) for n in names):
        return "".join(f'<a href="{base}{n}/">{n}</a><br/>\n' for n in names)
    return "".join(f'<a href="{base}{html.escape(n)}/">{html.escape(n)}</a><br/>\n' for n in names)


def json_items(names: list[str]) -> str:
    """The ``projects`` entries of ``names``, comma-separated."""
    if all(_PLAIN_NAME.match(n) for n in names):
        return ",".join('{"name":"' + n + '"}' for n in names)
    return ",".join('{"name":' + json.dumps(n) + "}" for n in names)


@attrs.frozen
class RenderedFiles:
    """A project list rendered: the body, its gzip form beside it, and its ETag."""

    plain: Path
    gzipped: Path
    etag: bytes
    size: int
    gzipped_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "plain": str(self.plain),
            "gzipped": str(self.gzipped),
            "etag": self.etag.decode(),
            "size": self.size,
            "gzipped_size": self.gzipped_size,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RenderedFiles:
        return cls(
            Path(data["plain"]),
            Path(data["gzipped"]),
            str(data["etag"]).encode(),
            int(data["size"]),
            int(data["gzipped_size"]),
        )


def render_to_files(
    groups: Iterable[list[str]], media_type: str, base: str, plain: Path, level: int = 6
) -> RenderedFiles:
    """Write the list of ``groups`` of names as ``media_type`` to ``plain`` and gzipped to
    ``plain.gz``, in one pass; each is written beside and renamed into place."""
    gzipped = plain.with_name(plain.name + ".gz")
    plain_tmp = plain.with_name(f".{plain.name}.{os.getpid()}.tmp")
    gz_tmp = gzipped.with_name(f".{gzipped.name}.{os.getpid()}.tmp")
    digest = hashlib.blake2b(digest_size=12)
    size = 0
    try:
        with (
            open(plain_tmp, "wb") as out,
            open(gz_tmp, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as zipped,
        ):

            def write(text: str) -> None:
                nonlocal size
                data = text.encode("utf-8")
                size += len(data)
                digest.update(data)
                out.write(data)
                zipped.write(data)

            if media_type == JSON_V1:
                write(json_head())
                first = True
                for names in groups:
                    if names:
                        write(("" if first else ",") + json_items(names))
                        first = False
                write(JSON_TAIL)
            else:
                write(html_head())
                for names in groups:
                    write(html_lines(names, base))
                write(HTML_TAIL)
        os.replace(plain_tmp, plain)
        os.replace(gz_tmp, gzipped)
    except BaseException:
        plain_tmp.unlink(missing_ok=True)
        gz_tmp.unlink(missing_ok=True)
        raise
    etag = b'"' + digest.hexdigest().encode() + b'"'
    return RenderedFiles(plain, gzipped, etag, size, gzipped.stat().st_size)


# -- joining lists (a stage's, from its bases) ---------------------------------------------


@attrs.frozen
class Source:
    """One list of a join: a names file (from ``offset``) or names given."""

    path: str | None = None
    offset: int = 0
    names: tuple[str, ...] = ()

    def groups(self) -> Iterator[list[str]]:
        if self.path is None:
            for start in range(0, len(self.names), 5_000):
                yield list(self.names[start : start + 5_000])
            return
        for block in blocks(self.path, self.offset):
            yield block.split("\n")

    def to_json(self) -> dict[str, Any]:
        if self.path is not None:
            return {"path": self.path, "offset": self.offset}
        return {"names": list(self.names)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Source:
        if "path" in data:
            return cls(path=str(data["path"]), offset=int(data.get("offset", 0)))
        return cls(names=tuple(str(n) for n in data.get("names", ())))


def joined(sources: Iterable[Source], only: frozenset[str] | None = None) -> Iterator[list[str]]:
    """The names of ``sources`` in order, each once (the first occurrence kept); with
    ``only``, just those names. A stage's list: its own names first, then its bases'."""
    seen: set[str] = set()
    sources = list(sources)
    for position, source in enumerate(sources):
        last = position == len(sources) - 1
        for group in source.groups():
            kept = [n for n in group if n not in seen] if seen else group
            if only is not None:
                kept = [n for n in kept if n in only]
            if not last:
                seen.update(kept)
            if kept:
                yield kept


class Renderer(Protocol):
    """What renders a ``NamesContent`` (``devpid.mirror.projectlist.ListRenderer``)."""

    async def rendered(
        self, content: NamesContent, index: str, media_type: str, base: str
    ) -> RenderedFiles: ...

    def forget(self, tag: str, key: str) -> None: ...


@attrs.frozen(eq=False)
class NamesContent:
    """A project list kept in files (a cached page's ``content``): the join of ``sources``,
    with ``only`` those names if given, named by ``tag``; ``renderer`` renders it."""

    tag: str
    sources: tuple[Source, ...]
    renderer: Renderer
    only: frozenset[str] | None = None
    #: How many names (known for a mirror's list, not for a join).
    count: int | None = None

    def names(self) -> list[str]:
        """Every name (tests, small lists)."""
        return [n for group in joined(self.sources, self.only) for n in group]


__all__ = [
    "BLOCK_BYTES",
    "FORMAT",
    "Header",
    "NameListError",
    "NamesContent",
    "RenderedFiles",
    "Renderer",
    "Source",
    "blocks",
    "joined",
    "legacy_names",
    "normalised",
    "parse_upstream_list",
    "read_header",
    "read_names",
    "render_to_files",
    "write_names_file",
]
