"""A project's versions as devpi's JSON: ``/<user>/<index>/<project>[/<version>]``.

The versions come from every index of the resolution order, subject to the
``mirror_whitelist`` (``devpid.private.resolve``): the nearest index's version
data wins and the others are kept under ``+shadowing``. A mirror's versions are
made from its simple page (``name``, ``version``, ``+links``, and
``requires_python``/``yanked`` when known), as devpi makes them. Installers
asking for ``/<user>/<index>/<project>`` get the simple page instead.
"""

from __future__ import annotations

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
from devpid.http.request import is_installer
from devpid.mirror.index import IndexUnavailable, MirrorIndex, ProjectNotFound
from devpid.private.data import PrivateData
from devpid.private.names import normalize_project
from devpid.private.resolve import resolve_project
from devpid.routes import labelled, unrouted
from devpid.routes.indexes import stage_not_found
from devpid.simple.model import Link, ProjectPage


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


@attrs.define
class ProjectRoutes:
    data: PrivateData
    mirrors: Mapping[str, MirrorIndex]
    outside_url: str | None
    #: The simple page route, for installers asking for ``/<user>/<index>/<project>``.
    simple_page: Callable[[Request, str, str, str], Awaitable[bytes]]

    def register(self, app: Klein) -> None:
        project = "/<user>/<index>/<project>"
        app.route(project, methods=["GET"], strict_slashes=False)(labelled("api", self.get_project))
        app.route(f"{project}/<version>", methods=["GET"], strict_slashes=False)(
            labelled("api", self.get_version)
        )

    async def get_project(self, request: Request, user: str, index: str, project: str) -> bytes:
        if user.startswith("+") or index.startswith("+") or project.startswith("+"):
            raise unrouted(request)
        if is_installer(request):
            return await self.simple_page(request, user, index, project)
        normalized = self._normalized(request, user, index, project, "")
        name = f"{user}/{index}"
        ignore_bases = b"ignore_bases" in request.args
        versions = await self._versions(request, name, normalized, ignore_bases)
        if not versions and not ignore_bases:
            raise HTTPError(404, f"no project '{normalized}'")
        return envelope(request, result=versions, type="projectconfig")

    async def get_version(
        self, request: Request, user: str, index: str, project: str, version: str
    ) -> bytes:
        if any(part.startswith("+") for part in (user, index, project, version)):
            raise unrouted(request)
        normalized = self._normalized(request, user, index, project, f"/{version}")
        versions = await self._versions(request, f"{user}/{index}", normalized, False)
        data = versions.get(version)
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

    async def _versions(
        self, request: Request, index: str, project: str, ignore_bases: bool
    ) -> dict[str, Any]:
        stages = self.data.stages()
        if ignore_bases:
            order: tuple[str, ...] = (index,)
        else:
            order = resolve_project(index, project, stages, self.data.has_private_project).stages
        root = root_url(request, self.outside_url)
        merged: dict[str, Any] = {}
        for stage in order:
            found = await self._stage_versions(stage, project, root)
            for version, data in found.items():
                if version not in merged:
                    merged[version] = dict(data)
                else:
                    merged[version].setdefault("+shadowing", []).append(data)
        return merged

    async def _stage_versions(self, stage: str, project: str, root: str) -> Mapping[str, Any]:
        mirror = self.mirrors.get(stage)
        if mirror is None:
            return self.data.versions(stage, project)
        try:
            entry = await mirror.project_page(project)
        except ProjectNotFound:
            return {}
        except IndexUnavailable as e:
            raise HTTPError(502, str(e)) from None
        page = entry.content
        if not isinstance(page, ProjectPage):
            return {}
        return mirror_versions(page, project, lambda link: f"{root}/{stage}/+f/{link.relpath}")
