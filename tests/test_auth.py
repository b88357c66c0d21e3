"""Unit tests for devpid.auth: in memory, with a Clock for time."""

from __future__ import annotations

import base64
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from devpid.auth.acl import ANONYMOUS, Action, Policy, Principal
from devpid.auth.credentials import Credentials, offered_credentials
from devpid.auth.passwords import (
    PasswordChecker,
    hash_password,
    looks_like_hash,
    verify_password,
)
from devpid.auth.secret import SecretFileError, load_or_create_secret
from devpid.auth.throttle import FailedLogins
from devpid.auth.tokens import (
    LOGIN_EXPIRATION,
    LoginTokens,
    api_token_digest,
    api_token_id,
    digests_equal,
    new_api_token,
)

PWHASH = hash_password("s3cret")


def result_of(d: Deferred[bool]) -> bool:
    out: list[bool] = []
    d.addCallback(out.append)
    assert out, "Deferred did not fire"
    return out[0]


# passwords


def test_hash_verify_roundtrip() -> None:
    assert looks_like_hash(PWHASH) and PWHASH.startswith("$argon2id$")
    assert "m=19456,t=2,p=1" in PWHASH
    assert verify_password(PWHASH, "s3cret")
    assert not verify_password(PWHASH, "wrong")


@pytest.mark.parametrize("bad", ["", "garbage", "$argon2id$v=19$m=1$x$y", "$2b$12$abc"])
def test_malformed_hash_is_false(bad: str) -> None:
    assert not verify_password(bad, "s3cret")
    assert not looks_like_hash(bad)


class CountingOffload:
    def __init__(self, defer: bool = False) -> None:
        self.calls = 0
        self.pending: list[tuple[Deferred[bool], Callable[[], bool]]] = []
        self.defer = defer

    def __call__(self, f: Callable[[], bool]) -> Deferred[bool]:
        self.calls += 1
        if self.defer:
            d: Deferred[bool] = Deferred()
            self.pending.append((d, f))
            return d
        return succeed(f())


def check(checker: PasswordChecker, user: str, password: str) -> Deferred[bool]:
    return Deferred.fromCoroutine(checker.check(user, PWHASH, password))


def test_checker_caches_and_expires() -> None:
    clock, offload = Clock(), CountingOffload()
    checker = PasswordChecker(offload, clock, ttl=300.0)
    assert result_of(check(checker, "alice", "s3cret"))
    assert result_of(check(checker, "alice", "s3cret"))
    assert not result_of(check(checker, "alice", "wrong"))
    assert not result_of(check(checker, "alice", "wrong"))
    assert offload.calls == 2
    clock.advance(301)
    assert result_of(check(checker, "alice", "s3cret"))
    assert offload.calls == 3
    checker.forget("alice")
    assert result_of(check(checker, "alice", "s3cret"))
    assert offload.calls == 4


def test_checker_shares_concurrent_verification() -> None:
    offload = CountingOffload(defer=True)
    checker = PasswordChecker(offload, Clock())
    first, second = check(checker, "bob", "s3cret"), check(checker, "bob", "s3cret")
    assert offload.calls == 1
    d, f = offload.pending[0]
    d.callback(f())
    assert result_of(first) and result_of(second)


def test_checker_never_stores_plain_password() -> None:
    checker = PasswordChecker(CountingOffload(), Clock())
    result_of(check(checker, "alice", "plain-text-pw"))
    assert "plain-text-pw" not in repr(checker._cache)


# secret


def test_secret_created_0600_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = load_or_create_secret(path)
    assert len(secret) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_secret(path) == secret
    assert os.listdir(tmp_path) == ["secret"]


def test_concurrent_creation_gives_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    results: list[bytes] = []
    barrier = threading.Barrier(8)

    def run() -> None:
        barrier.wait()
        results.append(load_or_create_secret(path))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1


@pytest.mark.parametrize("content", [b"", b"\n", b"abcd" * 8, b"not hex at all, not at all ok!!"])
def test_bad_secret_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(SecretFileError, match="secret"):
        load_or_create_secret(path)


# tokens


def test_login_token_roundtrip_and_expiry() -> None:
    clock = Clock()
    clock.advance(1_700_000_000)
    tokens = LoginTokens(b"k" * 32, clock)
    token = tokens.issue("alice")
    assert token.isascii() and ":" not in token
    assert token.startswith('["alice", [], true].')
    assert tokens.user_of(token) == "alice"
    clock.advance(LOGIN_EXPIRATION)
    assert tokens.user_of(token) == "alice"
    clock.advance(1)
    assert tokens.user_of(token) is None


