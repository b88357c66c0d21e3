"""``WebRoutes``: devpi-web's pages, on a Klein app of their own.

``devpid.web.dispatch`` sends browsers here and everybody else to the API, so
the pages share the API's URLs. Every page is a template of
``devpid/web/templates`` filled with what ``devpid.web.browse`` gathers, sent
with the headers of ``devpid.web.security``. The web's only write action is the
mirror refresh form, checked against cross-site requests.
"""

from __future__ import annotations

import json
import mimetypes
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from importlib.resources import files as package_files
from typing import Any, Protocol

import attrs
from klein import Klein
from markupsafe import Markup
from packaging.utils import canonicalize_name
from twisted.python.failure import Failure
from twisted.web.server import Request
from werkzeug.routing import BaseConverter

from devpid import __version__
from devpid.files.releases import ReleaseFiles
from devpid.files.store import FileStore
from devpid.http.devpi import root_url, wants_json
from devpid.http.errors import ErrorAnswers, HTTPError, plain_error
from devpid.http.request import has_query_key
from devpid.mirror.index import IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.ops.requests import ROUTE_ATTRIBUTE
from devpid.private.constraints import CONSTRAINED, Constraints
from devpid.private.data import PrivateData
from devpid.private.resolve import Resolution, resolve_project
from devpid.simple.model import ProjectPage, is_valid_project_name
from devpid.web import browse
from devpid.web.browse import version_of
from devpid.web.negotiate import wants_html
from devpid.web.readme import Descriptions
from devpid.web.security import CSRF_FIELD, CrossSiteGuard, set_page_headers
from devpid.web.templating import Templates

#: The most projects an index page lists (a mirror's cached ones can be many).
MAX_LISTED_PROJECTS = 2000
STATIC = package_files("devpid.web") / "static"


class NameConverter(BaseConverter):
    """A path segment that is a name: not empty, not one of devpi's ``+`` segments."""

    regex = r"[^/+][^/]*"


class StatusPage(Protocol):
    """What the status page shows, gathered elsewhere (``devpid.web.statuspage``)."""

    def context(self) -> dict[str, Any]: ...


class Search(Protocol):
    async def answer(
        self, query: str, page: int, readable: Callable[[str], bool] | None = None
    ) -> dict[str, Any]: ...


def _web(route: str, handler: Callable[..., Any]) -> Callable[..., Any]:
    """``handler`` labelled for the access log (``web``) under a unique endpoint name."""

    def handle(request: Request, *args: Any, **kwargs: Any) -> Any:
        setattr(request, ROUTE_ATTRIBUTE, route)
        return handler(request, *args, **kwargs)

    handle.__name__ = handle.__qualname__ = f"WebRoutes.{handler.__name__}"
    return handle


