"""Parsing upstream PEP 503 HTML / PEP 691 JSON pages into the simple-API model.

Upstream pages are untrusted input: whatever is not understood is skipped
(a link without a usable URL or file name, a malformed hash) or refused with
a one-line ``PageParseError``, never trusted to name a path.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
from collections.abc import Callable
from html.parser import HTMLParser
from typing import IO, Any
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import attrs
from packaging.utils import canonicalize_name

from devpid.simple.jsonstream import JSONStreamError, scan_object
from devpid.simple.model import (
    FILENAME,
    HEX,
    HTML_V1,
    TEXT_HTML,
    Link,
    LinkTableBuilder,
    ProjectPage,
    ProjectStatus,
    is_valid_project_name,
)

#: A page body: all of it, or a file to read it from (a large page, spooled to disk).
Body = bytes | IO[bytes]
#: Text of an HTML page parsed at a time.
HTML_CHUNK = 1 << 20


class PageParseError(Exception):
    """The upstream page could not be understood; the message is one line."""


#: An absolute URL that ``urljoin`` and ``urldefrag`` give back as it is (no query,
#: parameters, fragment or odd characters): most upstreams' file URLs, taken without
#: parsing (200,000 of them are seconds of ``urllib.parse``).
_PLAIN_ABSOLUTE = re.compile(r"https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?/[A-Za-z0-9._~%+@!/-]*\Z")


def _absolute(base_url: str, href: str) -> tuple[str, str] | None:
    """``href`` made absolute and its fragment apart (``urldefrag``); None when it is
    not a usable http(s) URL."""
    url, _, fragment = href.partition("#")
    if _PLAIN_ABSOLUTE.match(url):
        return url, fragment
    resolved = _resolve(base_url, href)
    if resolved is None:
        return None
    parts = urldefrag(resolved)
    return parts[0], parts[1]


def _resolve(base_url: str, href: str) -> str | None:
    """``href`` made absolute, or None when it is not a usable http(s) URL."""
    try:
        url = urljoin(base_url, href)
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return url


def _filename_of(url: str) -> str:
    return unquote(urlsplit(url).path.rsplit("/", 1)[-1])


#: The shortest digest kept: enough for ``<h3>/<h13>`` to have both parts.
MIN_DIGEST_DIGITS = 4
#: The digest sizes of the known algorithms (0 for the variable-length ``shake_*``).
_DIGEST_SIZES = {name: hashlib.new(name).digest_size for name in hashlib.algorithms_guaranteed}


def _valid_hashes(hashes: dict[Any, Any]) -> dict[str, str]:
    """Only hex digests of known algorithms: a bad one must not name a path.

    A digest shorter than its algorithm's (but of 4 hex digits at least) is kept,
    as devpi keeps it: it names the file's ``+f/<h3>/<h13>`` directory as devpi
    would, and a download of that file fails its verification (502), as it should.
    """
    valid = {}
    for name, value in hashes.items():
        if not isinstance(name, str) or not isinstance(value, str):
            continue
        name, value = name.lower(), value.lower()
        digest_size = _DIGEST_SIZES.get(name)
        if not digest_size or not HEX.match(value):
            continue
        if MIN_DIGEST_DIGITS <= len(value) <= digest_size * 2:
            valid[name] = value
    return valid


def _hash_fragment(fragment: str) -> dict[str, str]:
    name, sep, value = fragment.partition("=")
    return _valid_hashes({name: value}) if sep else {}


def _metadata_attr(value: str | None) -> bool | dict[str, str]:
    if value is None:
        return False
    if value.strip().lower() == "true":
        return True
    return _hash_fragment(value.strip()) or True


def _provenance(base_url: str, value: object) -> str | None:
    """A file's provenance URL (PEP 740) made absolute; None unless an http(s) URL."""
    if not isinstance(value, str) or not value.strip():
        return None
    resolved = _absolute(base_url, value.strip())
    return resolved[0] if resolved is not None else None


class _AnchorCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.meta: dict[str, str] = {}
        self._text: list[str] | None = None

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs_))
            self._text = []
        elif tag == "meta":
            found = dict(attrs_)
            if found.get("name") and found.get("content") is not None:
                self.meta[str(found["name"])] = str(found["content"])

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._text is not None and self.anchors:
            self.anchors[-1]["#text"] = "".join(self._text).strip()
            self._text = None


