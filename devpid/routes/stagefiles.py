"""The files of stage indexes at ``/<user>/<index>/+f/...``: find, delete, post tox results.

``FileRoutes`` serves the bytes (Range, HEAD, ETag) for mirrors and stages
alike; this finds a stage's file through the version that links it (a file
that is on disk but linked by nothing is not served), answers 410 for one
that was deleted, devpi's ``releasefilemeta`` JSON to ``application/json``
clients, and handles ``DELETE`` and the tox results ``POST``ed to a release.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from twisted.web.server import Request

from devpid.auth.acl import Action
from devpid.common.offload import Offload
from devpid.files.releases import FileBusy, ReleaseFiles
from devpid.files.store import UnsafePath
from devpid.http.devpi import envelope, set_serial, wants_json
from devpid.http.errors import HTTPError, json_answer
from devpid.http.request import has_query_key
from devpid.private.data import PrivateData, Refused
from devpid.private.database import split_version_name
from devpid.private.releases import (
    TOXRESULT,
    Change,
    NewFile,
    Releases,
    basename,
    doc_hashes,
)
from devpid.routes.access import Access
from devpid.simple.model import METADATA, dist_filename_of

#: Names a tox result may try when others are posted for the same release at once.
TOXRESULT_ATTEMPTS = 20


@attrs.define
class StageFiles:
    data: PrivateData
    releases: Releases
    files: ReleaseFiles
    access: Access
    offload: Offload
    outside_url: str | None = None

    def _link(self, path: str) -> tuple[str, dict[str, Any]] | None:
        """The version record name and the link of the file at ``path``."""
        name = self.data.version_of_file(path)
        if name is None:
            return None
        index, project, version = split_version_name(name)
        value = self.data.versions(index, project).get(version) or {}
        for link in value.get("+links") or ():
            if link.get("entrypath") == path:
                return name, dict(link)
        return None

    def locate(self, request: Request, index: str, relpath: str) -> Path | bytes:
        """The file to send, or the JSON answer; 404 or 410 when it is not linked."""
        path = f"{index}/+f/{relpath}"
        side = relpath[len(dist_filename_of(relpath)) :]
        found = self._link(path[: len(path) - len(side)] if side else path)
        if found is None or (side == METADATA and "core_metadata" not in found[1]):
            if self.data.tombstone(path) is not None:
                raise HTTPError(410, "file existed, deleted in later serial")
            raise HTTPError(404, "no such file")
        if side and side != METADATA:
            raise HTTPError(404, "no such file")
        name, link = found
        if wants_json(request) and not side:
            _, project, version = split_version_name(name)
            sha256 = link.get("hashes", {}).get("sha256", "")
            return envelope(
                request,
                result={
                    "last_modified": time.strftime(
                        "%Y-%m-%d %H:%M:%S", time.gmtime(link.get("last_modified", 0))
                    ),
                    "hash_spec": f"sha256={sha256}",
                    "hashes": link.get("hashes", {}),
                    "project": project,
                    "version": version,
                },
                type="releasefilemeta",
            )
        try:
            return self.files.path_of(path)
        except UnsafePath as e:
            raise HTTPError(400, str(e)) from None

    async def delete(self, request: Request, index: str, relpath: str) -> bytes:
        path = f"{index}/+f/{relpath}"
        config = self.data.index(index)
        who = await self.access.require(
            request,
            Action.DEL_ENTRY,
            f"no permission to delete {basename(path)}",
            index=index,
            index_config=config,
        )
        force = has_query_key(request, b"force")
        version_name = self.data.version_of_file(path)
        change = self.releases.delete_file(index, path, force, who.user)
        set_serial(request, change.serial)
        self.files.remove(change.unlinked)
        if version_name is not None:
            _, project, _ = split_version_name(version_name)
            keep = doc_hashes(self.data.versions(index, project))
            await self.offload(partial(self.files.prune_docs, index, project, keep))
        return envelope(request, message=f"package {path!r} deleted")

    async def post_toxresult(self, request: Request, index: str, relpath: str) -> bytes:
        release = f"{index}/+f/{relpath}"
        config = self.data.index(index)
        who = await self.access.who(request)
        # devpi answers these in JSON whatever Accept says; devpi-client reads the message
        if not self.access.policy.permits(
            who, Action.TOXRESULT_UPLOAD, index=index, index_config=config
        ):
            message = (
                "No permission to upload tox results. "
                "You can use the devpi test --no-upload option to skip the upload."
            )
            return json_answer(request, 403, {"message": message})
        found = self._link(release)
        if found is None or found[1].get("rel") != "releasefile":
            return json_answer(request, 404, {"message": f"no release file found at {release}"})
        raw = request.content.read() if request.content is not None else b""
        try:
            json.loads(raw)
        except ValueError:
            return json_answer(request, 400, {"message": "Bad request: could not decode json"})
        name, _link = found
        index_name, project, version = split_version_name(name)
        value = self.data.versions(index_name, project).get(version) or {}
        earlier = sum(
            1
            for other in value.get("+links") or ()
            if other.get("rel") == TOXRESULT and other.get("for_entrypath") == release
        )
        stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime())
        sha256 = hashlib.sha256(raw).hexdigest()
        # devpi's name counts the earlier results; results posted at the same second
        # take the next number
        for number in range(earlier, earlier + TOXRESULT_ATTEMPTS):
            path = f"{release}.toxresult-{stamp}-{number}"
            try:
                change = await self._store_toxresult(index, release, path, raw, sha256, who.user)
            except (FileBusy, Refused) as e:
                if isinstance(e, Refused) and e.code != 409:
                    raise
                continue
            set_serial(request, change.serial)
            return envelope(request, result=f"{path}#sha256={sha256}", type="toxresultpath")
        raise HTTPError(503, "too many tox results at once for this release; post it again")

    async def _store_toxresult(
        self, index: str, release: str, path: str, raw: bytes, sha256: str, who: str | None
    ) -> Change:
        placed = await self.offload(partial(self.files.write_file, path, raw))
        try:
            new = NewFile(TOXRESULT, path, sha256, len(raw), for_entrypath=release)
            return self.releases.store_toxresult(index, release, new, who)
        except BaseException:
            placed.release()
            self.files.remove([path])
            raise
        finally:
            placed.release()
