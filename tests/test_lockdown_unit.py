"""The lockdown in memory: the policy's reads, the gate's paths, ``/+authcheck``, the web
login page and its cookie, on the service ``twistd devpid`` runs (a memory reactor).

Two servers: one with ``--require-auth``, one without (an index's ``acl_pkg_read``
alone closes it).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest

from devpid.auth import passwords
from devpid.auth.acl import ANONYMOUS, Action, Policy, Principal
from devpid.auth.lockdown import decoded_path, index_of, is_open
from devpid.auth.remembered import RememberedPrincipals
from devpid.cli.gen_config import Options as GenConfigOptions
from devpid.cli.gen_config import deployment_from_options
from devpid.config import ConfigError, build_settings
from devpid.ops.genconfig import Deployment, render_nginx, render_supervisord
from devpid.routes.authcheck import original_target
from devpid.web.login import safe_goto
from tests.fixtures.app import MemoryDevpid, RawAnswer, parse_response

BROWSER = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
CHALLENGE = 'Basic realm="pypi"'


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


ROOT = basic("root", "")
ALICE = basic("alice", "alicepw")
BOB = basic("bob", "bobpw")


def call(
    server: MemoryDevpid,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawAnswer:
    lines = [f"{method} {path} HTTP/1.0", "Host: localhost", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    exchange = server.send("\r\n".join(lines).encode("utf-8") + b"\r\n\r\n" + body)
    assert exchange.closed, exchange.raw[:300]
    return parse_response(exchange.raw)


def json_call(
    server: MemoryDevpid, method: str, path: str, document: Any, auth: str | None = None
) -> RawAnswer:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = auth
    return call(server, method, path, headers, json.dumps(document).encode())


def setup_users(server: MemoryDevpid) -> str:
    """alice (with alice/dev, alice/secret read by alice only, alice/derived on it) and
    bob; an API token of bob's, returned."""
    for user in ("alice", "bob"):
        made = json_call(server, "PUT", f"/{user}", {"password": f"{user}pw"}, ROOT)
        assert made.code == 201, made.raw
    for name, config in (
        ("dev", {"bases": ""}),
        ("secret", {"bases": "", "acl_pkg_read": "alice"}),
        ("derived", {"bases": "alice/secret"}),
    ):
        made = json_call(server, "PUT", f"/alice/{name}", config, ALICE)
        assert made.code == 200, made.raw
    made = json_call(server, "POST", "/bob/+tokens", {"description": "t"}, BOB)
    assert made.code == 201, made.raw
    return str(json.loads(made.body)["result"]["token"])


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemoryDevpid, str]]:
    server = MemoryDevpid.start(
        tmp_path_factory.mktemp("locked") / "serverdir", **{"require-auth": True}
    )
    try:
        yield server, setup_users(server)
    finally:
        server.stop()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MemoryDevpid, str]]:
    server = MemoryDevpid.start(tmp_path_factory.mktemp("open") / "serverdir")
    try:
        yield server, setup_users(server)
    finally:
        server.stop()


# -- the policy -----------------------------------------------------------------------

CLOSED = {"type": "stage", "acl_pkg_read": ["alice", ":readers"]}


@pytest.mark.parametrize(
    ("policy", "who", "config", "allowed"),
    [
        (Policy(), ANONYMOUS, None, True),
        (Policy(), ANONYMOUS, {"type": "stage"}, True),
        (Policy(), ANONYMOUS, CLOSED, False),
        (Policy(), Principal("bob"), CLOSED, False),
        (Policy(), Principal("alice"), CLOSED, True),
        (Policy(), Principal("carol", groups=("readers",)), CLOSED, True),
        (Policy(), Principal("root"), CLOSED, True),
        (Policy(), Principal("alice", token_indexes=frozenset({"x/y"})), CLOSED, True),
        (Policy(), Principal("bob"), {"acl_pkg_read": [":authenticated:"]}, True),
        (Policy(), ANONYMOUS, {"acl_pkg_read": [":authenticated:"]}, False),
        (Policy(), ANONYMOUS, {"acl_pkg_read": []}, False),
        (Policy(require_auth=True), ANONYMOUS, None, False),
        (Policy(require_auth=True), ANONYMOUS, {"type": "mirror"}, False),
        (Policy(require_auth=True), Principal("bob"), None, True),
        (Policy(require_auth=True), Principal("bob"), {"type": "mirror"}, True),
    ],
)
def test_pkg_read(policy: Policy, who: Principal, config: Any, allowed: bool) -> None:
    index = "alice/x" if config is not None else None
    assert policy.permits(who, Action.PKG_READ, index=index, index_config=config) is allowed


