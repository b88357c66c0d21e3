"""Users, indexes, API tokens and versions: reading them, and changing them one transaction each.

This is the domain the routes and the command line call. Each change method
is one ``PrivateDatabase.write``: it checks what must hold against the newest
records (every process's), writes, and commits one event. A failed check
raises ``Refused`` with devpi's status and message and writes nothing.

Permissions are not checked here: the routes ask ``devpid.auth.acl`` first.
Passwords arrive hashed: argon2 runs in a thread before the transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from devpid.auth.tokens import NewApiToken, new_api_token
from devpid.private.constraints import Constraints, constraints_of
from devpid.private.database import PrivateDatabase, Transaction
from devpid.private.indexconfig import (
    MIRROR,
    keep_hidden_password,
    new_index_config,
    patch_index_config,
)
from devpid.private.names import InvalidConfig, check_index_name, check_user_name
from devpid.private.resolve import Stage
from devpid.private.urlbases import expand_url_bases, mirror_follower
from devpid.private.userconfig import USER_FIELDS, NewUser, UserChange


class Refused(Exception):
    """A change or lookup devpi answers with ``code`` and ``message`` (one line)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def timestamp(now: float) -> str:
    """devpi's time stamps of users (``created``, ``modified``): UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))


def _owner_and_name(index: str) -> tuple[str, str]:
    owner, _, name = index.partition("/")
    return owner, name


@attrs.define
class PrivateData:
    database: PrivateDatabase
    #: ``mirror_cache_expiry`` of a new mirror index that does not give one.
    default_cache_expiry: int = 1800
    wall_clock: Callable[[], float] = time.time
    _stages: tuple[int, dict[str, Stage]] | None = None
    _constraints: tuple[int, dict[str, Constraints | None]] = attrs.field(factory=lambda: (-2, {}))

    # -- reading -----------------------------------------------------------------

    @property
    def serial(self) -> int:
        return self.database.serial

    def catch_up(self) -> bool:
        return self.database.catch_up()

    def catch_up_in_this_turn(self) -> bool:
        """``catch_up``, at most once per reactor turn: before each request."""
        return self.database.catch_up_in_this_turn()

    def users(self) -> Mapping[str, Mapping[str, Any]]:
        return self.database.records.of("user")

    def user(self, name: str) -> Mapping[str, Any] | None:
        return self.users().get(name)

    def indexes(self) -> Mapping[str, Mapping[str, Any]]:
        return self.database.records.of("index")

    def index(self, name: str) -> Mapping[str, Any] | None:
        return self.indexes().get(name)

    def indexes_of(self, user: str) -> dict[str, Mapping[str, Any]]:
        prefix = user + "/"
        return {
            name[len(prefix) :]: config
            for name, config in sorted(self.indexes().items())
            if name.startswith(prefix)
        }

    def is_stage(self, index: str) -> bool:
        """Whether ``index`` exists and is not a mirror (it takes uploads)."""
        config = self.index(index)
        return config is not None and config.get("type") != MIRROR

    def mirrors(self) -> dict[str, Mapping[str, Any]]:
        return {n: c for n, c in self.indexes().items() if c.get("type") == MIRROR}

    def tokens(self) -> Mapping[str, Mapping[str, Any]]:
        return self.database.records.of("token")

    def tokens_of(self, user: str) -> dict[str, Mapping[str, Any]]:
        return {i: t for i, t in sorted(self.tokens().items()) if t.get("user") == user}

    def stages(self) -> dict[str, Stage]:
        """Every index as ``resolve`` sees it, rebuilt once per serial."""
        serial = self.database.serial
        if self._stages is None or self._stages[0] != serial:
            stages = {n: Stage.from_config(n, c) for n, c in self.indexes().items()}
            self._stages = (serial, stages)
        return self._stages[1]

    def constraints(self, index: str) -> Constraints | None:
        """A constrained index's constraints, parsed once per serial; None for any other."""
        serial = self.database.serial
        if self._constraints[0] != serial:
            self._constraints = (serial, {})
        known = self._constraints[1]
        if index not in known:
            known[index] = constraints_of(self.index(index))
        return known[index]

    def versions(self, index: str, project: str) -> Mapping[str, Mapping[str, Any]]:
        """The version data of ``project`` on the stage ``index`` itself (no bases)."""
        return self.database.records.versions(index, project)

    def has_private_project(self, index: str, project: str) -> bool:
        return bool(self.database.records.versions(index, project))

    def projects(self, index: str) -> list[str]:
        """The normalised names of the projects on the stage ``index`` itself."""
        return sorted(self.database.records.projects.get(index, ()))

    def project_serial(self, index: str, project: str) -> int:
        """The serial of the last change to ``project`` on ``index`` (-1: never)."""
        return self.database.records.project_serials.get((index, project), -1)

    def index_serial(self, index: str) -> int:
        """The serial of the last change to any version on ``index`` (-1: never)."""
        return self.database.records.index_serials.get(index, -1)

    def version_of_file(self, path: str) -> str | None:
        """The version record (``user/index/project/version``) linking the file at ``path``."""
        return self.database.records.files.get(path)

    def tombstone(self, path: str) -> Mapping[str, Any] | None:
        """What is left of a deleted file at ``path`` (it answers 410)."""
        return self.database.records.of("tombstone").get(path)

    # -- users ---------------------------------------------------------------------

    def create_user(
        self, name: str, new: NewUser, pwhash: str, who: str | None
    ) -> tuple[dict[str, Any], int]:
        def change(tx: Transaction) -> dict[str, Any]:
            if tx.get("user", name) is not None:
                raise Refused(409, "user already exists")
            _checked(check_user_name, name)
            record = {**new.fields, "pwhash": pwhash, "created": timestamp(self.wall_clock())}
            tx.put("user", name, record)
            return record

        return self.database.write(f"create user {name}", who, change)

    def modify_user(
        self, name: str, change_: UserChange, pwhash: str | None, who: str | None
    ) -> tuple[bool, int]:
        """Apply ``change_``; True if anything differs afterwards."""

        def change(tx: Transaction) -> bool:
            current = tx.get("user", name)
            if current is None:
                raise Refused(404, f"no user '{name}'")
            record = dict(current)
            for key, value in change_.set_fields.items():
                record[key] = value
            for key in change_.removed_fields:
                record.pop(key, None)
            if pwhash is not None:
                record["pwhash"] = pwhash
                record.pop("pwsalt", None)
            if record == current:
                return False
            record["modified"] = timestamp(self.wall_clock())
            tx.put("user", name, record)
            return True

        return self.database.write(f"modify user {name}", who, change)

    def delete_user(self, name: str, who: str | None) -> int:
        def change(tx: Transaction) -> None:
            if tx.get("user", name) is None:
                raise Refused(404, f"no user '{name}'")
            if name == "root":
                raise Refused(403, "root cannot be deleted")
            owned = [n for n in tx.names("index") if n.startswith(name + "/")]
            for index in owned:
                config = tx.get("index", index) or {}
                if not config.get("volatile", True):
                    raise Refused(
                        403, f"user '{name}' has non-volatile index: {index.partition('/')[2]}"
                    )
            for index in owned:
                _delete_index_records(tx, index)
            for token in tx.names("token"):
                if (tx.get("token", token) or {}).get("user") == name:
                    tx.delete("token", token)
            tx.delete("user", name)

        return self.database.write(f"delete user {name}", who, change)[1]

    def set_password_hash(self, name: str, pwhash: str, who: str | None) -> int:
        """``devpid passwd``: a new password hash for an existing user."""
        return self.modify_user(name, UserChange(None, None, {}, ()), pwhash, who)[1]

    # -- indexes -------------------------------------------------------------------

    def create_index(
        self, owner: str, name: str, body: object, who: str | None
    ) -> tuple[dict[str, Any], int]:
        full = f"{owner}/{name}"

        def change(tx: Transaction) -> dict[str, Any]:
            if tx.get("user", owner) is None:
                raise Refused(404, f"no user '{owner}'")
            if tx.get("index", full) is not None:
                raise Refused(409, f"index '{full}' exists")
            _checked(check_index_name, name)
            config = _checked(
                new_index_config,
                owner,
                _checked(expand_url_bases, owner, body, _follower(tx, owner)),
                index_exists=lambda n: tx.get("index", n) is not None and n != full,
                default_cache_expiry=self.default_cache_expiry,
            )
            tx.put("index", full, config)
            return config

        return self.database.write(f"create index {full}", who, change)

    def patch_index(self, index: str, body: object, who: str | None) -> tuple[dict[str, Any], int]:
        owner, _ = _owner_and_name(index)

        def change(tx: Transaction) -> dict[str, Any]:
            current = tx.get("index", index)
            if current is None:
                raise Refused(404, f"The stage {index} could not be found.")
            config = _checked(
                patch_index_config,
                index,
                owner,
                current,
                _checked(expand_url_bases, owner, body, _follower(tx, owner)),
                index_exists=lambda n: tx.get("index", n) is not None,
            )
            config = keep_hidden_password(current, config)
            if config != current:
                tx.put("index", index, config)
            return config

        return self.database.write(f"modify index {index}", who, change)

    def delete_index(self, index: str, who: str | None) -> int:
        def change(tx: Transaction) -> None:
            config = tx.get("index", index)
            if config is None:
                raise Refused(404, f"The stage {index} could not be found.")
            if not config.get("volatile", True):
                raise Refused(403, f"index {index} non-volatile, cannot delete")
            _delete_index_records(tx, index)

        return self.database.write(f"delete index {index}", who, change)[1]

    # -- API tokens ------------------------------------------------------------------

    def create_token(
        self,
        user: str,
        indexes: Iterable[str],
        lifetime: int,
        description: str,
        who: str | None,
    ) -> tuple[NewApiToken, dict[str, Any], int]:
        """A new API token of ``user``: the token (its secret shown once), the record
        stored (a digest, never the secret) and the serial."""
        token = new_api_token()
        now = self.wall_clock()
        record = {
            "digest": token.digest,
            "indexes": sorted(set(indexes)),
            "created": int(now),
            "expires": int(now + lifetime),
            "description": description,
        }
        serial = self.add_token(token.token_id, user, record, who)
        return token, record, serial

    def add_token(
        self, token_id: str, user: str, record: Mapping[str, Any], who: str | None
    ) -> int:
        def change(tx: Transaction) -> None:
            if tx.get("user", user) is None:
                raise Refused(404, f"no user '{user}'")
            missing = [i for i in record.get("indexes") or () if tx.get("index", i) is None]
            if missing:
                raise Refused(404, f"no index {missing[0][:200]!r}")
            tx.put("token", token_id, {**record, "user": user})

        return self.database.write(f"create token for {user}", who, change)[1]

    def revoke_token(self, user: str, token_id: str, who: str | None) -> int:
        def change(tx: Transaction) -> None:
            token = tx.get("token", token_id)
            if token is None or token.get("user") != user:
                raise Refused(404, f"no token '{token_id}' of user '{user}'")
            tx.delete("token", token_id)

        return self.database.write(f"revoke token of {user}", who, change)[1]

    # -- versions (registration; uploads build on it) -------------------------------

    def set_version(
        self, index: str, project: str, version: str, data: Mapping[str, Any], who: str | None
    ) -> int:
        def change(tx: Transaction) -> None:
            config = tx.get("index", index)
            if config is None:
                raise Refused(404, f"The stage {index} could not be found.")
            if config.get("type") == MIRROR:
                raise Refused(404, f"cannot register on mirror index {index}")
            tx.put("version", f"{index}/{project}/{version}", dict(data))

        return self.database.write(f"register {project} {version} on {index}", who, change)[1]


def _delete_index_records(tx: Transaction, index: str) -> None:
    prefix = index + "/"
    for name in tx.names("version"):
        if name.startswith(prefix):
            tx.delete("version", name)
    tx.delete("index", index)


def _follower(tx: Transaction, owner: str) -> Callable[[str, str], str]:
    """Creates, in ``tx``, the mirror index that follows a base given as a URL."""
    return mirror_follower(
        owner, lambda name: tx.get("index", name), lambda name, c: tx.put("index", name, c)
    )


def _checked(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return function(*args, **kwargs)
    except InvalidConfig as e:
        raise Refused(400, str(e)) from None


__all__ = ["USER_FIELDS", "PrivateData", "Refused", "timestamp"]
