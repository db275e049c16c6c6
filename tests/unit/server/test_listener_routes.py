"""The admission listener's own routes: only the webhook's paths reach the app on its port."""

from __future__ import annotations

import asyncio
from typing import Any

from lockd.server.middleware import ListenerRoutes

ADMISSION_PORT = 8443
PATHS = frozenset({"/v1/admission", "/healthz", "/readyz"})


def call(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """What the middleware sent, and the scope types the app saw."""
    sent: list[dict[str, Any]] = []
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    asyncio.run(ListenerRoutes(app, ADMISSION_PORT, PATHS)(scope, receive, send))
    return sent, seen


def http(path: str, port: int) -> dict[str, Any]:
    return {"type": "http", "path": path, "server": ("10.0.0.1", port), "headers": []}


def test_only_the_webhooks_paths_reach_the_app_on_the_admission_port() -> None:
    sent, seen = call(http("/v1/manifests", ADMISSION_PORT))
    assert seen == []
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 404
    for path in sorted(PATHS):
        assert call(http(path, ADMISSION_PORT)) == ([], ["http"])
    assert call(http("/v1/manifests", 8080)) == ([], ["http"])  # the main port: the app decides


def test_a_websocket_on_the_admission_port_is_closed_before_the_app() -> None:
    scope = {"type": "websocket", "path": "/v1/admission", "server": ("10.0.0.1", ADMISSION_PORT)}
    assert call(scope) == ([{"type": "websocket.close", "code": 1008}], [])
    scope["server"] = ("10.0.0.1", 8080)
    assert call(scope) == ([], ["websocket"])


def test_lifespan_passes() -> None:
    assert call({"type": "lifespan"}) == ([], ["lifespan"])
