"""ASGI middleware: request ids, access log and request metrics; the request-body size limit.

Plain ASGI (not BaseHTTPMiddleware) so streamed responses pass through untouched. The log line holds
method, path (no query string: it may carry secrets), status and duration; never headers or bodies.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from higgs_audio.server.errors import error_body
from higgs_audio.server.metrics import Metrics

log = logging.getLogger("higgs_audio.server.access")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


async def _send_error(send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class _HTTPMiddleware:
    """Passes everything but HTTP requests (lifespan, websockets) straight to the app."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.http(scope, receive, send)


class RequestLog(_HTTPMiddleware):
    def __init__(self, app, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope, receive, send):
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        started = time.perf_counter()
        scope.setdefault("state", {}).update(request_id=request_id, started=started)
        status = 500

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.inc(route=label, status=str(status))
            self.metrics.latency.observe(elapsed, route=label)
            log.info("%s %s %s %d %.3fs", request_id, scope["method"], scope["path"], status, elapsed)


class BodyLimit(_HTTPMiddleware):
    """Refuse request bodies over ``max_bytes`` with 413, by Content-Length or while reading a chunked body."""

    def __init__(self, app, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope, receive, send):
        message = f"the request body is larger than this server's {self.max_bytes} byte limit"
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await _send_error(send, 413, message, "request_too_large")
            return await self.app(scope, receive, send)
        # No length given: read the body here (bounded), then replay it to the app.
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] != "http.request":
                return
            chunks.append(event.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await _send_error(send, 413, message, "request_too_large")
            if not event.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)