def test_a_refused_read_is_401_for_anonymous_and_403_for_a_user() -> None:
    assert Policy().denial_status(ANONYMOUS, Action.PKG_READ) == 401
    assert Policy().denial_status(Principal("bob"), Action.PKG_READ) == 403


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path"),
    [
        (b"/root/pypi/+simple/", "/root/pypi/+simple/"),
        (b"/root/pypi/%2Bsimple/x/", "/root/pypi/+simple/x/"),
        (b"//+api", "/+api"),
        (b"/%2B%2Bapi", "/++api"),
        (b"/\xff", None),
        (b"/%ff", None),
        (b"/a%00b", None),
        (b"relative", None),
    ],
)
def test_decoded_path(raw: bytes, path: str | None) -> None:
    assert decoded_path(raw) == path


@pytest.mark.parametrize(
    ("path", "open_"),
    [
        ("/+login", True),
        ("/+logout", True),
        ("/+api", True),
        ("/alice/+api", True),
        ("/alice/dev/+api", True),
        ("/+authcheck", True),
        ("/+static/0.1/devpid.css", True),
        ("/+replica/changes", True),
        ("/+status", False),
        ("/+metrics", False),
        ("/+api/x", False),
        ("/alice/dev/x/+api", False),
        ("/+static", False),
        ("/+login/x", False),
        ("/", False),
        (None, False),
    ],
)
def test_open_paths(path: str | None, open_: bool) -> None:
    assert is_open(path) is open_


@pytest.mark.parametrize(
    ("path", "index"),
    [
        ("/alice/dev", "alice/dev"),
        ("/alice/dev/", "alice/dev"),
        ("/root/pypi/+f/abc/def/x.whl", "root/pypi"),
        ("/alice/dev/hello/1.0/+doc/index.html", "alice/dev"),
        ("/alice", None),
        ("/alice/", None),
        ("/alice/+tokens", None),
        ("/+status", None),
        ("/", None),
    ],
)
def test_index_of(path: str, index: str | None) -> None:
    assert index_of(path) == index


@pytest.mark.parametrize(
    ("uri", "prefix", "path", "args"),
    [
        (b"/root/pypi/+simple/", "", "/root/pypi/+simple/", {}),
        (b"/+status?check=1", "", "/+status", {b"check": [b"1"]}),
        (b"/pypi/root/pypi/+simple/", "/pypi", "/root/pypi/+simple/", {}),
        (b"/pypi", "/pypi", "/", {}),
        (b"/pypix/root", "/pypi", None, {}),
        (b"/root/pypi", "/pypi", None, {}),
        (b"http://h:1/root/pypi/?a=b", "", "/root/pypi/", {b"a": [b"b"]}),
        (b"http://[::1/x", "", None, {}),
        (b"/%ff", "", None, {}),
    ],
)
def test_original_target(uri: bytes, prefix: str, path: str | None, args: Any) -> None:
    found_path, found_args = original_target(uri, prefix)
    assert found_path == path
    if path is not None:
        assert found_args == args


