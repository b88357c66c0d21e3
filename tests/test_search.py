"""The search engine: query syntax, the name index, stages' metadata, the catalog's slicing
and how it follows a mirror's project list."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from devpid.files.store import PROJECT_LIST, FileStore
from devpid.mirror.pages import CachedPage
from devpid.private.data import PrivateData
from devpid.private.database import PrivateDatabase
from devpid.private.init import initialize
from devpid.private.userconfig import NewUser
from devpid.search import QueryError, SearchCatalog, SearchResult, parse_query
from devpid.search.names import NameIndex
from devpid.search.query import Term
from devpid.search.stages import latest_version

HASH = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo"

NAMES = (
    "requests",
    "requests-oauthlib",
    "types-requests",
    "Foo_Bar",
    "foo.bar.baz",
    "django",
    "django-rest-framework",
    "py-django-tools",
    "flask",
    "Flask-Login",
    "numpy",
    "zope.interface",
)


# -- fakes -----------------------------------------------------------------------


@attrs.define
class FakeMirror:
    """A mirror's cached project list and a ``project_list()`` the test controls."""

    name: str
    files: FileStore
    page: CachedPage | None = None
    #: What ``project_list()`` returns: a Deferred the test fires, or a function.
    fetch: Callable[[], Deferred[CachedPage]] | None = None
    fetches: int = 0

    async def cached(self, project: str) -> CachedPage | None:
        assert project == PROJECT_LIST
        return self.page

    async def project_list(self) -> CachedPage:
        self.fetches += 1
        assert self.fetch is not None
        return await self.fetch()


def inline(function: Callable[[], Any]) -> Deferred[Any]:
    return succeed(function())


@attrs.define
class QueuedOffload:
    """An offload whose functions run only when the test says so (a thread that is slow)."""

    queue: list[tuple[Callable[[], Any], Deferred[Any]]] = attrs.field(factory=list)

    def __call__(self, function: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queue.append((function, d))
        return d

    def run_all(self) -> None:
        while self.queue:
            function, d = self.queue.pop(0)
            d.callback(function())


def page(names: tuple[str, ...], etag: str | None = None, at: float = 0.0) -> CachedPage:
    return CachedPage(names, etag, None, at)


def run(clock: Clock, coroutine: Coroutine[Any, Any, SearchResult]) -> SearchResult:
    d = Deferred.fromCoroutine(coroutine)
    for _ in range(100_000):
        if d.called:
            break
        clock.advance(0)
    results: list[Any] = []
    d.addBoth(results.append)
    if isinstance(results[0], Exception) or hasattr(results[0], "raiseException"):
        results[0].raiseException()
    assert isinstance(results[0], SearchResult)
    return results[0]


def mirror_catalog(
    tmp_path: Path, names: tuple[str, ...] = NAMES, **options: Any
) -> tuple[SearchCatalog, FakeMirror, Clock]:
    files = FileStore(tmp_path / "serverdir")
    files.prepare()
    mirror = FakeMirror("root/pypi", files, page(names, '"v1"'))
    clock = Clock()
    options.setdefault("offload", inline)
    catalog = SearchCatalog(None, {"root/pypi": mirror}, clock=clock, **options)
    return catalog, mirror, clock


def found(result: SearchResult) -> list[tuple[str, str]]:
    return [(h.project, h.kind) for h in result.hits]


# -- query syntax ----------------------------------------------------------------


def test_query_terms_fields_quotes_and_prefixes() -> None:
    query = parse_query("Foo  summary:'Web  Framework' keywords:\"http\" req* index:root/pypi")
    assert query.terms == (
        Term("foo"),
        Term("web framework", "summary"),
        Term("http", "keywords"),
        Term("req", None, True),
    )
    assert query.filters == (Term("root/pypi", "index"),)
    assert parse_query("'two words'*").terms == (Term("two words", None, True),)
    assert parse_query("Foo_Bar.baz").joined == "foo-bar-baz"
    assert parse_query("django rest").joined == "django-rest"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty query"),
        ("   ", "empty query"),
        ("'open", "unbalanced ' in query"),
        ('summary:"open', 'unbalanced " in query'),
        ("colour:red", "unknown field 'colour': use one of"),
        ("'a'b", "text right after a closing quote"),
        ("*", "a term without text"),
        ("name:", "name: without text"),
        ("x" * 201, "query longer than 200 characters"),
        (" ".join("t" * 17), "more than 16 terms"),
    ],
)
def test_malformed_queries_say_what_is_wrong_in_one_line(text: str, message: str) -> None:
    with pytest.raises(QueryError) as error:
        parse_query(text)
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_index_and_user_filters() -> None:
    query = parse_query("x index:pypi user:root")
    assert query.accepts_index("root/pypi")
    assert not query.accepts_index("alice/pypi")
    assert not query.accepts_index("root/dev")
    assert parse_query("x index:root/*").accepts_index("root/dev")
    assert not parse_query("x index:root/dev").accepts_index("root/pypi")


