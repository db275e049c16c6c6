"""Servers the tests start (``lockd serve``, the OCI registry): on a free loopback port, waited
for until ready, and dying with the test process: a test run killed midway must not leave a
server behind that keeps working on the shared test database (a stray webhook worker claimed
the next run's events)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the test process ends (util-linux setpriv
    sets the parent-death signal, then execs it: the same process)."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_ready(
    what: str, url: str, process: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    """Until ``url`` answers 200; fails the test with ``what``'s ``log`` when its process exits
    first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start: {log.read_text()}")
            time.sleep(0.1)


@contextlib.contextmanager
def lockd_serve(
    env: Mapping[str, str], log: Path, timeout: float = 60, python: str = sys.executable
) -> Iterator[str]:
    """A real ``lockd serve`` (of ``python``'s lockd) with ``env`` (its LOCKD_* settings) over
    the test's environment, its output in ``log``: yields its URL once /readyz answers; stopped
    afterwards."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            dying_with_parent([python, "-m", "lockd", "serve", "--port", str(port)]),
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_ready("lockd serve", url + "/readyz", process, log, timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