def test_login_token_tampered_or_foreign() -> None:
    tokens = LoginTokens(b"k" * 32, Clock())
    token = tokens.issue("alice")
    assert tokens.user_of(token.replace("alice", "root")) is None
    assert tokens.user_of(token[:-2]) is None
    assert tokens.user_of("garbage") is None
    assert LoginTokens(b"x" * 32, Clock()).user_of(token) is None


def test_api_token_shape() -> None:
    token = new_api_token()
    assert len(token.token_id) == 12
    assert token.plaintext.startswith(f"devpid_{token.token_id}_")
    assert api_token_id(token.plaintext) == token.token_id
    assert api_token_digest(token.plaintext) == token.digest
    assert digests_equal(token.digest, api_token_digest(token.plaintext))
    assert not digests_equal(token.digest, api_token_digest(token.plaintext + "x"))
    assert api_token_id("s3cret") is None
    assert api_token_id(token.plaintext[:-1]) is None
    assert new_api_token().plaintext != token.plaintext


# credentials


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def test_credentials_precedence() -> None:
    found = offered_credentials(b64("alice:tok:en"), b"Basic " + b64("bob:pw"))
    assert found == [
        Credentials("alice", "tok:en", "x-devpi-auth"),
        Credentials("bob", "pw", "basic"),
    ]
    assert offered_credentials(None, b"Bearer " + b64("bob:pw")) == []
    assert offered_credentials(None, b"basic " + b64("__token__:x")) == [
        Credentials("__token__", "x", "basic")
    ]
    assert offered_credentials(None, b"Basic " + b64("root:")) == [Credentials("root", "", "basic")]
    latin = base64.b64encode("j\xf6rg:pw".encode("latin-1"))
    assert offered_credentials(latin, None) == [Credentials("j\xf6rg", "pw", "x-devpi-auth")]


@pytest.mark.parametrize("value", [b"!!!", b64("nocolon"), b64(":pw"), b64("u:" + "x" * 4096)])
def test_credentials_garbage_skipped(value: bytes) -> None:
    assert offered_credentials(value, b"Basic " + value) == []


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_credentials_never_raise(a: bytes, b: bytes) -> None:
    offered_credentials(a, b)
    offered_credentials(a, b"Basic " + b)


# throttle


def test_throttle_sequence_and_window() -> None:
    clock = Clock()
    throttle = FailedLogins(clock, free_failures=5, address_free_failures=5, window=300.0)
    for _ in range(5):
        assert throttle.retry_after("alice", "10.0.0.1") is None
        throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.1") is None
    waits = []
    for _ in range(4):
        throttle.failed("alice", "10.0.0.1")
        waits.append(throttle.retry_after("alice", "10.0.0.1"))
        clock.advance(waits[-1] or 0)
    assert waits == [1.0, 2.0, 4.0, 8.0]
    throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.2") == 16.0  # the user is blocked
    assert throttle.retry_after("mallory", "10.0.0.1") == 16.0  # the address is blocked
    assert throttle.retry_after("mallory", "10.0.0.2") is None
    clock.advance(16 + 300)
    throttle.failed("alice", "10.0.0.1")
    assert throttle.retry_after("alice", "10.0.0.1") is None  # forgotten after the window


def test_throttle_cap_success_and_max_keys() -> None:
    clock = Clock()
    throttle = FailedLogins(
        clock, free_failures=0, address_free_failures=0, max_delay=5.0, max_keys=4
    )
    for _ in range(10):
        throttle.failed("alice", "a")
    assert throttle.retry_after("alice", "b") == 5.0
    throttle.succeeded("alice", "a")
    assert throttle.retry_after("alice", "b") is None
    assert throttle.retry_after("bob", "a") == 5.0
    for n in range(4):
        throttle.failed(f"u{n}", f"addr{n}")
    assert len(throttle._records) <= 4


# acl

STAGE = {"type": "stage", "acl_upload": ["alice"], "acl_toxresult_upload": [":ANONYMOUS:"]}
MIRROR = {"type": "mirror"}
ALICE = Principal("alice")
BOB = Principal("bob", groups=("devs",))
ROOT = Principal("root")
POLICY = Policy()


def test_principals() -> None:
    assert ANONYMOUS.principals() == {":ANONYMOUS:"}
    assert not ANONYMOUS.authenticated
    assert BOB.principals() == {":ANONYMOUS:", ":AUTHENTICATED:", "bob", ":devs"}


@pytest.mark.parametrize("who", [ANONYMOUS, ALICE, ROOT])
def test_everyone_may_login_read_and_create_users(who: Principal) -> None:
    assert POLICY.permits(who, Action.USER_LOGIN)
    assert POLICY.permits(who, Action.PKG_READ, index="alice/dev", index_config=STAGE)
    assert POLICY.permits(who, Action.USER_CREATE, user="new")