# -- the name index ----------------------------------------------------------------


def name_search(index: NameIndex, text: str, want: int = 50) -> list[tuple[str, str]]:
    steps = index.matches(parse_query(text), want)
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        return [(m.name, m.kind) for m in stop.value.hits]


def test_exact_then_prefix_then_substring_shorter_first() -> None:
    index = NameIndex.build(NAMES, chunk_names=3)  # many small chunks: blocks cross them
    assert name_search(index, "requests") == [
        ("requests", "exact"),
        ("requests-oauthlib", "prefix"),
        ("types-requests", "substring"),
    ]
    assert name_search(index, "django") == [
        ("django", "exact"),
        ("django-rest-framework", "prefix"),
        ("py-django-tools", "substring"),
    ]


def test_names_are_compared_normalised() -> None:
    index = NameIndex.build(NAMES, chunk_names=4)
    assert name_search(index, "Foo_Bar") == [("foo-bar", "exact"), ("foo-bar-baz", "prefix")]
    assert name_search(index, "FLASK.login") == [("flask-login", "exact")]
    assert "zope-interface" in index and "zope.interface" not in index
    assert index.size == len(NAMES)


def test_prefix_terms_and_several_terms() -> None:
    index = NameIndex.build(NAMES, chunk_names=5)
    assert name_search(index, "req*") == [
        ("requests", "prefix"),
        ("requests-oauthlib", "prefix"),
    ]
    assert name_search(index, "rest django") == [("django-rest-framework", "prefix")]
    assert name_search(index, "django rest framework") == [("django-rest-framework", "exact")]
    assert name_search(index, "nothing-like-it") == []


def test_fuzzy_finds_a_typo() -> None:
    index = NameIndex.build(NAMES, chunk_names=4)
    steps = index.fuzzy("reqeusts", 10, lambda name: False)
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        hits = stop.value.hits
    assert [m.name for m in hits] == ["requests"]
    assert hits[0].kind == "fuzzy" and hits[0].score < 40


def test_many_matches_in_a_chunk_take_the_split_path() -> None:
    names = (*(f"pkg{i}-e" for i in range(500)), "e")
    index = NameIndex.build(names, chunk_names=100)
    steps = index.matches(parse_query("-e"), 5)
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        matches = stop.value
    assert matches.total == 500
    assert [m.name for m in matches.hits] == ["pkg0-e", "pkg1-e", "pkg2-e", "pkg3-e", "pkg4-e"]


# -- the catalog over a mirror ---------------------------------------------------------


def test_catalog_ranks_and_falls_back_to_fuzzy(tmp_path: Path) -> None:
    catalog, _, clock = mirror_catalog(tmp_path)
    result = run(clock, catalog.search("requests"))
    assert found(result) == [
        ("requests", "exact"),
        ("requests-oauthlib", "prefix"),
        ("types-requests", "substring"),
    ]
    assert result.total == 3
    assert all(h.index == "root/pypi" for h in result.hits)
    typo = run(clock, catalog.search("reqeusts"))
    assert found(typo) == [("requests", "fuzzy")]
    paged = run(clock, catalog.search("requests", limit=1, offset=1))
    assert found(paged) == [("requests-oauthlib", "prefix")] and paged.total == 3
    # a field only private releases have leaves the mirror out
    assert run(clock, catalog.search("summary:requests")).hits == ()
    assert run(clock, catalog.search("requests index:other")).hits == ()


def test_a_long_search_gives_the_reactor_back_between_slices(tmp_path: Path) -> None:
    names = tuple(f"project-{i:06d}" for i in range(200_000))
    catalog, _, clock = mirror_catalog(tmp_path, names, slice_seconds=0.0)
    run(clock, catalog.search("warm-up"))  # the first search builds the index
    turns = []
    schedule = clock.callLater

    def counted(delay: float, *args: Any, **kwargs: Any) -> Any:
        turns.append(delay)
        return schedule(delay, *args, **kwargs)

    clock.callLater = counted  # type: ignore[method-assign]
    d = Deferred.fromCoroutine(catalog.search("project-1999"))
    assert not d.called  # the search is waiting for the reactor's next turn
    clock.advance(0)
    # 20 chunks of 10,000 names, the reactor given back after each
    assert len(turns) >= 20 and set(turns) == {0}
    results: list[SearchResult] = []
    d.addCallback(results.append)
    assert results[0].hits[0].project == "project-199900"
    assert results[0].total == 100


