"""A version's description rendered as the package index renders it.

readme-renderer turns reST, Markdown (GFM or CommonMark) and plain text into
HTML and sanitises it (nh3): no script, no event handlers, no ``javascript:``
links. Rendering docutils' way can take a while, so it runs through the
offload (a thread) and each result is kept, by the description's digest, in a
bounded memory. Images become links to themselves: a page may load nothing
from another host (air-gapped sites have none, and the CSP would refuse it).
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict

import attrs
from markupsafe import Markup

from devpid.common.offload import Offload

#: Rendered descriptions kept per process, in characters.
MAX_KEPT_CHARS = 16 * 1024 * 1024
#: Longer descriptions are shown as plain text, not rendered.
MAX_RENDERED_CHARS = 512 * 1024

_IMAGE = re.compile(r"<img\b([^>]*)>", re.IGNORECASE)
_ATTRIBUTE = re.compile(r'\b(src|alt)="([^"]*)"', re.IGNORECASE)


def _images_as_links(html: str) -> str:
    """``<img>`` elements (already sanitised: attributes quoted and escaped) as links."""

    def replace(match: re.Match[str]) -> str:
        attributes = {name.lower(): value for name, value in _ATTRIBUTE.findall(match.group(1))}
        src = attributes.get("src", "")
        if src.startswith("data:image/"):
            return match.group(0)
        alt = attributes.get("alt") or "image"
        if not src:
            return f'<span class="image">[{alt}]</span>'
        return f'<a class="image" href="{src}" rel="nofollow noopener">[{alt}]</a>'

    return _IMAGE.sub(replace, html)


def render_description(text: str, content_type: str | None) -> str:
    """The sanitised HTML of a description (blocking: call it through the offload)."""
    # Imported at the first description, not at start-up: docutils, pygments and
    # markdown are a tenth of devpid's start-up time, and most requests never need them.
    from readme_renderer import markdown, rst, txt

    kind, _, params = (content_type or "").partition(";")
    kind = kind.strip().lower()
    html: str | None = None
    if len(text) <= MAX_RENDERED_CHARS:
        if kind == "text/markdown":
            variant = "GFM"
            for param in params.split(";"):
                name, _, value = param.partition("=")
                if name.strip().lower() == "variant" and value.strip() in ("GFM", "CommonMark"):
                    variant = value.strip()
            html = markdown.render(text, variant=variant)
        elif kind in ("", "text/x-rst"):
            html = rst.render(text)
    if html is None:
        html = txt.render(text)
    return _images_as_links(html or "")


@attrs.define
class Descriptions:
    """Rendered descriptions, made once (off the reactor) and kept in bounded memory."""

    offload: Offload
    _kept: OrderedDict[str, Markup] = attrs.field(factory=OrderedDict)
    _kept_chars: int = 0

    async def rendered(self, text: str, content_type: str | None) -> Markup:
        if not text.strip():
            return Markup("")
        key = hashlib.sha256(f"{content_type}\0{text}".encode("utf-8", "replace")).hexdigest()
        kept = self._kept.get(key)
        if kept is not None:
            self._kept.move_to_end(key)
            return kept
        html = await self.offload(lambda: render_description(text, content_type))
        # readme-renderer's output is sanitised; this is the one place it is trusted
        markup = Markup(html)
        self._kept[key] = markup
        self._kept_chars += len(markup)
        while self._kept_chars > MAX_KEPT_CHARS and len(self._kept) > 1:
            _, dropped = self._kept.popitem(last=False)
            self._kept_chars -= len(dropped)
        return markup