@pytest.mark.parametrize(
    ("action", "who", "target", "allowed"),
    [
        (Action.USER_MODIFY, ALICE, "alice", True),
        (Action.USER_MODIFY, BOB, "alice", False),
        (Action.USER_MODIFY, ROOT, "alice", True),
        (Action.USER_MODIFY, ANONYMOUS, "alice", False),
        (Action.USER_MODIFY_PASSWORD, ALICE, "alice", True),
        (Action.USER_MODIFY_PASSWORD, BOB, "alice", False),
        (Action.USER_DELETE, ALICE, "alice", True),
        (Action.USER_DELETE, BOB, "alice", False),
        (Action.USER_DELETE, ROOT, "alice", True),
        (Action.USER_DELETE, ROOT, "root", False),
        (Action.USER_DELETE, ANONYMOUS, "alice", False),
        (Action.INDEX_CREATE, ALICE, "alice", True),
        (Action.INDEX_CREATE, BOB, "alice", False),
        (Action.INDEX_CREATE, ROOT, "alice", True),
        (Action.TOKEN_MANAGE, ALICE, "alice", True),
        (Action.TOKEN_MANAGE, BOB, "alice", False),
        (Action.TOKEN_MANAGE, ROOT, "alice", True),
    ],
)
def test_user_actions(action: Action, who: Principal, target: str, allowed: bool) -> None:
    assert POLICY.permits(who, action, user=target) is allowed


@pytest.mark.parametrize(
    ("action", "who", "allowed"),
    [
        (Action.INDEX_MODIFY, ALICE, True),
        (Action.INDEX_MODIFY, BOB, False),
        (Action.INDEX_MODIFY, ROOT, True),
        (Action.INDEX_DELETE, ANONYMOUS, False),
        (Action.UPLOAD, ALICE, True),
        (Action.UPLOAD, BOB, False),
        (Action.UPLOAD, ROOT, False),  # root is not in acl_upload
        (Action.TOXRESULT_UPLOAD, ANONYMOUS, True),
        (Action.DEL_PROJECT, ALICE, True),
        (Action.DEL_ENTRY, ROOT, True),
        (Action.DEL_VERDATA, BOB, False),
    ],
)
def test_index_actions(action: Action, who: Principal, allowed: bool) -> None:
    assert POLICY.permits(who, action, index="alice/dev", index_config=STAGE) is allowed


def test_acl_upload_special_principals() -> None:
    anyone = {"type": "stage", "acl_upload": [":ANONYMOUS:"]}
    authed = {"type": "stage", "acl_upload": [":authenticated:"]}
    group = {"type": "stage", "acl_upload": [":devs"]}
    assert POLICY.permits(ANONYMOUS, Action.UPLOAD, index="alice/dev", index_config=anyone)
    assert not POLICY.permits(ANONYMOUS, Action.UPLOAD, index="alice/dev", index_config=authed)
    assert POLICY.permits(BOB, Action.UPLOAD, index="alice/dev", index_config=authed)
    assert POLICY.permits(BOB, Action.UPLOAD, index="alice/dev", index_config=group)
    assert not POLICY.permits(ALICE, Action.UPLOAD, index="alice/dev", index_config=group)


def test_mirror_and_missing_index() -> None:
    mirror = {"type": "mirror", "acl_upload": [":ANONYMOUS:"]}
    assert not POLICY.permits(ROOT, Action.UPLOAD, index="root/pypi", index_config=mirror)
    assert POLICY.permits(ROOT, Action.INDEX_MODIFY, index="root/pypi", index_config=MIRROR)
    assert not POLICY.permits(ALICE, Action.INDEX_MODIFY, index="alice/nope", index_config=None)
    assert not POLICY.permits(ROOT, Action.INDEX_DELETE, index="alice/nope", index_config=None)