def test_a_slice_lasts_its_budget_on_the_injected_timer(tmp_path: Path) -> None:
    names = tuple(f"n{i}" for i in range(50_000))
    now = [0.0]

    def timer() -> float:
        now[0] += 0.001  # each reading a millisecond later
        return now[0]

    catalog, _, clock = mirror_catalog(tmp_path, names, slice_seconds=1.0, timer=timer)
    d = Deferred.fromCoroutine(catalog.search("n4"))
    assert d.called  # a second's budget is never reached: no turn given back
    catalog.slice_seconds = 0.0015
    d = Deferred.fromCoroutine(catalog.search("n4"))
    assert not d.called
    clock.advance(0)


def test_a_new_cached_list_is_indexed_in_the_background(tmp_path: Path) -> None:
    offload = QueuedOffload()
    catalog, mirror, clock = mirror_catalog(tmp_path, offload=offload, recheck_seconds=5)
    first = Deferred.fromCoroutine(catalog.search("flask"))
    assert not first.called  # the first search waits for the first index
    offload.run_all()
    assert first.called
    mirror.page = page((*NAMES, "flask-cors"), '"v2"')
    clock.advance(1)
    assert [h.project for h in run(clock, catalog.search("flask")).hits] == [
        "flask",
        "flask-login",
    ]  # not yet checked again
    clock.advance(5)
    meanwhile = run(clock, catalog.search("flask"))
    assert "flask-cors" not in [h.project for h in meanwhile.hits]  # old index served meanwhile
    assert len(offload.queue) == 1
    offload.run_all()
    after = run(clock, catalog.search("flask"))
    assert [h.project for h in after.hits] == ["flask", "flask-cors", "flask-login"]
    status = catalog.status()["root/pypi"]
    assert status["names"] == len(NAMES) + 1 and status["source"] == "project list"
    # the same list again (same ETag) is not indexed again
    mirror.page = page((*NAMES, "flask-cors"), '"v2"')
    clock.advance(6)
    run(clock, catalog.search("flask"))
    assert offload.queue == []


def test_without_a_cached_list_cached_pages_are_searched_and_one_fetch_starts(
    tmp_path: Path,
) -> None:
    catalog, mirror, clock = mirror_catalog(tmp_path, recheck_seconds=5)
    mirror.page = None
    for project in ("alpha", "beta"):
        mirror.files.write_page("root/pypi", project, {"links": []})
    fetched: Deferred[CachedPage] = Deferred()
    mirror.fetch = lambda: fetched
    assert found(run(clock, catalog.search("alpha"))) == [("alpha", "exact")]
    clock.advance(6)
    assert found(run(clock, catalog.search("alp"))) == [("alpha", "prefix")]
    assert mirror.fetches == 1
    fetched.callback(page(("alpha", "alphabet", "beta", "gamma")))
    assert found(run(clock, catalog.search("alp"))) == [("alpha", "prefix"), ("alphabet", "prefix")]
    assert catalog.status()["root/pypi"]["source"] == "project list"


def test_a_failing_upstream_never_fails_a_search(tmp_path: Path) -> None:
    catalog, mirror, clock = mirror_catalog(tmp_path, recheck_seconds=5)
    mirror.page = None
    mirror.files.write_page("root/pypi", "alpha", {"links": []})
    mirror.fetch = lambda: fail(RuntimeError("upstream unavailable"))
    assert found(run(clock, catalog.search("alpha"))) == [("alpha", "exact")]
    clock.advance(6)
    assert found(run(clock, catalog.search("alpha"))) == [("alpha", "exact")]
    assert mirror.fetches == 1  # not asked again before fetch_retry_seconds


# -- stages ------------------------------------------------------------------------------


@pytest.fixture
def data(tmp_path: Path) -> PrivateData:
    database = PrivateDatabase(tmp_path / "private.sqlite")
    database.open()
    data = PrivateData(database)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    data.create_user("alice", NewUser("pw", None, {}), HASH, None)
    data.create_index("alice", "dev", {"bases": ""}, "alice")
    data.set_version(
        "alice/dev",
        "web-toolkit",
        "1.0",
        {"name": "Web_Toolkit", "summary": "Old summary", "keywords": "", "classifiers": []},
        "alice",
    )
    data.set_version(
        "alice/dev",
        "web-toolkit",
        "2.0",
        {
            "name": "Web_Toolkit",
            "summary": "An HTTP server toolkit",
            "keywords": "async, sockets",
            "classifiers": ["Framework :: Twisted", "Topic :: Internet :: WWW/HTTP"],
        },
        "alice",
    )
    data.set_version("alice/dev", "web-toolkit", "not a version", {"summary": "x"}, "alice")
    data.set_version("alice/dev", "requests-extra", "0.1", {"keywords": ["http"]}, "alice")
    return data


