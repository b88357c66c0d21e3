"""Changing a stage's releases through devpi's JSON API: delete a project or a version, yank.

``DELETE /<user>/<index>/<project>[/<version>]`` follows devpi (spec 5.4): on a
non-volatile index only with ``?force``, only this index (never its bases),
and a version's files go with it. Yanking is devpid's own (devpi has none):
``PATCH /<user>/<index>/<project>/<version>`` with ``{"yanked": true}``, a
reason string, or ``false`` to un-yank; installers then see PEP 592's
``data-yanked`` / ``"yanked"`` on the version's files.
"""

from __future__ import annotations

from functools import partial

import attrs
from klein import Klein
from twisted.web.server import Request

from devpid.auth.acl import Action
from devpid.common.offload import Offload
from devpid.files.releases import ReleaseFiles
from devpid.http.devpi import envelope, json_body, set_serial
from devpid.http.errors import HTTPError
from devpid.http.request import has_query_key
from devpid.private.data import PrivateData
from devpid.private.names import normalize_project
from devpid.private.releases import Change, Releases, doc_hashes
from devpid.routes import labelled, unrouted
from devpid.routes.access import Access
from devpid.routes.indexes import stage_not_found

#: The longest yank reason kept.
MAX_REASON = 1000


@attrs.define
class ReleaseRoutes:
    data: PrivateData
    releases: Releases
    files: ReleaseFiles
    access: Access
    offload: Offload

    def register(self, app: Klein) -> None:
        project = "/<user>/<index>/<project>"
        app.route(project, methods=["DELETE"], strict_slashes=False)(
            labelled("api", self.delete_project)
        )
        app.route(f"{project}/<version>", methods=["DELETE"], strict_slashes=False)(
            labelled("api", self.delete_version)
        )
        app.route(f"{project}/<version>", methods=["PATCH"], strict_slashes=False)(
            labelled("api", self.patch_version)
        )

    async def _may(self, request: Request, action: Action, index: str) -> str | None:
        config = self.data.index(index)
        if config is None:
            await self.access.who(request)
            raise HTTPError(403, f"no permission to change {index}")
        who = await self.access.require(
            request, action, f"no permission to change {index}", index=index, index_config=config
        )
        if config.get("type") == "mirror":
            raise HTTPError(405, f"{index} is a mirror: its releases are the upstream's")
        return who.user

    async def _done(
        self, request: Request, change: Change, message: str, index: str, project: str
    ) -> bytes:
        set_serial(request, change.serial)
        self.files.remove(change.unlinked)
        keep = doc_hashes(self.data.versions(index, project))
        await self.offload(partial(self.files.prune_docs, index, project, keep))
        return envelope(request, message=message)

    async def delete_project(self, request: Request, user: str, index: str, project: str) -> bytes:
        if user.startswith("+") or index.startswith("+") or project.startswith("+"):
            raise unrouted(request)
        name = f"{user}/{index}"
        who = await self._may(request, Action.DEL_PROJECT, name)
        normalized = normalize_project(project)
        force = has_query_key(request, b"force")
        change = self.releases.delete_project(name, normalized, force, who)
        message = f"project {normalized} deleted from stage {name}"
        return await self._done(request, change, message, name, normalized)

    async def delete_version(
        self, request: Request, user: str, index: str, project: str, version: str
    ) -> bytes:
        if any(part.startswith("+") for part in (user, index, project, version)):
            raise unrouted(request)
        name = f"{user}/{index}"
        who = await self._may(request, Action.DEL_VERDATA, name)
        normalized = normalize_project(project)
        force = has_query_key(request, b"force")
        change = self.releases.delete_version(name, normalized, version, force, who)
        message = f"project {normalized} version {version!r} deleted"
        return await self._done(request, change, message, name, normalized)

    async def patch_version(
        self, request: Request, user: str, index: str, project: str, version: str
    ) -> bytes:
        if any(part.startswith("+") for part in (user, index, project, version)):
            raise unrouted(request)
        name = f"{user}/{index}"
        if self.data.index(name) is None:
            raise stage_not_found(name)
        body = json_body(request)
        if not isinstance(body, dict) or set(body) != {"yanked"}:
            raise HTTPError(
                400, 'send {"yanked": true}, {"yanked": "<reason>"} or {"yanked": false}'
            )
        yanked = body["yanked"]
        if not isinstance(yanked, bool | str):
            raise HTTPError(400, "yanked is true, false or a reason")
        if isinstance(yanked, str):
            yanked = " ".join(yanked.split())[:MAX_REASON] or True
        who = await self._may(request, Action.DEL_VERDATA, name)
        normalized = normalize_project(project)
        change = self.releases.yank(name, normalized, version, yanked, who)
        state = "yanked" if yanked is not False else "not yanked"
        return await self._done(
            request, change, f"{normalized} {version} is {state}", name, normalized
        )
