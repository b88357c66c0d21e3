"""Search over every index: project names (a mirror's whole upstream list too) and the
summary, keywords and classifiers of private releases.

``query`` parses what users type (its docstring is the syntax), ``names`` is the
compact index of a mirror's names, ``stages`` the private projects' records and
``catalog`` the search over all of them, in slices that keep the reactor free.
"""

from __future__ import annotations

from devpid.search.catalog import Hit, SearchCatalog, SearchResult
from devpid.search.query import QueryError, parse_query

__all__ = ["Hit", "QueryError", "SearchCatalog", "SearchResult", "parse_query"]