def stage_catalog(data: PrivateData, tmp_path: Path) -> tuple[SearchCatalog, FakeMirror, Clock]:
    files = FileStore(tmp_path / "serverdir")
    files.prepare()
    mirror = FakeMirror("root/pypi", files, page(NAMES, '"v1"'))
    clock = Clock()
    return SearchCatalog(data, {"root/pypi": mirror}, inline, clock), mirror, clock


def test_latest_version_ignores_invalid_ones() -> None:
    assert latest_version({"1.0": {}, "10.0": {}, "2.0": {}, "not a version": {}}) == "10.0"
    assert latest_version({"junk": {}}) is None


def test_stage_metadata_is_searched_and_ranks_after_names(
    data: PrivateData, tmp_path: Path
) -> None:
    catalog, _, clock = stage_catalog(data, tmp_path)
    result = run(clock, catalog.search("http"))
    assert [(h.index, h.project, h.kind) for h in result.hits] == [
        ("alice/dev", "requests-extra", "metadata"),
        ("alice/dev", "web-toolkit", "metadata"),
    ]
    toolkit = result.hits[1]
    assert toolkit.summary == "An HTTP server toolkit" and toolkit.version == "2.0"
    names_first = run(clock, catalog.search("requests"))
    assert found(names_first)[:3] == [
        ("requests", "exact"),
        ("requests-extra", "prefix"),  # the stage's hit ties with the mirror's: stage first
        ("requests-oauthlib", "prefix"),
    ]


def test_stage_field_filters(data: PrivateData, tmp_path: Path) -> None:
    catalog, _, clock = stage_catalog(data, tmp_path)
    assert found(run(clock, catalog.search("classifiers:twisted"))) == [("web-toolkit", "metadata")]
    assert found(run(clock, catalog.search("keywords:sock*"))) == [("web-toolkit", "metadata")]
    assert found(run(clock, catalog.search("summary:'server toolkit'"))) == [
        ("web-toolkit", "metadata")
    ]
    assert run(clock, catalog.search("summary:old")).hits == ()  # only the latest version counts
    assert found(run(clock, catalog.search("name:http"))) == []
    assert found(run(clock, catalog.search("web index:dev"))) == [("web-toolkit", "prefix")]
    assert found(run(clock, catalog.search("user:alice"))) == [
        ("requests-extra", "substring"),
        ("web-toolkit", "substring"),
    ]
    assert found(run(clock, catalog.search("web_toolkit"))) == [("web-toolkit", "exact")]


def test_a_stage_is_read_again_when_its_serial_moves(data: PrivateData, tmp_path: Path) -> None:
    catalog, _, clock = stage_catalog(data, tmp_path)
    assert run(clock, catalog.search("newthing")).hits == ()
    data.set_version("alice/dev", "newthing", "1.0", {"summary": "fresh"}, "alice")
    assert found(run(clock, catalog.search("newthing"))) == [("newthing", "exact")]
    assert catalog.status()["alice/dev"]["names"] == 3


# -- fuzzing ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchCatalog, Clock]:
    tmp_path = tmp_path_factory.mktemp("fuzz")
    database = PrivateDatabase(tmp_path / "private.sqlite")
    database.open()
    data = PrivateData(database)
    initialize(data, HASH, "http://localhost:1/simple/", "x")
    data.create_user("alice", NewUser("pw", None, {}), HASH, None)
    data.create_index("alice", "dev", {"bases": ""}, "alice")
    data.set_version("alice/dev", "pkg", "1", {"summary": "s", "keywords": ["k"]}, "alice")
    catalog, _, clock = stage_catalog(data, tmp_path)
    return catalog, clock


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.text(max_size=220) | st.from_regex(r"[a-z:'\"* _.-]{0,40}", fullmatch=True))
def test_any_query_parses_or_is_a_query_error_and_search_never_raises_otherwise(
    fuzz_catalog: tuple[SearchCatalog, Clock], text: str
) -> None:
    catalog, clock = fuzz_catalog
    try:
        parse_query(text)
    except QueryError as e:
        assert str(e) and "\n" not in str(e)
        with pytest.raises(QueryError):
            run(clock, catalog.search(text))
        return
    result = run(clock, catalog.search(text, limit=5))
    assert len(result.hits) <= 5 and result.total >= len(result.hits)