def _collect_html(body: bytes) -> _AnchorCollector:
    if body.lstrip()[:1] in (b"{", b"["):  # parsed as HTML, it would be a page without files
        raise PageParseError("a JSON document where HTML was expected")
    collector = _AnchorCollector()
    try:
        collector.feed(body.decode("utf-8", errors="replace"))
        collector.close()
    except Exception as e:  # HTMLParser raises assorted errors on garbage
        raise PageParseError(f"unparseable HTML: {e}") from None
    return collector


def _status_from(status: str | None, reason: str | None) -> ProjectStatus | None:
    return ProjectStatus(status, reason or None) if status else None


class _LinkCollector(HTMLParser):
    """A page's anchors made into links as they are parsed: no list of all their
    attributes (a page may have 200,000)."""

    def __init__(self, base_url: str, links: LinkTableBuilder) -> None:
        super().__init__(convert_charrefs=True)
        self.base_url = base_url
        self.links = links
        self.meta: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs_: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            link = _html_link(dict(attrs_), self.base_url)
            if link is not None:
                self.links.append(link)
        elif tag == "meta":
            found = dict(attrs_)
            if found.get("name") and found.get("content") is not None:
                self.meta[str(found["name"])] = str(found["content"])


def _html_link(anchor: dict[str, str | None], base_url: str) -> Link | None:
    href = anchor.get("href")
    if not href:
        return None
    resolved = _absolute(base_url, href)
    if resolved is None:
        return None
    url, fragment = resolved
    filename = _filename_of(url)
    if not FILENAME.match(filename):
        return None
    yanked: bool | str = False
    if "data-yanked" in anchor:
        yanked = anchor["data-yanked"] or True
    metadata = anchor.get("data-core-metadata", anchor.get("data-dist-info-metadata"))
    return Link(
        filename=filename,
        url=url,
        hashes=_hash_fragment(fragment),
        requires_python=anchor.get("data-requires-python") or None,
        yanked=yanked,
        core_metadata=_metadata_attr(metadata),
        provenance=_provenance(base_url, anchor.get("data-provenance")),
    )


def _reader(body: Body) -> IO[bytes]:
    return io.BytesIO(body) if isinstance(body, bytes) else body


def parse_project_html(
    name: str, body: Body, base_url: str, serial: int | None = None
) -> ProjectPage:
    """An HTML page, fed to the parser a chunk at a time."""
    source = _reader(body)
    links = LinkTableBuilder()
    collector = _LinkCollector(base_url, links)
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    first = True
    try:
        while True:
            data = source.read(HTML_CHUNK)
            text = decoder.decode(data, final=not data)
            if first and text.strip():
                first = False
                # parsed as HTML, it would be a page without files
                if text.lstrip()[:1] in ("{", "["):
                    raise PageParseError("a JSON document where HTML was expected")
            collector.feed(text)
            if not data:
                break
        collector.close()
    except PageParseError:
        raise
    except Exception as e:  # HTMLParser raises assorted errors on garbage
        raise PageParseError(f"unparseable HTML: {e}") from None
    status = _status_from(
        collector.meta.get("pypi:project-status"), collector.meta.get("pypi:project-status-reason")
    )
    return ProjectPage(name=name, links=links.build(), status=status, serial=serial)


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise PageParseError(f"unparseable JSON: {e}") from None
    if not isinstance(data, dict):
        raise PageParseError("JSON page is not an object")
    return data


def _json_metadata(item: dict[str, Any]) -> bool | dict[str, str]:
    value = item.get("core-metadata", item.get("dist-info-metadata", False))
    if isinstance(value, dict):
        return _valid_hashes(value) or True
    return bool(value)


def _json_link(item: object, base_url: str) -> Link | None:
    """One entry of a JSON page's ``files``; None to skip it, PageParseError if it is
    not a file entry at all."""
    if not isinstance(item, dict) or not isinstance(item.get("url"), str):
        raise PageParseError("JSON page has a file entry without a 'url'")
    resolved = _absolute(base_url, item["url"])
    if resolved is None:
        return None
    url = resolved[0]
    filename = item.get("filename") or _filename_of(url)
    if not isinstance(filename, str) or not FILENAME.match(filename):
        return None
    hashes = item.get("hashes") or {}
    if not isinstance(hashes, dict):
        raise PageParseError(f"JSON page: 'hashes' of {filename} is not an object")
    yanked = item.get("yanked", False)
    size = item.get("size")
    requires_python = item.get("requires-python")
    upload_time = item.get("upload-time")
    return Link(
        filename=filename,
        url=url,
        hashes=_valid_hashes(hashes),
        size=size if type(size) is int and size >= 0 else None,
        requires_python=requires_python if isinstance(requires_python, str) else None,
        yanked=yanked if isinstance(yanked, str) and yanked else bool(yanked),
        core_metadata=_json_metadata(item),
        upload_time=upload_time if isinstance(upload_time, str) else None,
        provenance=_provenance(base_url, item.get("provenance")),
    )


