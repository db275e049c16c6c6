"""`lockd audit verify --server` against answers no lockd service gives (issue #18, finding 5):
HTML, JSON of the wrong shape, a 500, bytes that are not JSON, a connection refused or cut. Each
is an exact error and exit 2, never a traceback. The "service" is a real HTTP server on loopback
that answers what each case gives it."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import loopback
import pytest

from lockd.trust.checkpoint import Checkpoint, LogSigner

Lockd = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class Answers:
    """What the fake service answers, by path: (status, content type, body); None cuts the
    connection without an answer."""

    by_path: dict[str, tuple[int, str, bytes] | None] = field(default_factory=dict)


@pytest.fixture
def fake() -> Iterator[tuple[str, Answers]]:
    answers = Answers()

    class Handler(loopback.Handler):
        def do_GET(self) -> None:  # noqa: N802 (http.server calls it so)
            path, _, query = self.path.partition("?")
            found = answers.by_path.get(path, (404, "application/json", b'{"detail": "no"}'))
            if path == "/v1/audit" and "after=0&" not in query + "&":
                found = (200, "application/json", b"[]")  # the pages after the first
            if found is None:
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            status, kind, body = found
            self.send(status, body, kind)

    with loopback.loopback_server(Handler) as url:
        yield url, answers


def one_line(text: str) -> str:
    return " ".join(text.split())


NOT_JSON = "the answer is not JSON ({why}); is --server a lockd service?"
NOT_ENTRIES = (
    "the answer is not a list of audit entries (JSON objects); is --server a lockd service?"
)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            (200, "text/html", b"<html><body>Welcome to nginx!</body></html>"),
            "GET {url}/v1/audit: " + NOT_JSON.format(why="Expecting value"),
        ),
        ((200, "application/json", b'{"entries": []}'), "{url}/v1/audit: " + NOT_ENTRIES),
        ((200, "application/json", b"[1, 2, 3]"), "{url}/v1/audit: " + NOT_ENTRIES),
        ((200, "application/json", b'"entries"'), "{url}/v1/audit: " + NOT_ENTRIES),
        (
            (200, "application/json", b'[{"seq": "1"}]'),
            "{url}/v1/audit: entries are not in seq order",
        ),
        (
            (500, "text/plain", b"Internal Server Error"),
            "GET {url}/v1/audit: 500 Internal Server Error",
        ),
        (
            (502, "application/json", b'{"detail": "upstream down"}'),
            "GET {url}/v1/audit: 502 upstream down",
        ),
        (
            (200, "application/octet-stream", b"\x80\x81binary"),
            "GET {url}/v1/audit: " + NOT_JSON.format(why="not UTF-8"),
        ),
        (
            None,
            "GET {url}/v1/audit: cannot reach the lockd service (RemoteDisconnected: Remote end "
            "closed connection without response); check --server and that the service is running",
        ),
    ],
)
def test_an_unexpected_answer_is_an_exact_error_and_exit_2(
    fake: tuple[str, Answers],
    lockd: Lockd,
    answer: tuple[int, str, bytes] | None,
    message: str,
) -> None:
    url, answers = fake
    answers.by_path["/v1/audit"] = answer
    result = lockd("audit", "verify", "--server", url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert one_line(result.stderr) == "lockd: error: " + message.format(url=url)


def test_a_refused_connection_is_an_exact_error_and_exit_2(lockd: Lockd) -> None:
    with socket.socket() as sock:  # a port nothing listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        result = lockd("audit", "verify", "--server", url)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"lockd: error: GET {url}/v1/audit: cannot reach the lockd service ([Errno 111] "
        "Connection refused); check --server and that the service is running"
    )


def test_entries_that_do_not_hash_are_a_broken_chain_not_a_crash(
    fake: tuple[str, Answers], lockd: Lockd
) -> None:
    url, answers = fake
    entry = (
        b'{"seq": 1, "time": "\\ud800", "actor": "a", "action": "x", "subject": null, '
        b'"body_digest": null, "prev_hash": "' + b"0" * 64 + b'", "hash": "h"}'
    )
    answers.by_path["/v1/audit"] = (200, "application/json", b"[" + entry + b"]")
    result = lockd("audit", "verify", "--server", url)
    assert result.returncode == 1, result.stderr
    assert one_line(result.stdout) == (
        "the audit chain is broken at entry 1 (1 entries read): entry 1 holds text that is not "
        "Unicode"
    )


def test_a_checkpoint_key_or_proof_that_is_not_one_is_an_exact_error(
    fake: tuple[str, Answers], lockd: Lockd, tmp_path: object
) -> None:
    from pathlib import Path

    url, answers = fake
    saved = Path(str(tmp_path)) / "audit.checkpoint"
    html = (200, "text/html", b"<html>hello</html>")
    answers.by_path["/v1/audit/log-key"] = html
    result = lockd("audit", "verify", "--server", url, "--checkpoint", saved)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"lockd: error: {url}/v1/audit/log-key: the answer is not a log verifier key (verifier "
        "key: give <name>+<8 hex digits>+<base64 key>, as `lockd keygen --log-key` prints)"
    )

    signer = LogSigner.generate("fake.test/log")
    answers.by_path["/v1/audit/log-key"] = (200, "text/plain", f"{signer.verifier()}\n".encode())
    answers.by_path["/v1/audit/checkpoint"] = html
    result = lockd("audit", "verify", "--server", url, "--checkpoint", saved)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"lockd: error: {url}/v1/audit/checkpoint: the answer is not a signed checkpoint (the "
        "note has no blank line between its text and its signatures)"
    )

    answers.by_path["/v1/audit/checkpoint"] = (200, "text/plain", b"x" * 70_000)
    result = lockd("audit", "verify", "--server", url, "--checkpoint", saved)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"lockd: error: GET {url}/v1/audit/checkpoint: the answer is larger than 65536 bytes"
    )

    def note(size: int) -> bytes:
        return Checkpoint("fake.test/log", size, bytes(32)).sign(signer).encode()

    answers.by_path["/v1/audit/checkpoint"] = (200, "text/plain", note(3))
    answers.by_path["/v1/audit"] = (200, "application/json", b"[]")
    result = lockd("audit", "verify", "--server", url, "--checkpoint", saved)
    assert result.returncode == 1  # three entries signed, none served
    assert "the service serves 0 entries but its checkpoint signs 3" in one_line(result.stdout)
    saved.write_bytes(note(3))
    answers.by_path["/v1/audit/checkpoint"] = (200, "text/plain", note(5))
    answers.by_path["/v1/audit/proof/consistency"] = (200, "application/json", b'{"hashes": 5}')
    result = lockd("audit", "verify", "--server", url, "--checkpoint", saved)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"lockd: error: {url}/v1/audit/proof/consistency: the answer is not a proof (a JSON "
        "object whose 'hashes' is a list of at most 128 hex SHA-256 hashes)"
    )


def test_a_checkpoint_file_goes_with_a_server_not_a_bundle(lockd: Lockd, tmp_path: object) -> None:
    from pathlib import Path

    bundle = Path(str(tmp_path)) / "b.tar.gz"
    bundle.write_bytes(b"not read")
    result = lockd("audit", "verify", bundle, "--checkpoint", Path(str(tmp_path)) / "c")
    assert (result.returncode, one_line(result.stderr)) == (
        2,
        "lockd: error: --checkpoint FILE checks the live log (--server URL); a bundle carries "
        "its own checkpoint: give --log-key to check it",
    )
