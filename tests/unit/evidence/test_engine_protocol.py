"""lockd.evidence.docker.engine's HTTP over a Unix socket (the Docker interface's stdlib fast path),
against servers that are not a Docker daemon:
nothing listening, garbage, HTML, error pages, chunked answers, over-long answers."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockd.evidence.docker import base, connect, engine
from lockd.evidence.docker.base import (
    DaemonError,
    NotFoundError,
    UnreachableError,
    UnsupportedHostError,
    read_frames,
)
from lockd.evidence.docker.engine import Engine, ExecStream

START_IT = (
    "Start it (e.g. `sudo systemctl start docker`, or `dockerd &` as root) or set DOCKER_HOST."
)

Serve = Callable[[bytes], str]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """``serve(answer)``: a Unix socket that reads each request's head and sends ``answer``
    (then closes); returns the ``unix://`` host. Records the requests in ``serve.requests``."""
    servers: list[socket.socket] = []
    requests: list[bytes] = []

    def _serve(answer: bytes) -> str:
        path = tmp_path / f"fake-{len(servers)}.sock"
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(path))
        server.listen()
        servers.append(server)

        def loop() -> None:
            while True:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        head += chunk
                    requests.append(head)
                    conn.sendall(answer)

        threading.Thread(target=loop, daemon=True).start()
        return f"unix://{path}"

    _serve.requests = requests  # type: ignore[attr-defined]
    yield _serve
    for server in servers:
        server.close()


def test_no_socket_is_unreachable_and_says_how_to_start_the_daemon(tmp_path: Path) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"

    with pytest.raises(UnreachableError) as caught:
        Engine(host).inspect_container("app")

    assert str(caught.value) == (
        f"cannot reach the Docker daemon ({host}): No such file or directory. {START_IT}"
    )
    assert caught.value.exit_code == 3


def test_socket_nobody_listens_on_is_unreachable(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # the file stays; nobody accepts: what a dead dockerd leaves behind
    stale.close()
    host = f"unix://{path}"

    with pytest.raises(UnreachableError) as caught:
        Engine(host).ping()

    assert str(caught.value) == (
        f"cannot reach the Docker daemon ({host}): Connection refused. {START_IT}"
    )


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "{host} does not answer as a Docker daemon (not HTTP): 'SSH-2.0-OpenSSH_9.2'",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 22\r\n\r\n<html>hello</html>\n\n\n\n",
            "the Docker daemon ({host}) answered GET /containers/app/json with something "
            "unusable: not JSON: '<html>hello</html>'",
        ),
        (
            b"HTTP/1.1 301 Moved Permanently\r\nLocation: /x/json\r\nContent-Length: 0\r\n\r\n",
            "the Docker daemon ({host}) answered GET /containers/app/json with something "
            "unusable: a redirect (301) to '/x/json'",
        ),
        (
            b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"Id": "a',
            "the Docker daemon ({host}) closed the connection mid-answer",
        ),
    ],
    ids=["not-http", "not-json", "redirect-not-followed", "truncated"],
)
def test_an_unusable_answer(serve: Serve, answer: bytes, message: str) -> None:
    host = serve(answer)

    with pytest.raises(DaemonError) as caught:
        Engine(host).inspect_container("app")

    assert str(caught.value) == message.format(host=host)
    assert caught.value.exit_code == 3


def test_json_that_is_not_an_object(serve: Serve) -> None:
    host = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n[1,2,3]")

    with pytest.raises(DaemonError, match=r"/containers/app/json with something unusable: not a"):
        Engine(host).inspect_container("app")


