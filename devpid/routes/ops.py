"""``/+status`` and ``/+metrics``: what monitors and load balancers ask."""

from __future__ import annotations

import json

import attrs
from klein import Klein
from twisted.web.server import Request

from devpid.http.errors import HTTPError
from devpid.http.request import header
from devpid.ops.metrics import Metrics
from devpid.ops.status import StatusReport
from devpid.routes import labelled


@attrs.define
class OpsRoutes:
    status: StatusReport
    #: This app's Prometheus registry; without it /+metrics is 404.
    metrics: Metrics | None = None

    def register(self, app: Klein) -> None:
        app.route("/+status", methods=["GET"])(labelled("status", self.status_json))
        app.route("/+metrics", methods=["GET"])(labelled("metrics", self.metrics_text))

    def status_json(self, request: Request) -> bytes:
        report = self.status.report()
        # ?check=1: for load balancers, 503 when this process cannot serve.
        if request.args.get(b"check", [b"0"])[0] not in (b"0", b"") and not report["healthy"]:
            request.setResponseCode(503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if b"application/json" in (request.getHeader(b"accept") or b""):
            # devpi-client (``devpi --version``) reads devpi's envelope
            report = {"result": report, "type": "status"}
        return json.dumps(report, indent=1).encode("utf-8") + b"\n"

    def metrics_text(self, request: Request) -> bytes:
        if self.metrics is None:
            raise HTTPError(404, "metrics are not enabled")
        body, content_type = self.metrics.render(header(request, b"accept"))
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return body