def _scan_json(body: Body, array: str, item: Callable[[Any], None]) -> dict[str, Any]:
    """The members of a JSON object but ``array``, whose items go to ``item`` one by one
    (``array`` itself is then ``[]`` in the result)."""
    source = _reader(body)
    members: dict[str, Any] = {}
    try:
        for key, value, is_item in scan_object(source, frozenset({array})):
            if is_item:
                item(value)
            elif key == array and isinstance(value, list):
                members[key] = []
                for each in value:  # an empty one (its items follow, if any)
                    item(each)
            else:
                members[key] = value
    except JSONStreamError as e:
        if str(e) == "not a JSON object":
            raise PageParseError("JSON page is not an object") from None
        raise PageParseError(f"unparseable JSON: {e}") from None
    return members


def parse_project_json(
    name: str, body: Body, base_url: str, serial: int | None = None
) -> ProjectPage:
    """A PEP 691 page, its files read one by one (the body may be a file)."""
    links = LinkTableBuilder()

    def add(item: object) -> None:
        link = _json_link(item, base_url)
        if link is not None:
            links.append(link)

    data = _scan_json(body, "files", add)
    if not isinstance(data.get("files"), list):
        raise PageParseError("JSON page has no 'files' list")
    versions = data.get("versions")
    status_data = data.get("project-status")
    status = None
    if isinstance(status_data, dict) and isinstance(status_data.get("status"), str):
        reason = status_data.get("reason")
        status = ProjectStatus(status_data["status"], reason if isinstance(reason, str) else None)
    return ProjectPage(
        name=name,
        links=links.build(),
        versions=tuple(str(v) for v in versions) if isinstance(versions, list) else None,
        status=status,
        serial=serial,
    )


def parse_stored_page(body: Body) -> ProjectPage:
    """A page file as ``ProjectPage.json_chunks`` (or ``json.dump`` of ``to_json()``, the
    older form) wrote it, its links read one by one. ValueError when it is damaged."""
    links = LinkTableBuilder()

    def add(item: object) -> None:
        if not isinstance(item, dict):
            raise ValueError("a page file's link is not an object")
        links.append(Link.from_json(item))

    try:
        data = _scan_json(body, "links", add)
    except PageParseError as e:
        raise ValueError(str(e)) from None
    if "links" not in data or not isinstance(data.get("name"), str):
        raise ValueError("a page file without a name or links")
    data["links"] = ()
    page = ProjectPage.from_json(data)
    return attrs.evolve(page, links=links.build())


def parse_project_page(
    name: str, body: Body, content_type: str, base_url: str, serial: int | None = None
) -> ProjectPage:
    """Parse an upstream project page by its Content-Type (JSON or HTML)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith("+json") or media == "application/json":
        return parse_project_json(name, body, base_url, serial)
    if media in (HTML_V1, TEXT_HTML, "") or media.endswith("+html"):
        return parse_project_html(name, body, base_url, serial)
    raise PageParseError(f"unexpected content type {media!r}")


def parse_project_list(body: bytes, content_type: str) -> tuple[str, ...]:
    """The project names of an upstream root page (``/simple/``), normalized."""
    media = content_type.split(";", 1)[0].strip().lower()
    names: list[str] = []
    if media.endswith("+json") or media == "application/json":
        projects = _load_json(body).get("projects")
        if not isinstance(projects, list):
            raise PageParseError("JSON project list has no 'projects' list")
        names = [p["name"] for p in projects if isinstance(p, dict) and "name" in p]
    else:
        collector = _collect_html(body)
        names = [str(a.get("#text") or "") for a in collector.anchors]
    return tuple(
        sorted(
            {
                canonicalize_name(n)
                for n in names
                if isinstance(n, str) and n and is_valid_project_name(n)
            }
        )
    )