@attrs.define
class WebRoutes:
    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    files: FileStore
    release_files: ReleaseFiles
    descriptions: Descriptions
    guard: CrossSiteGuard
    #: Revalidates one project's page now (the API's refresh, shared).
    refresh_project: Callable[[str, str, str], Awaitable[object]]
    status_page: StatusPage | None = None
    search: Search | None = None
    outside_url: str | None = None
    #: Which indexes the request's sender may read (``Access.readable_indexes``);
    #: search leaves the others out. None: every index.
    readable: Callable[[Request], Awaitable[Callable[[str], bool]]] | None = None
    templates: Templates = attrs.field(factory=Templates)
    app: Klein = attrs.field(init=False, factory=Klein)
    #: An index's latest uploads, by its serial.
    _latest: OrderedDict[str, tuple[int, list[browse.Upload]]] = attrs.field(factory=OrderedDict)

    def __attrs_post_init__(self) -> None:
        app = self.app
        app.url_map.converters["name"] = NameConverter
        routes: list[tuple[str, str, Callable[..., Any], str]] = [
            ("/", "GET", self.root, "web"),
            ("/+static/<path:path>", "GET", self.static_file, "web"),
            ("/+status", "GET", self.status, "status"),
            ("/+search", "GET", self.search_page, "web"),
            ("/+searchhelp", "GET", self.search_help, "web"),
            ("/<name:user>", "GET", self.user_page, "web"),
            ("/<name:user>/<name:index>", "GET", self.index_page, "web"),
            ("/<name:user>/<name:index>/<name:project>", "GET", self.project_page, "web"),
            ("/<name:user>/<name:index>/<name:project>/refresh", "POST", self.refresh_form, "web"),
            (
                "/<name:user>/<name:index>/<name:project>/<name:version>",
                "GET",
                self.version_page,
                "web",
            ),
        ]
        for path, method, handler, label in routes:
            app.route(path, methods=[method])(_web(label, handler))
        app.handle_errors(HTTPError)(self.error_page)  # type: ignore[arg-type]
        ErrorAnswers().register(app)

    # -- rendering -----------------------------------------------------------------

    def _page(self, request: Request, template: str, **context: Any) -> bytes:
        set_page_headers(request)
        context.setdefault("title", "devpid")
        context.setdefault("query", "")
        context.setdefault("root", root_url(request, self.outside_url))
        context.setdefault("static", f"/+static/{__version__}")
        return self.templates.render(template, context)

    def error_page(self, request: Request, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, HTTPError)
        for name, value in error.headers.items():
            request.setHeader(name, value)
        if wants_json(request) or not wants_html(request):
            return plain_error(request, error.code, error.reason)
        request.setResponseCode(error.code)
        if 300 <= error.code < 400:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return error.reason.encode("utf-8", "replace") + b"\n"
        return self._page(
            request, "error.html", title=f"{error.code}", code=error.code, reason=error.reason
        )

    def static_file(self, request: Request, path: str) -> bytes:
        """The pages' CSS and script, cached for good under a versioned prefix."""
        version, _, name = path.partition("/")
        if not name or "/" in name or name.startswith(".") or name.startswith("_"):
            raise HTTPError(404, "not found")
        resource = STATIC / name
        if not resource.is_file():
            raise HTTPError(404, "not found")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        request.setHeader(b"content-type", f"{kind}; charset=utf-8".encode())
        request.setHeader(b"x-content-type-options", b"nosniff")
        lifetime = b"max-age=31536000, immutable" if version == __version__ else b"no-cache"
        request.setHeader(b"cache-control", lifetime)
        return resource.read_bytes()

    # -- pages -----------------------------------------------------------------------

    def root(self, request: Request) -> bytes:
        rows = browse.index_rows(self.data.indexes())
        users = sorted(self.data.users())
        return self._page(request, "root.html", indexes=rows, users=users)

    def user_page(self, request: Request, user: str) -> bytes:
        if self.data.user(user) is None:
            raise HTTPError(404, f"no user '{user}'")
        rows = browse.index_rows(self.data.indexes_of(user))
        record = self.data.user(user) or {}
        return self._page(
            request, "user.html", title=user, user=user, indexes=rows,
            fullname=str(record.get("fullname") or ""), email=str(record.get("email") or ""),
        )  # fmt: skip

    def _index_config(self, user: str, index: str) -> Mapping[str, Any]:
        config = self.data.index(f"{user}/{index}")
        if config is None:
            raise HTTPError(404, f"no index {user}/{index}")
        return config

    def index_page(self, request: Request, user: str, index: str) -> bytes:
        name = f"{user}/{index}"
        config = self._index_config(user, index)
        is_mirror = name in self.mirrors
        if is_mirror:
            projects = self.files.cached_projects(name)
            latest: list[browse.Upload] = []
        else:
            projects = self.data.projects(name)
            latest = self._latest_uploads(name)
        shown = sorted(projects)[:MAX_LISTED_PROJECTS]
        root = root_url(request, self.outside_url)
        return self._page(
            request,
            "index.html",
            title=name,
            name=name,
            user=user,
            config=_config_items({k: v for k, v in config.items() if k != "constraints"}),
            constraints=list(config.get("constraints") or ()),
            is_constrained=config.get("type") == CONSTRAINED,
            is_mirror=is_mirror,
            projects=shown,
            project_count=len(projects),
            latest=latest,
            simple_url=f"{root}/{name}/+simple/",
            upload_url=f"{root}/{name}/",
        )

    def _latest_uploads(self, name: str) -> list[browse.Upload]:
        serial = self.data.index_serial(name)
        kept = self._latest.get(name)
        if kept is not None and kept[0] == serial:
            return kept[1]
        versions = {
            project: self.data.versions(name, project) for project in self.data.projects(name)
        }
        latest = browse.latest_uploads(versions)
        self._latest[name] = (serial, latest)
        while len(self._latest) > 64:
            self._latest.popitem(last=False)
        return latest

    def _resolution(self, name: str, project: str) -> Resolution:
        return resolve_project(name, project, self.data.stages(), self.data.has_private_project)

    def _order(self, name: str, project: str) -> tuple[str, ...]:
        return self._resolution(name, project).stages

    async def _mirror_page(self, mirror: str, project: str) -> ProjectPage | None:
        try:
            entry = await self.mirrors[mirror].project_page(project)
        except ProjectNotFound:
            return None
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        return entry.content if isinstance(entry.content, ProjectPage) else None

    def _project_name(
        self, request: Request, user: str, index: str, project: str, rest: str
    ) -> str:
        self._index_config(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        if normalized != project:
            location = f"/{user}/{index}/{normalized}{rest}"
            raise HTTPError(302, f"moved to {location}", {b"location": location.encode()})
        return normalized

    async def _versions(
        self, name: str, project: str
    ) -> tuple[list[browse.VersionRow], dict[str, ProjectPage]]:
        """Every version along the resolution order (the nearest index's wins)."""
        rows: dict[str, browse.VersionRow] = {}
        pages: dict[str, ProjectPage] = {}
        for stage in self._order(name, project):
            if stage in self.mirrors:
                page = await self._mirror_page(stage, project)
                if page is None:
                    continue
                pages[stage] = page
                counts: dict[str, list[bool]] = {}
                for link in page.links:
                    version = version_of(link.filename)
                    if version is not None:
                        counts.setdefault(version, []).append(bool(link.yanked))
                for version, yanked in counts.items():
                    rows.setdefault(
                        version, browse.VersionRow(version, stage, all(yanked), len(yanked))
                    )
            else:
                for version, value in self.data.versions(stage, project).items():
                    files = sum(
                        1 for link in value.get("+links") or () if link.get("rel") == "releasefile"
                    )
                    row = browse.VersionRow(
                        version,
                        stage,
                        bool(value.get("yanked")),
                        files,
                        str(value.get("summary") or ""),
                    )
                    rows.setdefault(version, row)
        ordered = [rows[v] for v in browse.newest_first(rows)]
        return ordered, pages

    async def project_page(self, request: Request, user: str, index: str, project: str) -> bytes:
        name = f"{user}/{index}"
        project = self._project_name(request, user, index, project, "")
        constraints = self._constraints(name, project)
        versions, pages = await self._versions(name, project)
        if constraints is not None:
            versions = [v for v in versions if constraints.allows_version(project, v.version)]
        if not versions and not pages and not self._has_private(name, project):
            raise HTTPError(404, f"no project '{project}' on {name}")
        mirror_files: list[browse.FileRow] = []
        source = next(iter(pages), None)
        if source is not None:
            mirror_files = browse.mirror_files(pages[source], source, self.files, None)
            if constraints is not None:
                mirror_files = [
                    row for row in mirror_files if constraints.allows_file(project, row.filename)
                ]
        summary = next((row.summary for row in versions if row.summary), "")
        root = root_url(request, self.outside_url)
        return self._page(
            request,
            "project.html",
            title=f"{project} on {name}",
            name=name,
            user=user,
            index=index,
            project=project,
            summary=summary,
            versions=versions,
            mirror=source,
            mirror_files=mirror_files,
            cached_count=sum(1 for row in mirror_files if row.cached),
            refreshed=has_query_key(request, b"refreshed"),
            csrf_token=self.guard.token(request) if source is not None else "",
            csrf_field=CSRF_FIELD.decode(),
            pip_line=f"pip install --index-url {root}/{name}/+simple/ {project}",
        )

    def _constraints(self, name: str, project: str) -> Constraints | None:
        """A constrained index's constraints; 404 for a project its ``*`` hides."""
        constraints = self.data.constraints(name)
        if constraints is not None and not constraints.allows_project(project):
            raise HTTPError(404, f"no project '{project}' on {name}")
        return constraints

    def _has_private(self, name: str, project: str) -> bool:
        return any(
            self.data.has_private_project(stage, project)
            for stage in self._order(name, project)
            if stage not in self.mirrors
        )

    async def version_page(
        self, request: Request, user: str, index: str, project: str, version: str
    ) -> bytes:
        name = f"{user}/{index}"
        project = self._project_name(request, user, index, project, f"/{version}")
        constraints = self._constraints(name, project)
        if constraints is not None and not constraints.allows_version(project, version):
            raise HTTPError(
                404, f"The version {version[:100]} of project {project} does not exist."
            )
        resolution = self._resolution(name, project)
        order = resolution.stages
        origin: list[tuple[str, bool]] = []
        found: tuple[str, Mapping[str, Any], list[browse.FileRow]] | None = None
        docs = False
        toxresults: list[browse.FileRow] = []
        for stage in order:
            if stage in self.mirrors:
                page = await self._mirror_page(stage, project)
                rows = browse.mirror_files(page, stage, self.files, version) if page else []
                origin.append((stage, bool(rows)))
                if rows and found is None:
                    assert page is not None
                    found = (stage, browse.cached_metadata(page, stage, self.files, version), rows)
            else:
                value = self.data.versions(stage, project).get(version)
                origin.append((stage, value is not None))
                if value is not None and found is None:
                    rows = browse.stage_files(value, self.release_files.path_of)
                    docs = bool(browse.stage_files(value, self.release_files.path_of, "doczip"))
                    toxresults = browse.stage_files(value, self.release_files.path_of, "toxresult")
                    found = (stage, value, rows)
        if found is None:
            raise HTTPError(
                404, f"The version {version[:100]} of project {project} does not exist."
            )
        stage, metadata, rows = found
        description = await self.descriptions.rendered(
            str(metadata.get("description") or ""),
            str(metadata.get("description_content_type") or "") or None,
        )
        root = root_url(request, self.outside_url)
        return self._page(
            request,
            "version.html",
            title=f"{project} {version}",
            name=name,
            user=user,
            index=index,
            project=project,
            version=version,
            stage=stage,
            summary=str(metadata.get("summary") or ""),
            description=description,
            metadata=_metadata_items(metadata),
            files=rows,
            yanked=bool(metadata.get("yanked")),
            origin=origin,
            blocked_by=resolution.blocked_by,
            docs_url=f"/{stage}/{project}/{version}/+doc/" if docs else "",
            toxresults=toxresults,
            from_mirror=stage in self.mirrors,
            pip_line=f"pip install --index-url {root}/{name}/+simple/ {project}=={version}",
        )

    async def refresh_form(self, request: Request, user: str, index: str, project: str) -> bytes:
        """devpi-web's refresh button: revalidate the page now, then show it again."""
        self.guard.check(request)
        self._index_config(user, index)
        if not is_valid_project_name(project):
            raise HTTPError(400, f"invalid project name {project[:100]!r}")
        normalized = canonicalize_name(project)
        await self.refresh_project(user, index, normalized)
        location = f"/{user}/{index}/{normalized}?refreshed"
        raise HTTPError(303, f"refreshed; see {location}", {b"location": location.encode()})

    def status(self, request: Request) -> bytes:
        if self.status_page is None:
            raise HTTPError(404, "no status page")
        return self._page(request, "status.html", title="status", **self.status_page.context())

    async def search_page(self, request: Request) -> bytes:
        if self.search is None:
            raise HTTPError(404, "search is not enabled")
        query = request.args.get(b"query", [b""])[0].decode("utf-8", "replace")
        try:
            page = max(1, min(int(request.args.get(b"page", [b"1"])[0]), 1000))
        except ValueError:
            raise HTTPError(400, "page must be a number") from None
        readable = await self.readable(request) if self.readable is not None else None
        answer = await self.search.answer(query, page, readable) if query.strip() else None
        if b"application/json" in (request.getHeader(b"accept") or b""):
            if answer is None:
                raise HTTPError(400, "no query; ask /+search?query=<terms>")
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-store")
            return json.dumps({"result": answer, "type": "search"}).encode("utf-8")
        return self._page(
            request, "search.html", title=f"search {query}", query=query, answer=answer, page=page
        )

    def search_help(self, request: Request) -> bytes:
        return self._page(request, "searchhelp.html", title="search help", help=SEARCH_HELP)


#: The search syntax, as /+searchhelp shows it (devpid.search.query is the parser).
SEARCH_HELP = (
    ("flask", "projects named flask, starting with it or containing it, then close names"),
    ("Foo_Bar", "names compared as installers compare them: finds foo-bar"),
    (
        "web framework",
        "all terms match: a name, or a private release's summary, keywords, classifiers",
    ),
    ("'web framework'", "a quoted phrase is one term; in a name its space reads as -"),
    ("django-*", "names (or metadata words) starting with django-"),
    ("name:requests", "only names; also summary:, keywords:, classifiers:"),
    (
        "index:alice/dev http",
        "one index (index:dev: any user's dev; index:root/*: root's)",
    ),
    ("user:alice", "only alice's indexes"),
)


def _config_items(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    items = []
    for key, value in sorted(config.items()):
        if isinstance(value, list | tuple):
            value = ", ".join(str(item) for item in value) or "-"
        items.append((key, str(value)))
    return items


#: Metadata keys shown on a version page, in this order.
SHOWN_METADATA = (
    "summary", "author", "author_email", "maintainer", "maintainer_email", "license",
    "home_page", "project_urls", "requires_python", "requires_dist", "keywords",
    "classifiers", "platform", "download_url",
)  # fmt: skip


def _metadata_items(metadata: Mapping[str, Any]) -> list[tuple[str, list[str]]]:
    return [
        (key, browse.as_list(metadata.get(key)))
        for key in SHOWN_METADATA
        if browse.as_list(metadata.get(key))
    ]


__all__ = ["Markup", "WebRoutes"]
