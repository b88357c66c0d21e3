"""``/+search``: the search catalog's answer as the page and the JSON show it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs

from devpid.http.errors import HTTPError

#: Hits on one page of results.
PAGE_SIZE = 20


class Catalog(Protocol):
    async def search(
        self,
        query: str,
        *,
        limit: int = 50,
        offset: int = 0,
        readable: Callable[[str], bool] | None = None,
    ) -> Any: ...


@attrs.define
class SearchAnswers:
    catalog: Catalog
    #: The exception a malformed query raises (the catalog's ``QueryError``).
    query_error: type[Exception]

    async def answer(
        self, query: str, page: int, readable: Callable[[str], bool] | None = None
    ) -> dict[str, Any]:
        """One page of hits, of the indexes ``readable`` lets through (all without it);
        a malformed query is a 400 with the parser's reason."""
        offset = (page - 1) * PAGE_SIZE
        try:
            result = await self.catalog.search(
                query, limit=PAGE_SIZE, offset=offset, readable=readable
            )
        except self.query_error as e:
            raise HTTPError(400, f"bad query: {e}") from None
        hits = [attrs.asdict(hit) for hit in result.hits]
        return {
            "query": result.query,
            "hits": hits,
            "total": result.total,
            "took": round(result.took, 6),
            "page": page,
            "first": offset + 1,
            "more": offset + len(hits) < result.total,
        }
