"""``devpid init``, ``devpid passwd`` and ``devpid token``: the private data, offline.

They work on the serverdir directly, through the same transactions as the
server (so a running devpid sees their changes on its next request):

- ``init``, like devpi-init: ``root`` with ``--root-passwd`` (or
  ``--root-passwd-hash``) and ``root/pypi`` mirroring the upstream
  (``--upstream``, else the one devpid would use), unless ``--no-root-pypi``;
- ``passwd USER``, like devpi-passwd: a new password, asked for on the
  terminal (or read as one line from standard input);
- ``token create|list|revoke USER``: API tokens, shown once when created.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.python import usage

from devpid.auth.passwords import hash_password, looks_like_hash
from devpid.auth.tokens import DEFAULT_API_TOKEN_LIFETIME, MAX_API_TOKEN_LIFETIME
from devpid.config import ConfigError, build_settings, read_ini, remember_upstream
from devpid.private.data import PrivateData, Refused, timestamp
from devpid.private.database import DatabaseError, PrivateDatabase
from devpid.private.init import initialize

EXIT_USAGE = 2


class _ServerdirOptions(usage.Options):
    optParameters = [
        ["serverdir", None, None, "the serverdir [default: the config's, or ~/.devpid]"],
        ["config", "c", None, "read settings from this INI file, as devpid does"],
    ]

    def settings(self, upstream: str | None = None) -> Any:
        ini = read_ini(self["config"]) if self["config"] else None
        given = {"serverdir": self["serverdir"], "upstream": upstream}
        return build_settings(given, ini)


class InitOptions(_ServerdirOptions):
    synopsis = "Usage: devpid init [--serverdir DIR] [--root-passwd PW] [--no-root-pypi]"
    longdesc = (
        "Create the private data of a new serverdir: the user root and the mirror "
        "index root/pypi. (twistd devpid does this itself on an empty serverdir, with "
        "an empty root password.)"
    )
    optParameters = [
        ["root-passwd", None, "", "root's password [default: empty]"],
        ["root-passwd-hash", None, None, "root's password as an argon2 hash instead"],
        ["upstream", None, None, "the index root/pypi mirrors [default: as devpid]"],
    ]
    optFlags = [["no-root-pypi", None, "do not create root/pypi"]]

    def parseArgs(self, *args: str) -> None:
        if args:
            raise usage.UsageError(f"unexpected argument {args[0]!r}")


class PasswdOptions(_ServerdirOptions):
    synopsis = "Usage: devpid passwd [--serverdir DIR] USER"
    longdesc = "Set USER's password (asked for, or read as one line from standard input)."

    def parseArgs(self, user: str) -> None:  # type: ignore[override]
        self["user"] = user


class TokenCreate(usage.Options):
    synopsis = "USER [--index USER/INDEX ...] [--expires-in SECONDS] [--description TEXT]"
    optParameters = [
        ["expires-in", None, str(DEFAULT_API_TOKEN_LIFETIME), "seconds the token is valid"],
        ["description", None, "", "what the token is for"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["indexes"] = []

    def parseOptions(self, options: Sequence[str] | None = None) -> None:
        """Options may come after USER too (``create alice --index alice/dev``): every
        option of ``create`` takes a value, so the rest are the positional arguments."""
        args = list(options or [])
        flags: list[str] = []
        positional: list[str] = []
        while args:
            arg = args.pop(0)
            if arg.startswith("-") and arg not in ("-", "--"):
                flags.append(arg)
                if "=" not in arg and arg not in ("-h", "--help") and args:
                    flags.append(args.pop(0))
            else:
                positional.append(arg)
        super().parseOptions([*flags, *positional])

    def opt_index(self, index: str) -> None:
        """limit the token to this index (repeatable)"""
        self["indexes"].append(index)

    def parseArgs(self, user: str) -> None:  # type: ignore[override]
        self["user"] = user


class TokenList(usage.Options):
    synopsis = "USER"

    def parseArgs(self, user: str) -> None:  # type: ignore[override]
        self["user"] = user


class TokenRevoke(usage.Options):
    synopsis = "USER TOKEN_ID"

    def parseArgs(self, user: str, token_id: str) -> None:  # type: ignore[override]
        self["user"], self["token_id"] = user, token_id


class TokenOptions(_ServerdirOptions):
    synopsis = "Usage: devpid token [--serverdir DIR] create|list|revoke ..."
    subCommands = [
        ["create", None, TokenCreate, "create an API token (printed once)"],
        ["list", None, TokenList, "list a user's tokens (never their secret)"],
        ["revoke", None, TokenRevoke, "revoke a token by its id"],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("say create, list or revoke")


def _open(serverdir: Path, cache_expiry: float) -> PrivateData:
    database = PrivateDatabase(serverdir / "private.sqlite")
    database.open()
    return PrivateData(database, default_cache_expiry=int(cache_expiry))


def _read_password(prompt: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(prompt)
        if getpass.getpass("again: ") != first:
            raise ConfigError("the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _run(program: str, options: usage.Options, argv: Sequence[str], action: Any) -> int:
    try:
        options.parseOptions(list(argv))
        return int(action(options))
    except usage.UsageError as e:
        print(f"{program}: error: {e} (see: {program} --help)", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, DatabaseError) as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 1
    except Refused as e:
        print(f"{program}: error: {e.message}", file=sys.stderr)
        return 1


def init_main(argv: Sequence[str]) -> int:
    def action(options: InitOptions) -> int:
        settings = options.settings(options["upstream"])
        settings.serverdir.mkdir(parents=True, exist_ok=True)
        data = _open(settings.serverdir, settings.cache_expiry)
        if data.users():
            raise ConfigError(f"{settings.serverdir} is already initialised")
        pwhash = options["root-passwd-hash"]
        if pwhash is not None and not looks_like_hash(pwhash):
            raise ConfigError("--root-passwd-hash must be an argon2 hash ($argon2id$...)")
        if pwhash is None:
            pwhash = hash_password(options["root-passwd"])
        mirror_url = None if options["no-root-pypi"] else settings.upstream
        if options["upstream"] is None and not options["no-root-pypi"]:
            remember_upstream(settings)
        initialize(data, pwhash, mirror_url, timestamp(time.time()))
        made = "root" + ("" if mirror_url is None else f" and root/pypi (mirroring {mirror_url})")
        print(f"devpid init: created {made} in {settings.serverdir}")
        return 0

    return _run("devpid init", InitOptions(), argv, action)


def passwd_main(argv: Sequence[str]) -> int:
    def action(options: PasswdOptions) -> int:
        settings = options.settings()
        data = _open(settings.serverdir, settings.cache_expiry)
        user = options["user"]
        if data.user(user) is None:
            raise ConfigError(f"no user '{user}' in {settings.serverdir}")
        password = _read_password(f"new password for {user}: ")
        data.set_password_hash(user, hash_password(password), "devpid passwd")
        print(f"devpid passwd: password of {user} changed")
        return 0

    return _run("devpid passwd", PasswdOptions(), argv, action)


def token_main(argv: Sequence[str]) -> int:
    def action(options: TokenOptions) -> int:
        settings = options.settings()
        data = _open(settings.serverdir, settings.cache_expiry)
        sub = options.subOptions
        user = sub["user"]
        if options.subCommand == "create":
            return _create_token(data, user, sub)
        if options.subCommand == "list":
            if data.user(user) is None:
                raise ConfigError(f"no user '{user}'")
            for token_id, record in data.tokens_of(user).items():
                indexes = ",".join(record.get("indexes") or []) or "all indexes"
                expires = time.strftime("%Y-%m-%d", time.gmtime(record.get("expires", 0)))
                print(f"{token_id}  {indexes}  expires {expires}  {record.get('description', '')}")
            return 0
        data.revoke_token(user, sub["token_id"], "devpid token")
        print(f"devpid token: revoked {sub['token_id']}")
        return 0

    return _run("devpid token", TokenOptions(), argv, action)


def _create_token(data: PrivateData, user: str, sub: usage.Options) -> int:
    try:
        lifetime = int(sub["expires-in"])
    except ValueError:
        raise ConfigError("--expires-in is a number of seconds") from None
    if not 0 < lifetime <= MAX_API_TOKEN_LIFETIME:
        raise ConfigError(f"--expires-in is seconds, from 1 to {MAX_API_TOKEN_LIFETIME} (a year)")
    token, _, _ = data.create_token(
        user, sub["indexes"], lifetime, sub["description"], "devpid token"
    )
    print(token.plaintext)
    print(f"(token id {token.token_id}; shown once, store it now)", file=sys.stderr)
    return 0
