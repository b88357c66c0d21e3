"""Content negotiation (PEP 691) and rendering pages as PEP 503 HTML or PEP 691 JSON."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Iterator
from html import escape

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)

from devpid.simple.model import HTML_V1, JSON_V1, PROVENANCE, TEXT_HTML, Link, ProjectPage

#: What devpid can answer with, and the Content-Type it sends for each.
CONTENT_TYPES = {
    JSON_V1: JSON_V1,
    HTML_V1: HTML_V1,
    TEXT_HTML: "text/html; charset=utf-8",
}
_ALIASES = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}
#: ``?format=`` shorthands.
_FORMATS = {"json": JSON_V1, "html": TEXT_HTML, **{t: t for t in CONTENT_TYPES}, **_ALIASES}
#: Tie-breaks: an explicit ask prefers JSON (it is cheaper for everyone); a
#: wildcard gets plain HTML, which every client understands.
_EXPLICIT_PREFERENCE = (JSON_V1, HTML_V1, TEXT_HTML)
_WILDCARD_PREFERENCE = (TEXT_HTML, HTML_V1, JSON_V1)

API_VERSION = "1.1"
#: PEP 740 provenance URLs need this API version.
API_VERSION_WITH_PROVENANCE = "1.3"
#: PEP 792 project status markers need this API version.
API_VERSION_WITH_STATUS = "1.4"


class NotAcceptable(Exception):
    """Nothing devpid can render satisfies the client's Accept header."""


def parse_accept(header: str) -> list[tuple[str, float]]:
    """``Accept``'s media ranges (lower case) and their q-values, clamped to 0..1."""
    ranges = []
    for part in header.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        media = media.lower()
        if not media or "/" not in media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
                quality = min(max(quality, 0.0), 1.0) if math.isfinite(quality) else 0.0
        ranges.append((_ALIASES.get(media, media), quality))
    return ranges


def _specificity(media_range: str, offered: str) -> int:
    """2 for an exact match, 1 for ``type/*``, 0 for ``*/*``, -1 for no match."""
    if media_range == offered:
        return 2
    kind, _, subtype = media_range.partition("/")
    if subtype == "*" and offered.startswith(kind + "/"):
        return 1
    if media_range == "*/*":
        return 0
    return -1


@functools.lru_cache(maxsize=256)
def negotiate(accept: str | None, format_param: str | None = None) -> str:
    """The media type to answer with, from ``?format=`` or the Accept header's q-values."""
    if format_param:
        named = _FORMATS.get(format_param.strip().lower())
        if named is None:
            raise NotAcceptable(f"unknown format {format_param!r}; use json or html")
        return named
    if not accept or not accept.strip():
        return TEXT_HTML
    best: tuple[float, int, int] | None = None
    chosen: str | None = None
    for offered in CONTENT_TYPES:
        matches = [
            (spec, q)
            for media_range, q in parse_accept(accept)
            if (spec := _specificity(media_range, offered)) >= 0
        ]
        if not matches:
            continue
        # The most specific range that matches decides the quality (RFC 9110).
        spec, quality = max(matches)
        if quality <= 0:
            continue
        preference = _EXPLICIT_PREFERENCE if spec == 2 else _WILDCARD_PREFERENCE
        key = (quality, spec, -preference.index(offered))
        if best is None or key > best:
            best, chosen = key, offered
    if chosen is None:
        raise NotAcceptable(f"none of {accept!r} is available; try {JSON_V1} or {TEXT_HTML}")
    return chosen


@attrs.frozen
class LinkRenderer:
    """Turns a link into devpid's URL for it (root-relative, or under the outside URL)."""

    prefix: str
    index: str

    def file_url(self, link: Link) -> str:
        return f"{self.prefix}/{link.index or self.index}/{link.url_path}"

    def provenance_url(self, link: Link) -> str:
        """devpid's URL of the file's provenance (PEP 740): the file's, plus ``.provenance``."""
        return self.file_url(link) + PROVENANCE

    def project_url(self, name: str) -> str:
        return f"{self.prefix}/{self.index}/+simple/{name}/"


def render_project_page(
    page: ProjectPage,
    media_type: str,
    urls: LinkRenderer,
    select: Callable[[Link], Link | None] | None = None,
) -> bytes:
    """Render ``page``; ``select`` may drop (None) or change each link first."""
    return "".join(project_page_pieces(page, media_type, urls, select)).encode("utf-8")


def project_page_pieces(
    page: ProjectPage,
    media_type: str,
    urls: LinkRenderer,
    select: Callable[[Link], Link | None] | None = None,
) -> Iterator[str]:
    """``render_project_page``'s text in pieces, a link at a time: a page of 200,000
    links is written out (``devpid.mirror.spool``) without being built whole."""
    if select is None:
        has_provenance = page.links.has_provenance

        def links() -> Iterator[Link]:
            return iter(page.links)
    else:

        def links() -> Iterator[Link]:
            return (chosen for link in page.links if (chosen := select(link)) is not None)

        # what is left after ``select`` decides the API version: one more pass
        has_provenance = page.links.has_provenance and any(
            link.provenance is not None for link in links()
        )
    version = _api_version(page, has_provenance)
    if media_type == JSON_V1:
        return _project_json(page, links(), urls, version)
    return _project_html(page, links(), urls, version)


