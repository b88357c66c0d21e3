"""A project's versions as devpi's JSON: ``/<user>/<index>/<project>[/<version>]``.

The versions come from every index of the resolution order, subject to the
``mirror_whitelist`` (``devpid.private.resolve``): the nearest index's version
data wins and the others are kept under ``+shadowing``. A mirror's versions are
made from its simple page (``name``, ``version``, ``+links``, and
``requires_python``/``yanked`` when known), as devpi makes them. Installers
asking for ``/<user>/<index>/<project>`` get the simple page instead.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
from klein import Klein
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from twisted.web.server import Request

from devpid.http.devpi import envelope, root_url
from devpid.http.errors import HTTPError
from devpid.http.request import has_query_key, is_installer
from devpid.mirror.index import CachedPage, IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.private.constraints import Constraints
from devpid.private.data import PrivateData
from devpid.private.names import normalize_project
from devpid.private.resolve import resolve_project
from devpid.routes import labelled, unrouted
from devpid.routes.indexes import stage_not_found
from devpid.routes.stagepages import same_stamp
from devpid.simple.model import Link, ProjectPage

#: Project answers kept per process.
MAX_KEPT_ANSWERS = 256


def version_of(filename: str) -> str | None:
    """The version a distribution file name carries, or None for names packaging rejects."""
    try:
        if filename.endswith(".whl"):
            return str(parse_wheel_filename(filename)[1])
        return str(parse_sdist_filename(filename)[1])
    except (InvalidWheelFilename, InvalidSdistFilename, ValueError):
        return None


def mirror_versions(page: ProjectPage, name: str, href: Callable[[Link], str]) -> dict[str, Any]:
    """devpi's version data of a mirror project, from its simple page."""
    versions: dict[str, dict[str, Any]] = {}
    for link in page.links:
        version = version_of(link.filename)
        if version is None:
            continue
        data = versions.setdefault(version, {"name": name, "version": version, "+links": []})
        sha256 = link.sha256
        data["+links"].append(
            {
                "rel": "releasefile",
                "hash_spec": f"sha256={sha256}" if sha256 else "",
                "hashes": dict(link.hashes),
                "href": href(link),
            }
        )
        if link.requires_python:
            data["requires_python"] = link.requires_python
        if link.yanked:
            data["yanked"] = link.yanked
    return versions


def public_link(link: Mapping[str, Any], root: str) -> dict[str, Any]:
    """A stored link as devpi answers it: absolute ``href``, ``hash_spec``, ``log``."""
    sha256 = link.get("hashes", {}).get("sha256", "")
    public: dict[str, Any] = {
        "rel": link.get("rel"),
        "hash_spec": f"sha256={sha256}" if sha256 else "",
        "hashes": dict(link.get("hashes") or {}),
        "href": f"{root}/{link.get('entrypath')}",
        "log": list(link.get("log") or ()),
    }
    if link.get("for_entrypath"):
        public["for_href"] = f"{root}/{link['for_entrypath']}"
    return public


def public_version(value: Mapping[str, Any], root: str) -> dict[str, Any]:
    """A stored version as devpi answers it; a version with no files has no ``+links``."""
    public = {key: item for key, item in value.items() if key != "+links"}
    links = value.get("+links")
    if links:
        public["+links"] = [public_link(link, root) for link in links]
    return public


