"""The pages' templates: Jinja2, autoescaped, strict about missing values.

Jinja2 rather than ``twisted.web.template``: the pages are plain HTML files
with inheritance (``base.html``) that anyone who has edited a web page can
change, and autoescape is on for every template, so text reaches a page
escaped unless the code marks it ``Markup`` (only readme-renderer's sanitised
output and the server-drawn charts are). See docs/architecture.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from devpid import __version__
from devpid.web.format import human_bytes, human_time

if TYPE_CHECKING:
    from jinja2 import Environment


def _environment() -> Environment:
    # Jinja2 is imported with the first page, not at start-up (a few percent of it).
    from jinja2 import Environment, PackageLoader, StrictUndefined

    environment = Environment(
        loader=PackageLoader("devpid.web", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["bytes"] = human_bytes
    environment.filters["when"] = human_time
    environment.globals["devpid_version"] = __version__
    return environment


@attrs.define
class Templates:
    """Renders a page by name; the templates are compiled once per process, and the
    environment made at the first page."""

    _environment: Environment | None = None

    @property
    def environment(self) -> Environment:
        if self._environment is None:
            self._environment = _environment()
        return self._environment

    def render(self, name: str, context: Mapping[str, Any]) -> bytes:
        started = time.perf_counter()
        text = self.environment.get_template(name).render(**context, render_started=started)
        return text.encode("utf-8")