def test_an_error_page_that_is_not_json_is_quoted(serve: Serve) -> None:
    host = serve(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 11\r\n\r\nproxy: down")

    with pytest.raises(DaemonError) as caught:
        Engine(host).inspect_container("app")

    assert str(caught.value) == "HTTP 502 'proxy: down'"
    assert caught.value.status == 502


def test_the_daemons_error_message_and_404(serve: Serve) -> None:
    body = b'{"message":"No such container: app"}'
    host = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with pytest.raises(NotFoundError) as caught:
        Engine(host).inspect_container("app")

    assert str(caught.value) == "No such container: app"
    assert caught.value.status == 404


def test_a_chunked_answer_is_decoded(serve: Serve) -> None:
    host = serve(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'6\r\n{"Id":\r\n8;ext=1\r\n "abc", \r\nd\r\n"Name": "/x"}\r\n0\r\n\r\n'
    )

    assert Engine(host).inspect_container("app") == {"Id": "abc", "Name": "/x"}


def test_an_answer_over_the_cap_is_refused(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_ANSWER", 1000)
    host = serve(b"HTTP/1.1 200 OK\r\n\r\n" + b"[" + b"0," * 5000 + b"0]")

    with pytest.raises(DaemonError) as caught:
        Engine(host).diff("app")

    assert str(caught.value) == f"the Docker daemon ({host}) answered more than 1000 bytes"


def test_names_cannot_change_the_path(serve: Serve) -> None:
    host = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    Engine(host).inspect_container("../x?a=1")

    assert serve.requests[0].startswith(  # type: ignore[attr-defined]
        b"GET /containers/..%2Fx%3Fa%3D1/json HTTP/1.1\r\n"
    )


def test_the_container_list_sends_its_filters_sorted(serve: Serve) -> None:
    body = b'[{"Id": "abc", "Names": ["/x"]}]'
    host = serve(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    listed = Engine(host).containers({"status": ["running"], "label": ["b=2", "a=1"]})

    assert listed == [{"Id": "abc", "Names": ["/x"]}]
    assert serve.requests[0].startswith(  # type: ignore[attr-defined]
        b"GET /containers/json?filters=%7B%22label%22%3A+%5B%22a%3D1%22%2C+%22b%3D2%22%5D%2C+"
        b"%22status%22%3A+%5B%22running%22%5D%7D HTTP/1.1\r\n"
    )


def test_a_container_list_that_is_not_a_list(serve: Serve) -> None:
    host = serve(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"Id": "a"}')

    with pytest.raises(DaemonError) as caught:
        Engine(host).containers({})

    assert str(caught.value) == (
        f"the Docker daemon ({host}) answered GET /containers/json with something unusable: "
        "not a list of containers"
    )
    assert serve.requests[0].startswith(b"GET /containers/json HTTP/1.1\r\n")  # type: ignore[attr-defined]


# --- the event stream ---------------------------------------------------------------------------

EVENTS_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces)


def test_events_split_anywhere_across_chunks_arrive_whole(serve: Serve) -> None:
    """(A blank line between them is passed over.)"""
    first = b'{"Type":"container","Action":"start","Actor":{"ID":"a"}}\n'
    second = b'{"Type":"container","Action":"die","Actor":{"ID":"b"}}\n'
    host = serve(
        EVENTS_HEAD
        + chunked(first[:10], first[10:] + b"\n" + second[:5], second[5:])
        + b"0\r\n\r\n"
    )

    stream = Engine(host).events({"type": ["container"]})
    try:
        events = list(stream)
    finally:
        stream.close()

    assert [(e["Action"], e["Actor"]["ID"]) for e in events] == [("start", "a"), ("die", "b")]
    assert serve.requests[0].startswith(  # type: ignore[attr-defined]
        b"GET /events?filters=%7B%22type%22%3A+%5B%22container%22%5D%7D HTTP/1.1\r\n"
    )


def read_to_error(host: str) -> tuple[list[str], str]:
    """(the actions of the events read, the message of the DaemonError that ended them)."""
    seen: list[str] = []
    stream = Engine(host).events({})
    try:
        with pytest.raises(DaemonError) as caught:
            seen.extend(e["Action"] for e in stream)
    finally:
        stream.close()
    return seen, str(caught.value)


def test_an_event_stream_that_is_cut_is_an_error(serve: Serve) -> None:
    host = serve(EVENTS_HEAD + chunked(b'{"Action":"start"}\n'))  # no last chunk: cut

    assert read_to_error(host) == (
        ["start"],
        f"the Docker daemon ({host}) closed the connection mid-answer",
    )


def test_an_event_that_is_not_json(serve: Serve) -> None:
    host = serve(EVENTS_HEAD + chunked(b'{"Action":"start"}\n<html>\n') + b"0\r\n\r\n")

    assert read_to_error(host) == (
        ["start"],
        f"the Docker daemon ({host}) answered GET /events with something unusable: an event "
        "that is not a JSON object: '<html>'",
    )


def test_an_event_over_the_cap(serve: Serve, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "MAX_EVENT", 100)
    over_two_chunks = serve(EVENTS_HEAD + chunked(b"x" * 60, b"x" * 60) + b"0\r\n\r\n")
    in_one_chunk = serve(EVENTS_HEAD + chunked(b"x" * 101) + b"0\r\n\r\n")

    for host in (over_two_chunks, in_one_chunk):
        assert read_to_error(host) == (
            [],
            f"the Docker daemon ({host}) answered GET /events with something unusable: an "
            "event over 100 bytes",
        )


def test_events_refused_and_unreachable(serve: Serve, tmp_path: Path) -> None:
    body = b'{"message":"invalid filter \'evnt\'"}'
    host = serve(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    with pytest.raises(DaemonError) as refused:
        Engine(host).events({"evnt": ["start"]})
    with pytest.raises(UnreachableError) as unreachable:
        Engine(f"unix://{tmp_path}/gone.sock").events({})

    assert (str(refused.value), refused.value.status) == ("invalid filter 'evnt'", 400)
    assert str(unreachable.value) == (
        f"cannot reach the Docker daemon (unix://{tmp_path}/gone.sock): No such file or "
        f"directory. {START_IT}"
    )


def test_interrupting_a_quiet_event_stream_ends_it(tmp_path: Path) -> None:
    path = tmp_path / "quiet.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()
    held: list[socket.socket] = []

    def answer() -> None:
        conn, _ = server.accept()
        held.append(conn)
        conn.recv(4096)
        conn.sendall(EVENTS_HEAD + chunked(b'{"Action":"start"}\n'))  # then nothing, ever

    threading.Thread(target=answer, daemon=True).start()
    stream = Engine(f"unix://{path}", timeout=5).events({})
    seen: list[str] = []
    ended = threading.Event()

    def read() -> None:
        with contextlib.suppress(DaemonError):
            seen.extend(e["Action"] for e in stream)
        ended.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not seen:
            assert reader.is_alive()
            time.sleep(0.01)
        assert not ended.is_set()  # it waits for the next event
        stream.interrupt()
        reader.join(timeout=30)
        assert ended.is_set()
        assert seen == ["start"]
    finally:
        stream.close()
        for sock in (*held, server):
            sock.close()


@pytest.mark.parametrize(
    ("host", "spoken"),
    [
        ("unix:///var/run/docker.sock", True),
        ("tcp://127.0.0.1:2375", True),
        ("tcp://[::1]:2375", True),
        ("ssh://user@host", False),
        ("npipe:////./pipe/docker_engine", False),
        ("unix://relative.sock", False),
    ],
)
def test_which_hosts_the_engine_speaks(
    monkeypatch: pytest.MonkeyPatch, host: str, spoken: bool
) -> None:
    monkeypatch.setenv("DOCKER_HOST", host)
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    monkeypatch.delenv("DOCKER_CERT_PATH", raising=False)

    assert (Engine.from_env() is not None) is spoken


def test_tls_is_left_to_the_docker_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2376")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")

    assert Engine.from_env() is None


def test_unspoken_host_given_directly_is_an_error() -> None:
    with pytest.raises(DaemonError) as caught:
        Engine("ssh://user@host")

    assert str(caught.value) == (
        "DOCKER_HOST='ssh://user@host': lockd's Engine client speaks only unix:// and tcp:// "
        "(without TLS)"
    )


# --- the one interface over it -----------------------------------------------------------------


def test_the_interface_asks_the_fast_path_where_it_speaks_the_host(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = serve(b'HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\n{"Id": "abc", "Name": "/x"}')
    monkeypatch.setenv("DOCKER_HOST", host)

    assert connect().inspect_container("app") == {"Id": "abc", "Name": "/x"}
    assert serve.requests[-1].startswith(b"GET /containers/app/json HTTP/1.1\r\n")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "env",
    [
        {"DOCKER_HOST": "ssh://builder"},
        {"DOCKER_HOST": "tcp://127.0.0.1:2376", "DOCKER_TLS_VERIFY": "1"},
    ],
)
def test_following_events_needs_a_host_the_fast_path_speaks(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    with pytest.raises(UnsupportedHostError) as caught:
        connect(events=True)

    assert caught.value.host == env["DOCKER_HOST"]
    assert caught.value.exit_code == 2
    with pytest.raises(UnsupportedHostError):
        connect().events({})


def test_what_only_the_sdk_answers_says_how_to_start_the_daemon(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    host = f"unix://{tmp_path}/no-docker.sock"
    monkeypatch.setenv("DOCKER_HOST", host)

    with pytest.raises(UnreachableError) as caught:
        connect().info()

    assert str(caught.value).startswith(f"cannot reach the Docker daemon ({host}): ")
    assert str(caught.value).endswith(START_IT)
    assert caught.value.exit_code == 3


# --- the multiplexed stream ---------------------------------------------------------------------


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def stream_of(data: bytes) -> socket.socket:
    """A socket whose peer sends ``data`` (in small pieces) and closes."""
    ours, theirs = socket.socketpair()

    def send() -> None:
        with theirs, contextlib.suppress(OSError):  # the reader may stop and close first
            for start in range(0, len(data), 7):
                theirs.sendall(data[start : start + 7])

    threading.Thread(target=send, daemon=True).start()
    return ours


def test_frames_split_anywhere_are_put_back_together() -> None:
    data = frame(1, b"hello ") + frame(2, b"oops") + frame(1, b"world")
    with stream_of(data) as sock:
        assert read_frames(ExecStream(sock, b""), time.monotonic() + 10, 1000) == (
            b"hello world",
            b"oops",
            "eof",
        )


def test_output_over_the_cap_stops_the_read() -> None:
    data = frame(1, b"x" * 5000) + frame(1, b"y" * 5000)
    with stream_of(data) as sock:
        stdout, _, end = read_frames(ExecStream(sock, b""), time.monotonic() + 10, 4096)

    assert (stdout, end) == (b"x" * 4097, "overflow")


class Batched:
    """A peer that has sent ``data`` and whose bytes arrive ``batch`` at a time (all that is
    asked for when ``batch`` is None): the read sizes are the client's, the batching the
    kernel's. Counts the bytes handed out."""

    def __init__(self, data: bytes, batch: int | None) -> None:
        self.data = data
        self.batch = batch
        self.taken = 0
        self.asked: list[int] = []

    def pending(self) -> bool:  # no select(): every read is answered at once
        return True

    def recv(self, size: int) -> bytes:
        assert size > 0
        self.asked.append(size)
        size = min(size, self.batch or size)
        chunk = self.data[self.taken : self.taken + size]
        self.taken += len(chunk)
        return chunk


@pytest.mark.parametrize("batch", [None, 1, 7, 8, 4096, 5008, 1 << 20])
def test_the_cap_holds_however_the_output_is_batched(batch: int | None) -> None:
    data = frame(2, b"e" * 3000) + frame(1, b"x" * 5000) + frame(1, b"y" * 5000)
    peer = Batched(data + frame(1, b"z" * (1 << 20)), batch)

    stdout, stderr, end = read_frames(peer, time.monotonic() + 10, 4096)

    assert (stdout, stderr, end) == (b"x" * 4097, b"e" * 3000, "overflow")
    # never buffered past the cap: headers (8 bytes each) and stderr aside, one byte over it
    assert peer.taken <= 8 + 3000 + 8 + 4097


def test_a_long_stderr_near_the_cap_is_read_in_large_pieces() -> None:
    """What is left of a stderr frame never counts towards the cap: a process that filled
    stdout to the byte and then writes 1 MB to stderr is not read a byte at a time."""
    peer = Batched(frame(1, b"x" * 4096) + frame(2, b"e" * (1 << 20)), None)

    stdout, stderr, end = read_frames(peer, time.monotonic() + 10, 4096)

    assert (stdout, len(stderr), end) == (b"x" * 4096, base._STDERR_KEEP, "eof")
    assert len(peer.asked) < 100


@pytest.mark.parametrize("headers", [{}, {"transfer-encoding": "chunked"}])
def test_an_answer_is_never_read_past_its_cap(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str]
) -> None:
    """However much an answer sends at once, the client takes at most one byte past
    MAX_ANSWER before it gives up (to the end, or in chunks)."""
    monkeypatch.setattr(engine, "MAX_ANSWER", 1000)
    body = b"[" + b"0," * 50_000 + b"0]"
    peer = Batched(chunked(body) if headers else body, None)

    with pytest.raises(DaemonError) as caught:
        engine._read_body(peer, headers, b"", "unix:///fake.sock")  # type: ignore[arg-type]

    assert (
        str(caught.value) == "the Docker daemon (unix:///fake.sock) answered more than 1000 bytes"
    )
    assert peer.taken <= 1001


def test_a_silent_stream_times_out() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        start = time.monotonic()
        assert read_frames(ExecStream(ours, b""), start + 0.2, 1000) == (b"", b"", "timeout")