def _api_version(page: ProjectPage, has_provenance: bool) -> str:
    """The lowest API version that has every key the page uses."""
    if page.status:
        return API_VERSION_WITH_STATUS
    if has_provenance:
        return API_VERSION_WITH_PROVENANCE
    return API_VERSION


def _compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def _project_json(
    page: ProjectPage, links: Iterator[Link], urls: LinkRenderer, version: str
) -> Iterator[str]:
    meta: dict[str, object] = {"api-version": version}
    if page.serial is not None:
        meta["_last-serial"] = page.serial
    yield f'{{"meta":{_compact(meta)},"name":{_compact(page.name)},"files":['
    versions: set[str] | None = set() if page.versions is None else None
    separator = ""
    for link in links:
        entry: dict[str, object] = {
            "filename": link.filename,
            "url": urls.file_url(link),
            "hashes": link.hashes,
            "requires-python": link.requires_python,
            "yanked": link.yanked,
            "core-metadata": link.core_metadata,
            # The pre-PEP 714 spelling, for older installers.
            "dist-info-metadata": link.core_metadata,
        }
        if link.size is not None:
            entry["size"] = link.size
        if link.upload_time is not None:
            entry["upload-time"] = link.upload_time
        if link.provenance is not None:
            entry["provenance"] = urls.provenance_url(link)
        yield separator + _compact(entry)
        separator = ","
        if versions is not None:
            _add_version(versions, link.filename)
    listed = list(page.versions) if page.versions is not None else sorted(versions or ())
    yield f'],"versions":{_compact(listed)}'
    if page.status:
        status: dict[str, str] = {"status": page.status.status}
        if page.status.reason:
            status["reason"] = page.status.reason
        yield f',"project-status":{_compact(status)}'
    yield "}"


def _add_version(found: set[str], filename: str) -> None:
    try:
        if filename.endswith(".whl"):
            found.add(str(parse_wheel_filename(filename)[1]))
        else:
            found.add(str(parse_sdist_filename(filename)[1]))
    except (InvalidWheelFilename, InvalidSdistFilename):
        pass


def _versions(links: Iterable[Link]) -> list[str]:
    found: set[str] = set()
    for link in links:
        _add_version(found, link.filename)
    return sorted(found)


def _project_html(
    page: ProjectPage, links: Iterator[Link], urls: LinkRenderer, version: str
) -> Iterator[str]:
    head = [f'<meta name="pypi:repository-version" content="{version}">']
    if page.status:
        head.append(f'<meta name="pypi:project-status" content="{escape(page.status.status)}">')
        if page.status.reason:
            head.append(
                f'<meta name="pypi:project-status-reason" content="{escape(page.status.reason)}">'
            )
    title = escape(page.name)
    yield "<!DOCTYPE html>\n"
    yield f"<html><head>{''.join(head)}<title>Links for {title}</title></head>\n"
    yield f"<body><h1>Links for {title}</h1>\n"
    for link in links:
        href = urls.file_url(link)
        if link.sha256:
            href += f"#sha256={link.sha256}"
        attributes = [f'href="{escape(href)}"']
        if link.requires_python:
            attributes.append(f'data-requires-python="{escape(link.requires_python)}"')
        if link.yanked is not False:
            reason = link.yanked if isinstance(link.yanked, str) else ""
            attributes.append(f'data-yanked="{escape(reason)}"')
        if link.core_metadata is not False:
            value = "true"
            if link.metadata_sha256:
                value = f"sha256={link.metadata_sha256}"
            attributes.append(f'data-core-metadata="{value}"')
            attributes.append(f'data-dist-info-metadata="{value}"')
        if link.provenance is not None:
            attributes.append(f'data-provenance="{escape(urls.provenance_url(link))}"')
        yield f"<a {' '.join(attributes)}>{escape(link.filename)}</a><br/>\n"
    yield "</body></html>\n"


def render_project_list(names: Iterable[str], media_type: str, urls: LinkRenderer) -> bytes:
    if media_type == JSON_V1:
        data = {
            "meta": {"api-version": API_VERSION},
            "projects": [{"name": name} for name in names],
        }
        return json.dumps(data, separators=(",", ":")).encode("utf-8")
    lines = [
        "<!DOCTYPE html>",
        f'<html><head><meta name="pypi:repository-version" content="{API_VERSION}">'
        "<title>Simple index</title></head><body>",
    ]
    lines.extend(
        f'<a href="{escape(urls.project_url(name))}">{escape(name)}</a><br/>' for name in names
    )
    lines.append("</body></html>\n")
    return "\n".join(lines).encode("utf-8")