@pytest.mark.parametrize(
    ("goto", "safe"),
    [
        ("/alice/dev", "/alice/dev"),
        ("/alice/dev?x=1", "/alice/dev?x=1"),
        ("//evil.example/x", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("/a b", "/"),
        ("/a\r\nSet-Cookie: x", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_safe_goto(goto: str | None, safe: str) -> None:
    assert safe_goto(goto) == safe


# -- the gate, with --require-auth ------------------------------------------------------

READS = [
    "/",
    "/root",
    "/root/pypi",
    "/root/pypi/",
    "/root/pypi/+simple/",
    "/root/pypi/+simple/hello/",
    "/root/pypi/+f/abc/0123456789abc/hello-1.0.tar.gz",
    "/alice/dev/hello/1.0/+doc/index.html",
    "/alice/dev/+findlinks",
    "/+search?query=hello",
    "/+status",
    "/+metrics",
    "/alice/+tokens",
]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("accept", ["", "application/json", BROWSER])
def test_anonymous_reads_get_401_with_basic_challenge(
    locked: tuple[MemoryDevpid, str], path: str, accept: str
) -> None:
    server, _ = locked
    answer = call(server, "GET", path, {"Accept": accept} if accept else {})
    assert answer.code == 401, answer.raw[:500]
    assert answer.headers["www-authenticate"] == CHALLENGE
    if accept == BROWSER:
        assert b'action="http://localhost/+login"' in answer.body
        assert "default-src 'none'" in answer.headers["content-security-policy"]
    elif accept == "application/json":
        assert json.loads(answer.body) == {"message": "authentication required"}


@pytest.mark.parametrize("path", ["/root/pypi", "/alice/dev/+simple/", "/+status"])
def test_devpi_client_gets_403_not_401(locked: tuple[MemoryDevpid, str], path: str) -> None:
    server, _ = locked
    answer = call(server, "GET", path, {"User-Agent": "devpi-client/7.3.0 (py3.11; linux)"})
    assert answer.code == 403
    assert "www-authenticate" not in answer.headers


@pytest.mark.parametrize(
    ("method", "path", "document"),
    [
        ("PUT", "/mallory", {"password": "x"}),
        ("PUT", "/alice/new", {}),
        ("PATCH", "/alice/dev", {}),
        ("DELETE", "/alice/dev", None),
    ],
)
def test_anonymous_writes_are_refused_too(
    locked: tuple[MemoryDevpid, str], method: str, path: str, document: Any
) -> None:
    server, _ = locked
    answer = json_call(server, method, path, document)
    assert answer.code == 401, answer.raw[:300]
    assert call(server, "GET", "/mallory", {"Authorization": ROOT}).code == 404


def test_open_paths_need_nothing(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    for path in ("/+api", "/alice/+api", "/alice/dev/+api"):
        answer = call(server, "GET", path, {"Accept": "application/json"})
        assert answer.code == 200, (path, answer.raw[:300])
    assert call(server, "GET", "/+login", {"Accept": BROWSER}).code == 200
    login = json_call(server, "POST", "/+login", {"user": "alice", "password": "alicepw"})
    assert login.code == 200 and json.loads(login.body)["result"]["password"]


def test_the_health_check_says_healthy_and_nothing_else(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    answer = call(server, "GET", "/+status?check=1")
    assert answer.code == 200
    assert json.loads(answer.body) == {"healthy": True}
    full = call(server, "GET", "/+status?check=1", {"Authorization": ALICE})
    assert full.code == 200 and "serverdir" in json.loads(full.body)
    assert call(server, "GET", "/+status?check=0").code == 401


@pytest.mark.parametrize(
    "credentials",
    ["password", "token", "token-as-user", "login-token", "x-devpi-auth", "cookie"],
)
def test_every_kind_of_credentials_opens_the_server(
    locked: tuple[MemoryDevpid, str], credentials: str
) -> None:
    server, token = locked
    login = json_call(server, "POST", "/+login", {"user": "bob", "password": "bobpw"})
    login_token = json.loads(login.body)["result"]["password"]
    pair = base64.b64encode(f"bob:{login_token}".encode()).decode()
    headers = {
        "password": {"Authorization": BOB},
        "token": {"Authorization": basic("__token__", token)},
        "token-as-user": {"Authorization": basic("bob", token)},
        "login-token": {"Authorization": basic("bob", login_token)},
        "x-devpi-auth": {"X-Devpi-Auth": pair},
        "cookie": {"Cookie": f"devpid_auth={pair}"},
    }[credentials]
    answer = call(server, "GET", "/root/pypi", {"Accept": "application/json", **headers})
    assert answer.code == 200, answer.raw[:300]
    assert call(server, "GET", "/alice/dev/+simple/", headers).code == 200


@pytest.mark.parametrize(
    "authorization",
    [
        basic("bob", "wrong"),
        basic("nobody", "x"),
        basic("__token__", "devpid_AAAAAAAAAAAA_" + "A" * 43),
        "Basic !!!",
        "Bearer abc",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
)
def test_bad_credentials_are_anonymous(
    locked: tuple[MemoryDevpid, str], authorization: str
) -> None:
    server, _ = locked
    answer = call(server, "GET", "/root/pypi/+simple/", {"Authorization": authorization})
    assert answer.code == 401


def test_a_password_costs_argon2_once(
    locked: tuple[MemoryDevpid, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = locked
    json_call(server, "PATCH", "/bob", {"password": "fresh-pw"}, BOB)
    calls = []
    verify = passwords.verify_password

    def counted(*args: Any) -> bool:
        calls.append(args[0])
        return verify(*args)

    monkeypatch.setattr(passwords, "verify_password", counted)
    try:
        for _ in range(20):
            answer = call(
                server, "GET", "/alice/dev/+simple/", {"Authorization": basic("bob", "fresh-pw")}
            )
            assert answer.code == 200
        assert len(calls) == 1
    finally:
        json_call(server, "PATCH", "/bob", {"password": "bobpw"}, basic("bob", "fresh-pw"))


# -- acl_pkg_read ---------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["locked", "open_server"])
def test_acl_pkg_read_closes_an_index_and_what_is_based_on_it(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server, token = request.getfixturevalue(fixture)
    for path in ("/alice/secret", "/alice/secret/+simple/", "/alice/derived/+simple/x/"):
        for auth, code in ((ALICE, 200), (ROOT, 200), (BOB, 403), (basic("__token__", token), 403)):
            answer = call(server, "GET", path, {"Authorization": auth})
            if code == 200:
                assert answer.code in (200, 404), (path, answer.raw[:300])  # no project x
            else:
                assert answer.code == 403, (path, answer.raw[:300])
        anonymous = call(server, "GET", path)
        assert anonymous.code == 401 and anonymous.headers["www-authenticate"] == CHALLENGE
    refused = call(
        server, "GET", "/alice/derived", {"Authorization": BOB, "Accept": "application/json"}
    )
    assert (
        json.loads(refused.body)["message"]
        == "no permission to read alice/secret, a base of alice/derived"
    )


def test_without_require_auth_anonymous_reads_the_rest(
    open_server: tuple[MemoryDevpid, str],
) -> None:
    server, _ = open_server
    for path in ("/", "/root/pypi", "/alice/dev/+simple/", "/+status", "/alice"):
        assert call(server, "GET", path).code == 200, path
    # writes of anonymous go to the routes' own checks, as before
    assert json_call(server, "PUT", "/carol", {"password": "carolpw"}).code == 201


# -- /+authcheck ---------------------------------------------------------------------------


def authcheck(server: MemoryDevpid, uri: str | None, **headers: str) -> RawAnswer:
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if uri is not None:
        sent["X-Original-URI"] = uri
    return call(server, "GET", "/+authcheck", sent)


@pytest.mark.parametrize(
    ("uri", "auth", "code"),
    [
        ("/root/pypi/+f/abc/0123456789abc/hello-1.0.tar.gz", None, 401),
        ("/root/pypi/+f/abc/0123456789abc/hello-1.0.tar.gz", BOB, 200),
        ("/root/pypi/+simple/hello/", ROOT, 200),
        ("/alice/secret/+simple/", BOB, 403),
        ("/alice/secret/+simple/", ALICE, 200),
        ("/+status?check=1", None, 200),
        ("/+status", None, 401),
        ("/+login", None, 200),
        ("/+api", None, 200),
        ("/+static/x.css", None, 200),
        ("/%ff", None, 401),
        ("/%ff", BOB, 200),
    ],
)
def test_authcheck(locked: tuple[MemoryDevpid, str], uri: str, auth: str | None, code: int) -> None:
    server, _ = locked
    answer = authcheck(server, uri, **({"Authorization": auth} if auth else {}))
    assert answer.code == code, answer.raw[:300]
    if code == 401:
        assert answer.headers["www-authenticate"] == CHALLENGE


def test_authcheck_methods_prefix_and_bad_headers(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    devpi = authcheck(server, "/root/pypi", User_Agent="devpi-client/7.3.0")
    assert devpi.code == 403
    behind = authcheck(server, "/pypi/+status?check=1", X_Outside_URL="http://h/pypi")
    assert behind.code == 200
    outside = authcheck(
        server, "/other/root/pypi/", X_Outside_URL="http://h/pypi", Authorization=BOB
    )
    assert outside.code == 200  # not devpid's path: nothing is open, but bob may
    assert authcheck(server, "/other/+api", X_Outside_URL="http://h/pypi").code == 401
    assert authcheck(server, None).code == 400
    assert authcheck(server, "/x", X_Original_Method="get").code == 400
    write = authcheck(server, "/alice/dev/", X_Original_Method="POST", Authorization=BOB)
    assert write.code == 200  # the upload route checks acl_upload itself


def test_authcheck_without_require_auth(open_server: tuple[MemoryDevpid, str]) -> None:
    server, _ = open_server
    assert authcheck(server, "/root/pypi/+simple/").code == 200
    assert authcheck(server, "/alice/secret/+simple/").code == 401
    assert authcheck(server, "/alice/secret/+simple/", Authorization=BOB).code == 403
    assert authcheck(server, "/alice/secret/+simple/", Authorization=ALICE).code == 200


# -- the web login page --------------------------------------------------------------------

_TOKEN = re.compile(rb'name="csrf_token" value="([0-9a-f]+)"')


def cookies_of(answer: RawAnswer) -> dict[str, str]:
    found = {}
    for line in answer.raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n"):
        if line.lower().startswith("set-cookie:"):
            name, _, rest = line.partition(":")[2].strip().partition("=")
            found[name] = rest
    return found


def login_form(server: MemoryDevpid) -> tuple[str, str]:
    """(the csrf cookie, the form's token) of a fresh login page."""
    page = call(server, "GET", "/+login?goto=/alice/dev", {"Accept": BROWSER})
    assert page.code == 200
    assert b'name="goto" value="/alice/dev"' in page.body
    match = _TOKEN.search(page.body)
    assert match is not None
    cookie = cookies_of(page)["devpid_csrf"].split(";")[0]
    return cookie, match.group(1).decode()


def post_form(
    server: MemoryDevpid, path: str, fields: dict[str, str], cookie: str, **headers: str
) -> RawAnswer:
    sent = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": cookie,
        "Accept": BROWSER,
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    return call(server, "POST", path, sent, urlencode(fields).encode())


def test_login_page_sets_a_strict_cookie_that_reads_but_does_not_write(
    locked: tuple[MemoryDevpid, str],
) -> None:
    server, _ = locked
    csrf, token = login_form(server)
    fields = {"csrf_token": token, "username": "alice", "password": "alicepw", "goto": "/alice/dev"}
    done = post_form(server, "/+login", fields, f"devpid_csrf={csrf}")
    assert done.code == 303, done.raw[:500]
    assert done.headers["location"] == "http://localhost/alice/dev"
    set_cookie = cookies_of(done)["devpid_auth"]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie
    assert "Max-Age=36000" in set_cookie
    cookie = "devpid_auth=" + set_cookie.split(";")[0]
    page = call(server, "GET", "/alice/secret", {"Accept": BROWSER, "Cookie": cookie})
    assert page.code == 200, page.raw[:300]
    shown = call(server, "GET", "/+login", {"Accept": BROWSER, "Cookie": cookie})
    assert b"Logged in as <strong>alice</strong>" in shown.body
    # a write with only the cookie: not from this site's pages, so anonymous
    change = call(
        server, "PATCH", "/alice/dev", {"Cookie": cookie, "Content-Type": "application/json"}, b"{}"
    )
    assert change.code == 401
    same = call(
        server,
        "PATCH",
        "/alice/dev",
        {"Cookie": cookie, "Content-Type": "application/json", "Sec-Fetch-Site": "same-origin"},
        b'{"title": "from the browser"}',
    )
    assert same.code == 200, same.raw[:300]
    # logging out expires the cookie
    out = post_form(server, "/+logout", {"csrf_token": token}, f"devpid_csrf={csrf}; {cookie}")
    assert out.code == 303 and out.headers["location"] == "http://localhost/+login"
    assert "Max-Age=0" in cookies_of(out)["devpid_auth"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"csrf_token": "0" * 64}, 403),
        ({"csrf_token": ""}, 403),
        ({"password": "wrong"}, 401),
        ({"username": "nobody"}, 401),
        ({"username": ""}, 400),
        ({"username": "a:b"}, 400),
        ({"username": "x" * 5000}, 400),
    ],
)
def test_login_form_refusals(
    locked: tuple[MemoryDevpid, str], change: dict[str, str], code: int
) -> None:
    server, _ = locked
    csrf, token = login_form(server)
    fields = {"csrf_token": token, "username": "alice", "password": "alicepw", **change}
    answer = post_form(server, "/+login", fields, f"devpid_csrf={csrf}")
    assert answer.code == code, answer.raw[:500]
    assert "devpid_auth" not in cookies_of(answer)
    assert answer.headers["content-type"].startswith("text/html")


def test_login_form_from_another_site_is_refused(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    csrf, token = login_form(server)
    fields = {"csrf_token": token, "username": "alice", "password": "alicepw"}
    answer = post_form(
        server, "/+login", fields, f"devpid_csrf={csrf}", Sec_Fetch_Site="cross-site"
    )
    assert answer.code == 403
    assert "devpid_auth" not in cookies_of(answer)


def test_login_page_escapes_what_it_echoes(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    answer = call(server, "GET", '/<b>"x?goto=/"><script>', {"Accept": BROWSER})
    assert answer.code == 401
    assert b"<script>" not in answer.body and b"<b>" not in answer.body


# -- remembered principals ---------------------------------------------------------------


def test_remembered_principals_keep_successes_per_serial_and_ttl() -> None:
    now, serial = [100.0], [7]
    memory = RememberedPrincipals(lambda: now[0], lambda: serial[0], ttl=10.0, max_entries=2)
    assert memory.key(None, None, None) is None
    key = memory.key(b"Basic abc", None, None)
    assert key is not None and key != memory.key(None, b"Basic abc", None)
    assert b"abc" not in key
    memory.put(key, ANONYMOUS)
    assert memory.get(key) is None  # failures are never kept
    memory.put(key, Principal("alice"))
    assert memory.get(key) == Principal("alice")
    serial[0] = 8
    assert memory.get(key) is None  # the private data moved: found again
    memory.put(key, Principal("alice"))
    now[0] = 110.0
    assert memory.get(key) is None  # too old
    for n in range(3):
        other = memory.key(b"%d" % n)
        assert other is not None
        memory.put(other, Principal(f"u{n}"))
    assert len(memory._entries) == 2


def test_a_revoked_token_and_a_changed_password_stop_at_once(
    locked: tuple[MemoryDevpid, str],
) -> None:
    server, _ = locked
    made = json_call(server, "POST", "/bob/+tokens", {"description": "short"}, BOB)
    result = json.loads(made.body)["result"]
    token = basic("__token__", result["token"])
    for _ in range(3):
        assert call(server, "GET", "/alice/dev/+simple/", {"Authorization": token}).code == 200
    revoked = call(server, "DELETE", f"/bob/+tokens/{result['id']}", {"Authorization": BOB})
    assert revoked.code == 200, revoked.raw[:300]
    assert call(server, "GET", "/alice/dev/+simple/", {"Authorization": token}).code == 401
    fresh = basic("bob", "changed-pw")
    assert json_call(server, "PATCH", "/bob", {"password": "changed-pw"}, BOB).code == 200
    try:
        assert call(server, "GET", "/alice/dev/+simple/", {"Authorization": BOB}).code == 401
        assert call(server, "GET", "/alice/dev/+simple/", {"Authorization": fresh}).code == 200
    finally:
        assert json_call(server, "PATCH", "/bob", {"password": "bobpw"}, fresh).code == 200


def test_require_auth_setting() -> None:
    given = {"upstream": "http://127.0.0.1:1/simple/", "serverdir": "/tmp/devpid-none"}
    assert build_settings(given).require_auth is False
    assert build_settings(given, {"require-auth": "yes"}).require_auth is True
    assert build_settings({**given, "require-auth": True}, {"require-auth": "no"}).require_auth
    with pytest.raises(ConfigError, match="require-auth"):
        build_settings(given, {"require-auth": "maybe"})


# -- gen-config --------------------------------------------------------------------------


def test_gen_config_asks_devpid_before_every_request_only_with_require_auth() -> None:
    base = Deployment(twistd=("twistd",), serverdir="/srv/devpid", user="devpid", workers=1)
    plain = render_nginx(base)
    assert "auth_request" not in plain and "--require-auth" not in render_supervisord(base)
    locked = attrs.evolve(base, require_auth=True, path_prefix="/pypi")
    conf = render_nginx(locked)
    server_level = conf.index("auth_request /+devpid-authcheck;")
    assert server_level < conf.index("location ~ ^/pypi(?<devpid_file>")
    block = conf[conf.index("location = /+devpid-authcheck {") :]
    block = block[: block.index("}")]
    for line in (
        "internal;",
        "proxy_pass http://devpid/+authcheck;",
        "proxy_pass_request_body off;",
        "proxy_set_header X-Original-URI $request_uri;",
        "proxy_set_header X-Original-Method $request_method;",
        "proxy_set_header X-Outside-URL $scheme://$http_host/pypi;",
    ):
        assert line in block
    assert "--require-auth" in render_supervisord(locked)
    options = GenConfigOptions()
    options.parseOptions(["--serverdir", "/srv/devpid", "--workers", "1", "--require-auth"])
    assert deployment_from_options(options).require_auth
    refused = GenConfigOptions()
    refused.parseOptions(["--serverdir", "/srv/devpid", "--workers", "1", "--", "--require-auth"])
    with pytest.raises(ConfigError, match="give --require-auth to gen-config itself"):
        deployment_from_options(refused)


def test_login_page_takes_devpi_lockdowns_goto_url(locked: tuple[MemoryDevpid, str]) -> None:
    server, _ = locked
    page = call(server, "GET", "/+login?goto_url=/root/pypi/%2Bsimple/", {"Accept": BROWSER})
    assert b'name="goto" value="/root/pypi/+simple/"' in page.body
    evil = call(server, "GET", "/+login?goto_url=//evil.example/", {"Accept": BROWSER})
    assert b'name="goto" value="/"' in evil.body


def _register(server: MemoryDevpid, index: str, name: str) -> None:
    """A version's metadata alone (``:action=submit``), as setup.py register sent it."""
    boundary = "lockdown-boundary"
    fields = {":action": "submit", "name": name, "version": "1.0", "summary": "hidden things"}
    body = (
        "".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'
            for key, value in fields.items()
        )
        + f"--{boundary}--\r\n"
    )
    headers = {
        "Authorization": ALICE,
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    answer = call(server, "POST", f"/{index}/", headers, body.encode())
    assert answer.code == 200, answer.raw[:300]


@pytest.mark.parametrize("fixture", ["locked", "open_server"])
def test_search_leaves_out_the_indexes_one_may_not_read(
    request: pytest.FixtureRequest, fixture: str
) -> None:
    server, _ = request.getfixturevalue(fixture)
    _register(server, "alice/secret", "lockdown-hidden")
    _register(server, "alice/dev", "lockdown-shown")

    def hits(auth: str) -> set[tuple[str, str]]:
        answer = call(
            server,
            "GET",
            "/+search?query=lockdown",
            {"Authorization": auth, "Accept": "application/json"},
        )
        assert answer.code == 200, answer.raw[:300]
        result = json.loads(answer.body)["result"]
        assert result["total"] == len(result["hits"])
        return {(hit["index"], hit["project"]) for hit in result["hits"]}

    assert hits(ALICE) == {("alice/secret", "lockdown-hidden"), ("alice/dev", "lockdown-shown")}
    assert hits(ROOT) == hits(ALICE)
    assert hits(BOB) == {("alice/dev", "lockdown-shown")}
