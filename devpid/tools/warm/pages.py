"""A project's PEP 691 JSON page on devpid: where ``--sdists`` finds each release's sdist.

A page is read whole (it is JSON), but only up to ``MAX_PAGE_BYTES``.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from typing import Any

import attrs
from packaging.utils import (
    InvalidSdistFilename,
    NormalizedName,
    canonicalize_name,
    parse_sdist_filename,
)
from packaging.version import InvalidVersion, Version

from devpid.tools.warm.http import USER_AGENT, Origin, path_of

JSON_PAGE = "application/vnd.pypi.simple.v1+json"
MAX_PAGE_BYTES = 256 << 20


class PageError(RuntimeError):
    """A page that could not be had, with the reason."""


@attrs.frozen
class PageFile:
    """One file as a page lists it, its URL made absolute."""

    filename: str
    url: str
    sha256: str | None
    size: int | None
    yanked: bool


def page_url(index_url: str, project: str) -> str:
    return urllib.parse.urljoin(index_url, f"{canonicalize_name(project)}/")


def files_of_page(document: Any, url: str) -> list[PageFile]:
    """The files of a PEP 691 project page (``url``: where it was read, for relative links)."""
    if not isinstance(document, dict) or not isinstance(document.get("files"), list):
        raise PageError(f"{url}: not a PEP 691 project page")
    files = []
    for entry in document["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            continue
        hashes = entry.get("hashes")
        hashes = hashes if isinstance(hashes, dict) else {}
        size = entry.get("size")
        files.append(
            PageFile(
                filename=entry["filename"],
                url=urllib.parse.urljoin(url, str(entry.get("url", ""))).split("#", 1)[0],
                sha256=hashes.get("sha256") if isinstance(hashes.get("sha256"), str) else None,
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
                yanked=entry.get("yanked") not in (None, False),
            )
        )
    return files


def sdists_of(files: list[PageFile], project: str, version: str) -> list[PageFile]:
    """The sdists of ``project`` ``version`` on a page, yanked ones left out."""
    wanted: tuple[NormalizedName, Version | str] = (canonicalize_name(project), _version(version))
    found = []
    for file in files:
        try:
            name, file_version = parse_sdist_filename(file.filename)
        except (InvalidSdistFilename, InvalidVersion):
            continue
        if (name, file_version) == wanted and not file.yanked:
            found.append(file)
    return found


def _version(text: str) -> Version | str:
    try:
        return Version(text)
    except InvalidVersion:
        return text


def read_page(origin: Origin, url: str, timeout: float) -> list[PageFile]:
    """The files on the JSON page at ``url``; PageError if there is none."""
    connection = origin.connect(timeout)
    try:
        headers = {"Accept": JSON_PAGE, "User-Agent": USER_AGENT}
        connection.request("GET", path_of(url), headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            raise PageError(f"{url}: HTTP {response.status} {response.reason}")
        body = response.read(MAX_PAGE_BYTES + 1)
        if len(body) > MAX_PAGE_BYTES:
            raise PageError(f"{url}: page larger than {MAX_PAGE_BYTES} bytes")
        try:
            document = json.loads(body)
        except ValueError as e:
            raise PageError(f"{url}: not JSON ({e})") from None
    except (OSError, http.client.HTTPException) as e:
        raise PageError(f"{url}: {e.__class__.__name__}: {e}") from None
    finally:
        connection.close()
    return files_of_page(document, url)
