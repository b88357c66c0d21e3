"""The one place that answers "may this principal do this" (spec 1.3).

Reading (``PKG_READ``) is open to everyone unless the server runs with
``--require-auth`` (every reader must be authenticated) or an index names its
readers in ``acl_pkg_read`` (absent: ``:ANONYMOUS:``); root reads everything.
The lockdown gate (``devpid.auth.lockdown``) asks it for every request.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

EVERYONE = ":ANONYMOUS:"
AUTHENTICATED = ":AUTHENTICATED:"
ROOT = "root"


@attrs.frozen
class Principal:
    user: str | None = None
    groups: tuple[str, ...] = ()
    token_indexes: frozenset[str] | None = None

    @property
    def authenticated(self) -> bool:
        return self.user is not None

    def principals(self) -> frozenset[str]:
        if self.user is None:
            return frozenset({EVERYONE})
        return frozenset({EVERYONE, AUTHENTICATED, self.user, *(":" + g for g in self.groups)})


ANONYMOUS = Principal()


class Action(enum.Enum):
    USER_LOGIN = "user_login"
    USER_CREATE = "user_create"
    USER_MODIFY = "user_modify"
    USER_MODIFY_PASSWORD = "user_modify_password"
    USER_DELETE = "user_delete"
    INDEX_CREATE = "index_create"
    INDEX_MODIFY = "index_modify"
    INDEX_DELETE = "index_delete"
    UPLOAD = "upload"
    TOXRESULT_UPLOAD = "toxresult_upload"
    DEL_ENTRY = "del_entry"
    DEL_PROJECT = "del_project"
    DEL_VERDATA = "del_verdata"
    PKG_READ = "pkg_read"
    TOKEN_MANAGE = "token_manage"


_ACCOUNT_ACTIONS = frozenset(
    {
        Action.USER_CREATE,
        Action.USER_MODIFY,
        Action.USER_MODIFY_PASSWORD,
        Action.USER_DELETE,
        Action.INDEX_CREATE,
        Action.INDEX_MODIFY,
        Action.INDEX_DELETE,
        Action.TOKEN_MANAGE,
    }
)
_INDEX_ACTIONS = frozenset(
    {
        Action.UPLOAD,
        Action.TOXRESULT_UPLOAD,
        Action.DEL_ENTRY,
        Action.DEL_PROJECT,
        Action.DEL_VERDATA,
    }
)
_DEL_ACTIONS = frozenset({Action.DEL_ENTRY, Action.DEL_PROJECT, Action.DEL_VERDATA})


def _acl(value: Any) -> frozenset[str]:
    """ACL entries from stored config; the special names in any case."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, Iterable):
        return frozenset()
    names = set()
    for name in value:
        if not isinstance(name, str) or not name.strip():
            continue
        name = name.strip()
        if name.upper() in (EVERYONE, AUTHENTICATED):
            name = name.upper()
        names.add(name)
    return frozenset(names)


#: Who may read an index whose configuration names nobody.
DEFAULT_READERS = frozenset({EVERYONE})


def readers(index_config: Mapping[str, Any]) -> frozenset[str]:
    """An index's ``acl_pkg_read`` principals (absent: everyone)."""
    if "acl_pkg_read" not in index_config:
        return DEFAULT_READERS
    return _acl(index_config.get("acl_pkg_read"))


@attrs.frozen
class Policy:
    restrict_modify: frozenset[str] | None = None
    #: ``--require-auth``: nobody anonymous reads anything (the lockdown).
    require_auth: bool = False

    def _manages(self, who: Principal, owner: str | None) -> bool:
        """Root, and the owner, or under --restrict-modify its principals instead."""
        if who.user == ROOT:
            return True
        if self.restrict_modify is None:
            return owner is not None and who.user == owner
        return bool(who.principals() & self.restrict_modify)

    def permits(
        self,
        who: Principal,
        action: Action,
        *,
        user: str | None = None,
        index: str | None = None,
        index_config: Mapping[str, Any] | None = None,
    ) -> bool:
        """``user``: the user acted on (USER_*, and the owner for INDEX_CREATE);
        ``index``: "owner/name"; ``index_config``: its stored config (None: no such index,
        so no index ACL and no index-scoped permission, as in devpi)."""
        if action is Action.USER_LOGIN:
            return True
        if action is Action.PKG_READ:
            return self._may_read(who, index_config)
        if who.token_indexes is not None:
            if action in _ACCOUNT_ACTIONS:
                return False
            if index is None or index not in who.token_indexes:
                return False
        is_root = who.user == ROOT
        if action is Action.TOKEN_MANAGE:
            return who.authenticated and user is not None and (is_root or who.user == user)
        if action is Action.USER_CREATE:
            return self.restrict_modify is None or self._manages(who, None)
        if action in (Action.USER_MODIFY, Action.USER_MODIFY_PASSWORD, Action.INDEX_CREATE):
            if user is None or not who.authenticated:
                return False
            if action is Action.USER_MODIFY_PASSWORD and who.user == user:
                return True
            return self._manages(who, user)
        if action is Action.USER_DELETE:
            if user is None or user == ROOT or not who.authenticated:
                return False
            if is_root:
                return True
            if self.restrict_modify is None:
                return who.user == user
            # a restrict-modify principal never deletes itself through that principal
            return bool(who.principals() & (self.restrict_modify - {user}))
        # index-scoped actions
        if index is None or index_config is None:
            return False
        owner = index.partition("/")[0]
        if action in (Action.INDEX_MODIFY, Action.INDEX_DELETE):
            return who.authenticated and self._manages(who, owner)
        is_mirror = index_config.get("type") == "mirror"
        if action is Action.UPLOAD:
            return not is_mirror and bool(who.principals() & _acl(index_config.get("acl_upload")))
        if action is Action.TOXRESULT_UPLOAD:
            return not is_mirror and bool(
                who.principals() & _acl(index_config.get("acl_toxresult_upload"))
            )
        if action in _DEL_ACTIONS:
            if who.authenticated and self._manages(who, owner):
                return True
            return not is_mirror and bool(who.principals() & _acl(index_config.get("acl_upload")))
        return False

    def _may_read(self, who: Principal, index_config: Mapping[str, Any] | None) -> bool:
        """``index_config`` None: what belongs to no index (``/``, ``/+status``, a user).

        An index-limited token reads what its user reads: the limit is on writes."""
        if self.require_auth and not who.authenticated:
            return False
        if index_config is None or who.user == ROOT:
            return True
        return bool(who.principals() & readers(index_config))

    def denial_status(self, who: Principal, action: Action) -> int:
        """401 (with WWW-Authenticate) for an anonymous upload or read; every other denial
        is 403 (devpi's)."""
        if who.authenticated:
            return 403
        return 401 if action in (Action.UPLOAD, Action.PKG_READ) else 403
