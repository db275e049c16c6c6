"""A real HTTP server on loopback that misbehaves as a hostile OCI registry would: a tag list
whose ``Link`` points back to itself forever, one whose ``Link`` sends the client to another
origin, or a slowloris that sends its answer one byte at a time and never finishes. It counts
what it was asked and which connections the client closed (shared by the registry client's
tests, the admission service's and the bench)."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["self-link", "elsewhere", "slowloris", "redirect", "plain"]


@dataclass
class Seen:
    """What the server saw: request paths, Authorization headers, connections open and closed."""

    paths: list[str] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    open: int = 0
    closed_by_client: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class BadRegistry:
    host: str  # 127.0.0.1:PORT
    seen: Seen
    server: http.server.HTTPServer

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def wait_until_all_closed(self, timeout: float = 30.0) -> int:
        """Poll until no connection is open (the slowloris writes until the client closes);
        the number still open when the timeout passes (0: all closed)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.seen.lock:
                if self.seen.open == 0:
                    return 0
            time.sleep(0.05)
        return self.seen.open


def _handler(mode: Mode, seen: Seen, elsewhere: str) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            with seen.lock:
                seen.paths.append(self.path)
                seen.authorization.append(self.headers.get("Authorization"))
            if mode == "slowloris":
                self._dribble()
            elif mode == "redirect" and "moved=1" not in self.path:
                moved = self.path + ("&" if "?" in self.path else "?") + "moved=1"
                self._answer(302, b"", {"Location": elsewhere + moved})
            elif "/tags/list" in self.path and mode in ("self-link", "elsewhere"):
                target = self.path if mode == "self-link" else elsewhere + self.path
                body = b'{"name":"team/app","tags":["v1"]}'
                self._answer(200, body, {"Link": f'<{target}>; rel="next"'})
            elif mode in ("plain", "redirect"):
                self._answer(200, b"[]", {})
            else:
                self._answer(404, b'{"errors":[{"code":"NOT_FOUND"}]}', {})

        def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _dribble(self) -> None:
            """A status line and headers one byte at a time, with no end."""
            with seen.lock:
                seen.open += 1
            try:
                head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Slow: "
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
                while True:
                    self.wfile.write(b"z")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                with seen.lock:
                    seen.closed_by_client += 1
            finally:
                with seen.lock:
                    seen.open -= 1
                self.close_connection = True

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # a flood of lookups connects at once: none refused by the backlog


@contextmanager
def bad_registry(mode: Mode, *, elsewhere: str = "") -> Iterator[BadRegistry]:
    """A misbehaving registry on a free loopback port, stopped on exit. ``elsewhere``: the
    origin its Links and redirects name (its own when empty)."""
    seen = Seen()
    server = _Server(("127.0.0.1", 0), _handler(mode, seen, elsewhere))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield BadRegistry(f"127.0.0.1:{server.server_address[1]}", seen, server)
    finally:
        server.shutdown()
        server.server_close()