@attrs.define
class ProjectRoutes:
    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    outside_url: str | None
    #: The simple page route, for installers asking for ``/<user>/<index>/<project>``.
    simple_page: Callable[[Request, str, str, str], Awaitable[bytes | None]]
    #: Answers kept per process: ``(index, project, root, ignore_bases) -> (stamp, body)``.
    _answers: OrderedDict[tuple[str, str, str, bool], tuple[tuple[Any, ...], bytes]] = attrs.field(
        factory=OrderedDict
    )

    def register(self, app: Klein) -> None:
        project = "/<user>/<index>/<project>"
        app.route(project, methods=["GET"], strict_slashes=False)(labelled("api", self.get_project))
        app.route(f"{project}/<version>", methods=["GET"], strict_slashes=False)(
            labelled("api", self.get_version)
        )

    async def get_project(
        self, request: Request, user: str, index: str, project: str
    ) -> bytes | None:
        if user.startswith("+") or index.startswith("+") or project.startswith("+"):
            raise unrouted(request)
        if is_installer(request):
            return await self.simple_page(request, user, index, project)
        normalized = self._normalized(request, user, index, project, "")
        name = f"{user}/{index}"
        constraints = self._constraints(name, normalized)
        ignore_bases = has_query_key(request, b"ignore_bases")
        root = root_url(request, self.outside_url)
        order = self._order(name, normalized, ignore_bases)
        pages = await self._mirror_pages(order, normalized)
        stamp = (
            order,
            tuple(self.data.project_serial(s, normalized) for s in order),
            constraints.stamp(normalized) if constraints is not None else None,
            *pages,
        )
        key = (name, normalized, root, ignore_bases)
        kept = self._answers.get(key)
        if kept is not None and same_stamp(kept[0], stamp):
            self._answers.move_to_end(key)
            return json_document(request, kept[1])
        versions = self._merged(order, pages, normalized, root, None)
        if constraints is not None:
            versions = {
                v: data for v, data in versions.items() if constraints.allows_version(normalized, v)
            }
        if not versions and not ignore_bases and not self._exists(order, pages, normalized):
            raise HTTPError(404, f"no project '{normalized}'")
        body = envelope(request, result=versions, type="projectconfig")
        self._answers[key] = (stamp, body)
        while len(self._answers) > MAX_KEPT_ANSWERS:
            self._answers.popitem(last=False)
        return body

    async def get_version(
        self, request: Request, user: str, index: str, project: str, version: str
    ) -> bytes:
        if any(part.startswith("+") for part in (user, index, project, version)):
            raise unrouted(request)
        normalized = self._normalized(request, user, index, project, f"/{version}")
        constraints = self._constraints(f"{user}/{index}", normalized)
        order = self._order(f"{user}/{index}", normalized, False)
        pages = await self._mirror_pages(order, normalized)
        root = root_url(request, self.outside_url)
        data = self._merged(order, pages, normalized, root, version).get(version)
        if constraints is not None and not constraints.allows_version(normalized, version):
            data = None
        if data is None:
            raise HTTPError(
                404, f"The version {version[:100]} of project {normalized} does not exist."
            )
        return envelope(request, result=data, type="versiondata")

    def _normalized(self, request: Request, user: str, index: str, project: str, rest: str) -> str:
        if b"application/json" not in (request.getHeader(b"accept") or b""):
            raise HTTPError(415, "unsupported media type; ask for application/json")
        if self.data.index(f"{user}/{index}") is None:
            raise stage_not_found(f"{user}/{index}")
        normalized = normalize_project(project)
        if normalized != project:
            location = f"{root_url(request, self.outside_url)}/{user}/{index}/{normalized}{rest}"
            raise HTTPError(302, f"moved to {location}", {b"location": location.encode()})
        return normalized

    def _constraints(self, index: str, project: str) -> Constraints | None:
        """A constrained index's constraints (404 for a project its ``*`` hides)."""
        constraints = self.data.constraints(index)
        if constraints is not None and not constraints.allows_project(project):
            raise HTTPError(404, f"no project '{project}'")
        return constraints

    def _exists(
        self, order: tuple[str, ...], pages: tuple[CachedPage | None, ...], project: str
    ) -> bool:
        """devpi's ``has_project``: a mirror has a page for it, or a stage registered it."""
        if any(page is not None for page in pages):
            return True
        return any(
            self.data.has_private_project(stage, project)
            for stage in order
            if stage not in self.mirrors
        )

    def _order(self, index: str, project: str, ignore_bases: bool) -> tuple[str, ...]:
        if ignore_bases:
            return (index,)
        stages = self.data.stages()
        return resolve_project(index, project, stages, self.data.has_private_project).stages

    async def _mirror_pages(
        self, order: tuple[str, ...], project: str
    ) -> tuple[CachedPage | None, ...]:
        """The page of each mirror of ``order`` (None: the mirror has no such project)."""
        pages: list[CachedPage | None] = []
        for stage in order:
            mirror = self.mirrors.get(stage)
            if mirror is None:
                continue
            try:
                pages.append(await mirror.project_page(project))
            except ProjectNotFound:
                pages.append(None)
            except IndexUnavailable as e:
                raise HTTPError(502, str(e)) from None
        return tuple(pages)

    def _merged(
        self,
        order: tuple[str, ...],
        pages: tuple[CachedPage | None, ...],
        project: str,
        root: str,
        only: str | None,
    ) -> dict[str, Any]:
        """Every version (or ``only`` that one) along ``order``: the nearest index's data,
        the others under ``+shadowing``."""
        mirror_pages = iter(pages)
        merged: dict[str, Any] = {}
        for stage in order:
            if stage in self.mirrors:
                entry = next(mirror_pages)
                page = entry.content if entry is not None else None
                if not isinstance(page, ProjectPage):
                    continue
                found: Mapping[str, Any] = mirror_versions(page, project, _hrefs(root, stage))
            else:
                stored = self.data.versions(stage, project)
                if only is not None:
                    stored = {only: stored[only]} if only in stored else {}
                found = {version: public_version(value, root) for version, value in stored.items()}
            for version, data in found.items():
                if only is not None and version != only:
                    continue
                if version not in merged:
                    merged[version] = dict(data)
                else:
                    merged[version].setdefault("+shadowing", []).append(data)
        return merged


def _hrefs(root: str, stage: str) -> Callable[[Link], str]:
    return lambda link: f"{root}/{stage}/{link.url_path}"


def json_document(request: Request, body: bytes) -> bytes:
    """An answer made earlier by ``envelope``, sent again."""
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return body
