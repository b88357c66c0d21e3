"""``devpi push`` to an external upload URL (twine's legacy protocol), against local endpoints.

Two real devpids: alice's versions on the first are pushed to bob's stage on the
second through its upload URL, the way a team pushes a release to another index;
and a recording endpoint shows exactly what devpid sends (the form, the file,
the credentials) and how a refusal comes back (502 with the endpoint's answer).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import attrs
import pytest
from multipart import MultipartParser

from tests.fixtures.devpid_process import DevpidProcess
from tests.fixtures.distbuilder import Dist, _build_sdist, _build_wheel, build_repository
from tests.fixtures.upstream import UpstreamProcess

pytestmark = pytest.mark.integration

_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def basic(user: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()


def call(
    url: str,
    method: str,
    body: Any = None,
    auth: str | None = None,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> tuple[int, Any]:
    payload = data if data is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=payload, method=method)
    request.add_header("Accept", "application/json")
    if payload is not None:
        request.add_header("Content-Type", content_type)
    if auth:
        request.add_header("Authorization", auth)
    try:
        with _NO_PROXY.open(request, timeout=60) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw, status = e.read(), e.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "devpid-test-boundary"
    parts = []
    for key, value in fields.items():
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n'
        parts.append(f"{head}{value}\r\n".encode())
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="content"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


@attrs.define
class Recorder:
    """A legacy upload endpoint that keeps every form it gets and answers ``status``."""

    status: int = 200
    posts: list[dict[str, Any]] = attrs.field(factory=list)


def _recording_handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            boundary = self.headers.get_param("boundary", header="content-type")
            form: dict[str, Any] = {}
            for part in MultipartParser(io.BytesIO(body), str(boundary)):
                if part.filename:
                    form.setdefault(part.name, []).append((part.filename, part.raw))
                else:
                    form.setdefault(part.name, []).append(part.value)
            recorder.posts.append(
                {"form": form, "authorization": self.headers.get("Authorization")}
            )
            self.send_response(recorder.status, "denied" if recorder.status >= 400 else "OK")
            text = b"denied\n" if recorder.status >= 400 else b""
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@attrs.frozen
class Setup:
    source: DevpidProcess
    target: DevpidProcess
    recorder: Recorder
    recorder_url: str
    wheel: bytes


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("push-external")
    repository = build_repository(base / "upstream")
    dist = Dist("acme-push", "1.0", "wheel")
    (base / "dists").mkdir()
    _build_wheel(dist, base / "dists")
    _build_sdist(Dist("acme-push", "1.0", "sdist"), base / "dists")
    recorder = Recorder()
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _recording_handler(recorder))
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    try:
        with (
            UpstreamProcess.start(repository.root) as upstream,
            DevpidProcess.start(base / "source", upstream.simple_url, name="source") as source,
            DevpidProcess.start(base / "target", upstream.simple_url, name="target") as target,
        ):
            assert call(source.url + "/alice", "PUT", {"password": "alicepw"})[0] == 201
            alice = basic("alice", "alicepw")
            assert call(source.url + "/alice/dev", "PUT", {"bases": ""}, alice)[0] == 200
            assert call(target.url + "/bob", "PUT", {"password": "bobpw"})[0] == 201
            bob = basic("bob", "bobpw")
            assert call(target.url + "/bob/rel", "PUT", {"bases": ""}, bob)[0] == 200
            for name in (dist.filename, "acme_push-1.0.tar.gz"):
                content = (base / "dists" / name).read_bytes()
                fields = {":action": "file_upload", "name": "acme-push", "version": "1.0"}
                body, content_type = multipart(fields, name, content)
                status, _ = call(
                    source.url + "/alice/dev/",
                    "POST",
                    auth=alice,
                    data=body,
                    content_type=content_type,
                )
                assert status == 200
            host, port = endpoint.server_address[:2]
            yield Setup(
                source,
                target,
                recorder,
                f"http://{host!s}:{port}/legacy/",
                (base / "dists" / dist.filename).read_bytes(),
            )
    finally:
        endpoint.shutdown()
        endpoint.server_close()


def test_push_to_another_devpid_through_its_upload_url(setup: Setup) -> None:
    status, answer = call(
        setup.source.url + "/alice/dev",
        "PUSH",
        {
            "name": "acme-push",
            "version": "1.0",
            "posturl": setup.target.url + "/bob/rel/",
            "username": "bob",
            "password": "bobpw",
        },
        basic("alice", "alicepw"),
    )
    assert status == 200, answer
    assert answer["type"] == "actionlog"
    assert [row[:2] for row in answer["result"]] == [[200, "upload"], [200, "upload"]]
    status, project = call(setup.target.url + "/bob/rel/acme-push", "GET")
    assert status == 200
    links = project["result"]["1.0"]["+links"]
    assert sorted(link["href"].rpartition("/")[2] for link in links) == [
        "acme_push-1.0-py3-none-any.whl",
        "acme_push-1.0.tar.gz",
    ]
    wheel = next(link for link in links if link["href"].endswith(".whl"))
    assert wheel["hashes"]["sha256"] == hashlib.sha256(setup.wheel).hexdigest()
    assert project["result"]["1.0"]["summary"] == "devpid test fixture acme-push"


def test_what_the_push_sends(setup: Setup) -> None:
    setup.recorder.posts.clear()
    status, answer = call(
        setup.source.url + "/alice/dev",
        "PUSH",
        {
            "name": "acme-push",
            "version": "1.0",
            "posturl": setup.recorder_url,
            "username": "carol",
            "password": "s3cret",
            "register_project": True,
        },
        basic("alice", "alicepw"),
    )
    assert status == 200, answer
    assert [row[1] for row in answer["result"]] == ["register", "upload", "upload"]
    register, *uploads = setup.recorder.posts
    assert register["form"][":action"] == ["submit"]
    for post in setup.recorder.posts:
        assert post["authorization"] == basic("carol", "s3cret")
    wheel_post = next(p for p in uploads if p["form"]["content"][0][0].endswith(".whl"))
    form = wheel_post["form"]
    assert form[":action"] == ["file_upload"]
    assert form["name"] == ["acme-push"] and form["version"] == ["1.0"]
    assert form["filetype"] == ["bdist_wheel"] and form["pyversion"] == ["py3"]
    assert form["sha256_digest"] == [hashlib.sha256(setup.wheel).hexdigest()]
    assert form["content"] == [("acme_push-1.0-py3-none-any.whl", setup.wheel)]


def test_a_refusing_endpoint_is_a_502_with_its_answer(setup: Setup) -> None:
    setup.recorder.status = 403
    try:
        status, answer = call(
            setup.source.url + "/alice/dev",
            "PUSH",
            {"name": "acme-push", "version": "1.0", "posturl": setup.recorder_url},
            basic("alice", "alicepw"),
        )
    finally:
        setup.recorder.status = 200
    assert status == 502
    assert answer["result"][-1][0] == 403 and answer["result"][-1][1] == "upload"
    assert "denied" in answer["result"][-1][3]


def test_an_unreachable_endpoint_and_a_bad_body(setup: Setup) -> None:
    alice = basic("alice", "alicepw")
    status, answer = call(
        setup.source.url + "/alice/dev",
        "PUSH",
        {"name": "acme-push", "version": "1.0", "posturl": "http://127.0.0.1:9/nothing/"},
        alice,
    )
    assert status == 502
    assert answer["result"][-1][0] == -1
    status, answer = call(
        setup.source.url + "/alice/dev", "PUSH", {"name": "acme-push", "version": "1.0"}, alice
    )
    assert status == 400 and "posturl" in answer["message"]
    status, answer = call(setup.source.url + "/alice/dev", "PUSH", {"name": "acme-push"}, alice)
    assert status == 400


def test_pushing_out_needs_a_user(setup: Setup) -> None:
    """devpid makes the server POST elsewhere only for a user it knows."""
    status, answer = call(
        setup.source.url + "/alice/dev",
        "PUSH",
        {"name": "acme-push", "version": "1.0", "posturl": setup.recorder_url},
    )
    assert status == 401 and "log in" in answer["message"]
