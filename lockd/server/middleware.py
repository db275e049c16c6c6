"""Pure ASGI middleware: a cap on request bodies, text the databases can store, request
metrics, the admission listener's few routes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from lockd.model.base import unstorable, unstorable_text
from lockd.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _problem(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode("ascii")),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Answer 413 to a request whose body is larger than ``limit`` bytes, before the app sees
    it: at once when Content-Length says so, else as soon as the streamed body passes it. The
    body is read here and handed on whole (bodies are small: at most ``limit``)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _detail(self) -> str:
        return (
            f"the request body is larger than {self.limit // (1024 * 1024)} MiB, the limit; "
            "nothing was stored"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _problem(send, 400, "Content-Length is not a number")
                    return
                if declared > self.limit:
                    await _problem(send, 413, self._detail())
                    return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                await _problem(send, 413, self._detail())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, replaying(_whole(b"".join(chunks)), receive), send)


def _whole(body: bytes) -> Message:
    return {"type": "http.request", "body": body, "more_body": False}


def replaying(message: Message, receive: Receive) -> Receive:
    """``receive`` with ``message`` (one already received) given back first."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return message
        return await receive()

    return again


# What a JSON body must hold for one of its strings to be unstorable: a raw NUL byte, or a
# \u0000 or surrogate escape. Only such (rare) bodies are decoded here to find the string. Two
# searches, not one alternation: a pattern that starts with a literal is scanned for it at
# memchr speed (15x faster on a 32 KB body, the hot path's).
_SUSPECT_ESCAPE = re.compile(rb"\\u(?:0000|[dD][89a-fA-F])")


def _suspect(body: bytes) -> bool:
    return b"\x00" in body or _SUSPECT_ESCAPE.search(body) is not None


class StorableText:
    """Answer 422 to a request whose path, query or JSON body holds a string the databases
    cannot store (a NUL, a lone surrogate: :data:`lockd.model.base.UNSTORABLE`), naming where,
    before any route sees it: one rule for every route, on SQLite and PostgreSQL alike, rather
    than a 500 from PostgreSQL half way through a write. It sits inside BodyLimit, which hands
    the body on whole."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        found = self._in_url(scope)
        message = await receive()
        body = message.get("body", b"") if message["type"] == "http.request" else b""
        if found is None and _suspect(body):
            found = _in_body(body)
        if found is not None:
            await _problem(send, 422, f"{found}, which cannot be stored; nothing was stored")
            return
        await self.app(scope, replaying(message, receive), send)

    @staticmethod
    def _in_url(scope: Scope) -> str | None:
        why = unstorable_text(scope["path"])
        if why:
            return f"path holds {why}"
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            why = unstorable_text(name) or unstorable_text(value)
            if why:
                return f"query {name.replace(chr(0), '?')} holds {why}"
        return None


def _in_body(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route answers that
    found = unstorable(doc)
    if found is None:
        return None
    where, why = found
    return f"body {where} holds {why}" if where else f"body holds {why}"


class RequestMetrics:
    """Count requests and time them by route template (``/v1/manifests/{digest}``, never the
    concrete path, so label values stay few)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "(unmatched)"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)


class ListenerRoutes:
    """On the listener at ``port`` (the admission listener) answer only ``paths``; 404 for the
    rest, and a WebSocket is closed unaccepted (403 to the client), before the app sees them:
    the webhook's callers need nothing else there."""

    def __init__(self, app: ASGIApp, port: int, paths: frozenset[str]) -> None:
        self.app = app
        self.port = port
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] == "websocket" and server is not None and server[1] == self.port:
            await send({"type": "websocket.close", "code": 1008})
            return
        if (
            scope["type"] == "http"
            and server is not None
            and server[1] == self.port
            and scope["path"] not in self.paths
        ):
            await _problem(
                send, 404, f"the admission listener answers {', '.join(sorted(self.paths))} only"
            )
            return
        await self.app(scope, receive, send)
