"""Plain blocking HTTP to devpid: connections, the URL split, the cache header.

``http.client`` rather than urllib: no redirects followed behind our back, no
proxy from the environment (devpid is asked directly), and bodies read in chunks.
"""

from __future__ import annotations

import http.client
import urllib.parse

import attrs

#: devpid's answer for a mirror file: ``hit`` (from its cache) or ``miss`` (through
#: the upstream). Absent when something else (nginx, a private file) served the file.
CACHE_HEADER = "X-Devpid-Cache"
CHUNK_SIZE = 1 << 20
USER_AGENT = "devpid-warm"


class URLError(ValueError):
    """A URL warm cannot speak to (not http or https, no host)."""


@attrs.frozen
class Origin:
    """``scheme://host:port`` of a devpid."""

    scheme: str
    netloc: str

    @classmethod
    def of(cls, url: str) -> Origin:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise URLError(f"not an http or https URL: {url!r}")
        return cls(parts.scheme, parts.netloc)

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.netloc, timeout=timeout)
        return http.client.HTTPConnection(self.netloc, timeout=timeout)


def path_of(url: str) -> str:
    """The path and query of ``url``, as sent in a request line (no fragment)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))


def file_key(path: str) -> str:
    """One spelling of a file's path for both pip's URLs (``%2Bf``) and devpid's (``+f``)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(path).path)


def is_distribution_path(path: str) -> bool:
    """A devpid file URL of a distribution (not its ``.metadata``, not a page)."""
    key = file_key(path)
    return "/+f/" in key and not key.endswith(".metadata")
