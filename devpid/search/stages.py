"""Private stages' projects as search sees them: name, latest version and its metadata.

A stage holds hundreds or thousands of projects, not hundreds of thousands:
each is one small record, matched term by term in Python. The records of a
stage are read again from the private data when its ``index_serial`` moves.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs
from packaging.version import InvalidVersion, Version
from rapidfuzz import fuzz

from devpid.search.names import FUZZY_CUTOFF, FUZZY_MIN_CHARS
from devpid.search.query import Query, Term

_WHITESPACE = re.compile(r"\s+")


@attrs.frozen
class StageProject:
    """One project of a stage: its normalised name, latest version and searchable metadata."""

    name: str
    version: str | None
    summary: str | None
    #: Lower-case text of summary, keywords and classifiers, by field name.
    fields: Mapping[str, str]


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return "\n".join(_WHITESPACE.sub(" ", str(v)) for v in value).lower()
    return _WHITESPACE.sub(" ", str(value)).lower()


def latest_version(versions: Mapping[str, Any]) -> str | None:
    """The highest valid version (PEP 440) among ``versions``; invalid ones are ignored."""
    best: tuple[Version, str] | None = None
    for version in versions:
        try:
            parsed = Version(version)
        except InvalidVersion:
            continue
        if best is None or parsed > best[0]:
            best = (parsed, version)
    return None if best is None else best[1]


def stage_project(project: str, versions: Mapping[str, Mapping[str, Any]]) -> StageProject:
    """The record of ``project`` from its versions' metadata (the latest version's)."""
    version = latest_version(versions)
    chosen = version if version is not None else max(versions, default=None)
    metadata = versions.get(chosen, {}) if chosen is not None else {}
    if not isinstance(metadata, Mapping):
        metadata = {}
    summary = metadata.get("summary")
    keywords = metadata.get("keywords")
    if isinstance(keywords, str):
        keywords = keywords.replace(",", " ")
    fields = {
        "summary": _text(summary),
        "keywords": _text(keywords),
        "classifiers": _text(metadata.get("classifiers")),
    }
    return StageProject(project, version, str(summary) if summary else None, fields)


def _in_metadata(term: Term, text: str) -> bool:
    if not text:
        return False
    if not term.prefix:
        return term.text in text
    return re.search(r"(?<![a-z0-9])" + re.escape(term.text), text) is not None


def _driver(query: Query) -> str:
    prefixes = [t.name_form for t in query.name_terms if t.prefix]
    plain = [t.name_form for t in query.name_terms if not t.prefix]
    return max(prefixes or plain or [""], key=len)


def match_project(query: Query, project: StageProject) -> tuple[str, float] | None:
    """How ``project`` matches ``query`` (kind and score), or None.

    The kinds and scores are those of ``NameIndex.matches``; a bare term found
    only in the metadata makes the match ``metadata`` (ranked below substring).
    """
    name = project.name
    if not query.terms:
        return "substring", 60.0
    by_metadata = False
    for term in query.terms:
        if term.on_names:
            form = term.name_form
            if name.startswith(form) if term.prefix else form in name:
                continue
        if not any(_in_metadata(term, project.fields[f]) for f in term.metadata_fields()):
            return None
        if term.on_names:
            by_metadata = True
    name_terms = query.name_terms
    if by_metadata or not name_terms:
        named = sum(1 for t in name_terms if t.name_form in name)
        return "metadata", 40.0 + 19.0 * named / max(1, len(query.terms))
    if name == query.joined:
        return "exact", 100.0
    covered = sum(len(t.name_form) for t in name_terms)
    base = 80.0 if name.startswith(_driver(query)) else 60.0
    return ("prefix" if base == 80.0 else "substring"), base + 19.0 * min(1.0, covered / len(name))


def fuzzy_eligible(query: Query) -> bool:
    """Whether a query may have fuzzy matches: names only, no prefix, long enough."""
    return (
        bool(query.terms)
        and query.names_only
        and not any(t.prefix for t in query.terms)
        and len(query.joined) >= FUZZY_MIN_CHARS
    )


def fuzzy_score(query: Query, project: StageProject) -> float | None:
    """The fuzzy score of a project that did not otherwise match, or None."""
    ratio = fuzz.ratio(query.joined, project.name, score_cutoff=FUZZY_CUTOFF)
    return round(39.0 * ratio / 100.0, 3) if ratio else None


__all__ = ["StageProject", "fuzzy_eligible", "fuzzy_score", "latest_version", "match_project"]
