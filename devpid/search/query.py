"""The search query language: what a user types in the search box, parsed into terms.

Syntax (case-insensitive):

- Terms are separated by whitespace; a project matches when every term matches.
- A bare term matches a project's name (compared normalised, PEP 503: lower case,
  runs of ``-``, ``_``, ``.`` read as one ``-``) or, on private stages, its summary,
  keywords or classifiers.
- ``'two words'`` or ``"two words"`` is one term containing the space (in a name,
  the space reads as ``-``).
- ``field:term`` limits a term to one field: ``name``, ``summary``, ``keywords``,
  ``classifiers``; ``index:`` (``user/index`` or just ``index``) and ``user:`` filter
  the indexes searched. ``field:'quoted term'`` works too.
- ``prefix*`` matches names (and metadata words) starting with ``prefix``.
- Errors, each one ``QueryError`` with a one-line message: an empty query, an
  unbalanced quote, an unknown field, text glued to a closing quote, a term of
  nothing but ``*``, more than 200 characters or more than 16 terms.

Parsing is here, apart from matching, so that the web route can refuse a bad
query with a 400 before any index is touched.
"""

from __future__ import annotations

import re

import attrs

#: Longer queries are refused: no project name is that long, and matching cost grows with it.
MAX_QUERY_CHARS = 200
#: More terms than this are refused (each one is checked against every candidate).
MAX_TERMS = 16
#: Fields a term can be limited to.
CONTENT_FIELDS = ("name", "summary", "keywords", "classifiers")
FILTER_FIELDS = ("index", "user")
FIELDS = CONTENT_FIELDS + FILTER_FIELDS

_SEPARATORS = re.compile(r"[-_.\s]+")
_WHITESPACE = re.compile(r"\s+")
_FIELD = re.compile(r"([A-Za-z]+):")


class QueryError(ValueError):
    """A query that cannot be parsed; the message is one line, fit for a 400 answer."""


def normalise_name(name: str) -> str:
    """PEP 503's normalised form (whitespace counts as a separator too, for phrases)."""
    return _SEPARATORS.sub("-", name).lower()


@attrs.frozen
class Term:
    """One term: its text (lower case, whitespace collapsed), field and whether it is a prefix."""

    text: str
    field: str | None = None
    prefix: bool = False

    @property
    def name_form(self) -> str:
        """The term as it is compared with normalised project names."""
        return normalise_name(self.text)

    @property
    def on_names(self) -> bool:
        return self.field in (None, "name")

    @property
    def on_metadata(self) -> bool:
        return self.field in (None, "summary", "keywords", "classifiers")

    def metadata_fields(self) -> tuple[str, ...]:
        if self.field is None:
            return ("summary", "keywords", "classifiers")
        return (self.field,) if self.field in CONTENT_FIELDS[1:] else ()


@attrs.frozen
class Query:
    """A parsed query: the terms matched against projects and the filters on indexes."""

    text: str
    terms: tuple[Term, ...]
    filters: tuple[Term, ...]

    @property
    def name_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.on_names)

    @property
    def names_only(self) -> bool:
        """Whether a project with nothing but a name (a mirror's) can match."""
        return all(t.on_names for t in self.terms)

    @property
    def joined(self) -> str:
        """The name terms as one normalised name: ``django rest`` is ``django-rest``."""
        return "-".join(t.name_form for t in self.terms if t.on_names)

    def accepts_index(self, index: str) -> bool:
        """Whether every ``index:`` and ``user:`` filter lets ``index`` (``user/name``) through."""
        lowered = index.lower()
        user, _, name = lowered.partition("/")
        for term in self.filters:
            candidates = (lowered, name) if term.field == "index" else (user,)
            if term.prefix:
                ok = any(c.startswith(term.text) for c in candidates)
            else:
                ok = term.text in candidates
            if not ok:
                return False
        return True


def parse_query(text: str) -> Query:
    """``text`` as a ``Query``; raises ``QueryError`` saying what is wrong with it."""
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query longer than {MAX_QUERY_CHARS} characters")
    terms: list[Term] = []
    position = 0
    length = len(text)
    while True:
        while position < length and text[position].isspace():
            position += 1
        if position >= length:
            break
        term, position = _term_at(text, position)
        terms.append(term)
        if len(terms) > MAX_TERMS:
            raise QueryError(f"more than {MAX_TERMS} terms")
    if not terms:
        raise QueryError("empty query")
    content = tuple(t for t in terms if t.field not in FILTER_FIELDS)
    filters = tuple(t for t in terms if t.field in FILTER_FIELDS)
    return Query(text, content, filters)


def _term_at(text: str, position: int) -> tuple[Term, int]:
    """The term starting at ``position`` and where the text after it starts."""
    field: str | None = None
    match = _FIELD.match(text, position)
    if match is not None:
        field = match.group(1).lower()
        if field not in FIELDS:
            raise QueryError(f"unknown field {field!r}: use one of {', '.join(FIELDS)}")
        position = match.end()
    prefix = False
    if position < len(text) and text[position] in "'\"":
        quote = text[position]
        end = text.find(quote, position + 1)
        if end == -1:
            raise QueryError(f"unbalanced {quote} in query")
        value = text[position + 1 : end]
        position = end + 1
        if position < len(text) and text[position] == "*":
            prefix = True
            position += 1
        if position < len(text) and not text[position].isspace():
            raise QueryError("text right after a closing quote: put a space between terms")
    else:
        end = position
        while end < len(text) and not text[end].isspace():
            end += 1
        value = text[position:end]
        position = end
        if value.endswith("*"):
            prefix = True
            value = value.rstrip("*")
    value = _WHITESPACE.sub(" ", value).strip().lower()
    if not value:
        what = f"{field}:" if field else "a term"
        raise QueryError(f"{what} without text")
    return Term(value, field, prefix), position


__all__ = [
    "FIELDS",
    "MAX_QUERY_CHARS",
    "Query",
    "QueryError",
    "Term",
    "normalise_name",
    "parse_query",
]