def test_restrict_modify() -> None:
    policy = Policy(restrict_modify=frozenset({"admin", ":ops"}))
    admin, op = Principal("admin"), Principal("carol", groups=("ops",))
    assert not policy.permits(ANONYMOUS, Action.USER_CREATE, user="x")
    assert not policy.permits(ALICE, Action.USER_CREATE, user="x")
    assert policy.permits(admin, Action.USER_CREATE, user="x")
    assert policy.permits(op, Action.USER_CREATE, user="x")
    assert policy.permits(ROOT, Action.USER_CREATE, user="x")
    assert not policy.permits(ALICE, Action.USER_MODIFY, user="alice")
    assert policy.permits(ALICE, Action.USER_MODIFY_PASSWORD, user="alice")
    assert not policy.permits(ALICE, Action.INDEX_CREATE, user="alice")
    assert policy.permits(admin, Action.INDEX_CREATE, user="alice")
    assert not policy.permits(ALICE, Action.USER_DELETE, user="alice")
    assert policy.permits(admin, Action.USER_DELETE, user="alice")
    assert not policy.permits(admin, Action.USER_DELETE, user="admin")
    assert not policy.permits(admin, Action.USER_DELETE, user="root")
    ix = {"index": "alice/dev", "index_config": STAGE}
    assert not policy.permits(ALICE, Action.INDEX_MODIFY, **ix)  # type: ignore[arg-type]
    assert policy.permits(op, Action.INDEX_DELETE, **ix)  # type: ignore[arg-type]
    assert policy.permits(ALICE, Action.UPLOAD, **ix)  # type: ignore[arg-type]


def test_token_limited_principal() -> None:
    limited = Principal("alice", token_indexes=frozenset({"alice/dev"}))
    other = {"type": "stage", "acl_upload": ["alice"]}
    assert POLICY.permits(limited, Action.UPLOAD, index="alice/dev", index_config=STAGE)
    assert POLICY.permits(limited, Action.DEL_ENTRY, index="alice/dev", index_config=STAGE)
    assert not POLICY.permits(limited, Action.UPLOAD, index="alice/prod", index_config=other)
    assert POLICY.permits(limited, Action.PKG_READ, index="alice/prod", index_config=other)
    assert POLICY.permits(limited, Action.USER_LOGIN)
    for action in (Action.USER_MODIFY, Action.INDEX_CREATE, Action.TOKEN_MANAGE):
        assert not POLICY.permits(limited, action, user="alice")
    assert not POLICY.permits(limited, Action.INDEX_MODIFY, index="alice/dev", index_config=STAGE)
    root_limited = Principal("root", token_indexes=frozenset({"root/x"}))
    assert not POLICY.permits(root_limited, Action.DEL_ENTRY, index="alice/dev", index_config=STAGE)


def test_denial_status() -> None:
    assert POLICY.denial_status(ANONYMOUS, Action.UPLOAD) == 401
    assert POLICY.denial_status(ALICE, Action.UPLOAD) == 403
    assert POLICY.denial_status(ANONYMOUS, Action.INDEX_MODIFY) == 403
    assert POLICY.denial_status(ANONYMOUS, Action.USER_DELETE) == 403


def test_a_shared_address_gets_more_failures_than_a_user() -> None:
    clock = Clock()
    throttle = FailedLogins(clock)
    for n in range(6):
        throttle.failed(f"user{n}", "10.0.0.9")  # one failure each, from one address
    assert throttle.retry_after("someone-else", "10.0.0.9") is None
    for n in range(30):
        throttle.failed(f"other{n}", "10.0.0.9")
    assert throttle.retry_after("someone-else", "10.0.0.9") is not None


def test_concurrent_guesses_are_checked_one_at_a_time(tmp_path: Path) -> None:
    """Guesses sent at once cannot all be in flight before the first failure counts."""
    from twisted.internet.defer import Deferred, ensureDeferred

    from devpid.auth.authenticate import Authenticator
    from devpid.private.data import PrivateData
    from devpid.private.database import PrivateDatabase
    from devpid.private.init import initialize

    database = PrivateDatabase(tmp_path / "private.sqlite")
    database.open()
    data = PrivateData(database)
    initialize(data, hash_password("right"), None, "x")
    clock = Clock()
    pending: list[tuple[Deferred[bool], Callable[[], bool]]] = []

    def offload(function: Callable[[], bool]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        pending.append((d, function))
        return d

    authenticator = Authenticator(
        data,
        LoginTokens(b"k" * 32, clock),
        PasswordChecker(offload, clock),
        FailedLogins(clock),
        clock,
    )
    header = lambda secret: b"Basic " + base64.b64encode(b"root:" + secret.encode())  # noqa: E731
    results = [
        ensureDeferred(authenticator.principal(None, header(f"guess{n}"), "10.0.0.1"))
        for n in range(8)
    ]
    right = ensureDeferred(authenticator.principal(None, header("right"), "10.0.0.1"))
    assert len(pending) == 1  # one check in flight; the others wait their turn
    while pending:
        d, function = pending.pop(0)
        d.callback(function())
    outcomes = [r.result for r in results]
    assert all(p.user is None for p in outcomes)
    assert right.result.user is None  # throttled by the failures before it
    database.close()
