"""Indexes: ``/<user>/<index>`` (GET, PUT, PATCH, DELETE) and the discovery at ``+api``.

devpi's status codes and messages (spec sections 2 and 4): ``PUT`` answers
200, ``DELETE`` 201, ``PATCH`` and ``DELETE`` of a missing index 403 (the
permission is checked first, and a missing index has no owner to permit).
Installers asking for ``/<user>/<index>`` get its project list, as devpi's
``installer_simple`` route gives it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import attrs
from klein import Klein
from twisted.web.server import Request

from devpid.auth.acl import Action, Principal
from devpid.http.devpi import envelope, json_body, root_url, set_serial
from devpid.http.errors import HTTPError
from devpid.http.request import has_query_key, is_installer
from devpid.private.data import PrivateData
from devpid.private.indexconfig import MIRROR, visible_index
from devpid.private.names import check_index_name
from devpid.routes import labelled
from devpid.routes.access import Access
from devpid.routes.users import not_for_browsers

#: What /+api advertises (sorted): the list-form PATCH, and push's options.
FEATURES = ["push-no-docs", "push-only-docs", "push-register-project", "server-keyvalue-parsing"]


def stage_not_found(index: str) -> HTTPError:
    return HTTPError(404, f"The stage {index} could not be found.")


def auth_status(who: Principal) -> list[Any]:
    return ["ok", who.user, list(who.groups)] if who.user is not None else ["noauth", "", []]


@attrs.define
class IndexRoutes:
    data: PrivateData
    access: Access
    mirrors: Any  # Mapping[str, MirrorIndex]
    outside_url: str | None
    #: The project list route, for installers asking for ``/<user>/<index>``.
    project_list: Callable[[Request, str, str], Awaitable[bytes | None]]

    def register(self, app: Klein) -> None:
        index = "/<user>/<index>"
        app.route(index, methods=["GET"], strict_slashes=False)(labelled("index", self.get_index))
        app.route(index, methods=["PUT"], strict_slashes=False)(labelled("api", self.create_index))
        app.route(index, methods=["PATCH"], strict_slashes=False)(
            labelled("api", self.modify_index)
        )
        app.route(index, methods=["DELETE"], strict_slashes=False)(
            labelled("api", self.delete_index)
        )
        app.route("/+api", methods=["GET"])(labelled("api", self.api))
        app.route("/<user>/+api", methods=["GET"])(labelled("api", self.user_api))
        app.route(f"{index}/+api", methods=["GET"])(labelled("api", self.index_api))

    # -- discovery -----------------------------------------------------------------

    async def api(self, request: Request) -> bytes:
        return envelope(request, result=await self._api(request), type="apiconfig")

    async def user_api(self, request: Request, user: str) -> bytes:
        return envelope(request, result=await self._api(request), type="apiconfig")

    async def index_api(self, request: Request, user: str, index: str) -> bytes:
        name = f"{user}/{index}"
        config = self.data.index(name)
        if config is None:
            raise stage_not_found(name)
        result = await self._api(request)
        root = root_url(request, self.outside_url)
        result["index"] = f"{root}/{name}"
        result["simpleindex"] = f"{root}/{name}/+simple/"
        if config.get("type") != MIRROR:
            result["pypisubmit"] = f"{root}/{name}/"
        return envelope(request, result=result, type="apiconfig")

    async def _api(self, request: Request) -> dict[str, Any]:
        who = await self.access.who(request)
        return {
            "login": f"{root_url(request, self.outside_url)}/+login",
            "authstatus": auth_status(who),
            "features": FEATURES,
        }

    # -- one index -------------------------------------------------------------------

    async def get_index(self, request: Request, user: str, index: str) -> bytes | None:
        if is_installer(request):
            return await self.project_list(request, user, index)
        not_for_browsers(request)
        name = f"{user}/{index}"
        config = self.data.index(name)
        if config is None:
            raise stage_not_found(name)
        result = visible_index(config)
        if not has_query_key(request, b"no_projects"):
            result["projects"] = self._projects(name, config)
        return envelope(request, result=result, type="indexconfig")

    def _projects(self, name: str, config: Any) -> list[str]:
        """The index's own projects. A mirror's would be the upstream's whole name list
        (tens of megabytes for the public index): its ``+simple/`` page has it."""
        if config.get("type") == MIRROR:
            return []
        return self.data.projects(name)

    async def create_index(self, request: Request, user: str, index: str) -> bytes:
        body = json_body(request)
        name = f"{user}/{index}"
        if self.data.user(user) is None:
            raise HTTPError(404, f"no user '{user}'")
        if self.data.index(name) is not None:
            raise HTTPError(409, f"index '{name}' exists")
        who = await self.access.require(
            request, Action.INDEX_CREATE, f"no permission to create index {name}", user=user
        )
        check_index_name(index)
        config, serial = self.data.create_index(user, index, body or {}, who.user)
        set_serial(request, serial)
        return envelope(request, result=visible_index(config), type="indexconfig")

    async def modify_index(self, request: Request, user: str, index: str) -> bytes:
        body = json_body(request)
        name = f"{user}/{index}"
        who = await self._may(request, Action.INDEX_MODIFY, name, "modify")
        config, serial = self.data.patch_index(name, body, who.user)
        set_serial(request, serial)
        return envelope(request, result=visible_index(config), type="indexconfig")

    async def delete_index(self, request: Request, user: str, index: str) -> bytes:
        name = f"{user}/{index}"
        who = await self._may(request, Action.INDEX_DELETE, name, "delete")
        serial = self.data.delete_index(name, who.user)
        set_serial(request, serial)
        return envelope(request, 201, message=f"index {name} deleted")

    async def _may(self, request: Request, action: Action, name: str, verb: str) -> Principal:
        config = self.data.index(name)
        denial = f"no permission to {verb} index {name}"
        if config is None:
            # devpi: a missing index has no ACL that could permit anything
            await self.access.who(request)
            raise HTTPError(403, denial)
        return await self.access.require(request, action, denial, index=name, index_config=config)
