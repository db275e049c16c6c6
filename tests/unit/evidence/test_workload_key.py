"""The watch agent's key of a container's workload (lockd.evidence.workload.workload_key, #17):
it changes when a process maps new code, runs another program, carries another tracked variable
or runs a library deleted under it; processes coming and going as the ones before them leave it
unchanged. Real processes of this test (its own children: no root needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lockd.evidence import kernel
from lockd.evidence.workload import workload_key

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
WAIT_AND_LOAD = """
import ctypes, os, sys, time
print('ready', flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
ctypes.CDLL(sys.argv[2])
print('loaded', flush=True)
time.sleep(120)
"""
SLEEP = "print('ready', flush=True); import time; time.sleep(120)"
Start = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def members(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The pids the container's cgroup is said to hold (init first); this host's namespace is
    not taken for a docker exec's in transit (the test's processes live in it)."""
    found: list[int] = []
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: (list(found), None))
    monkeypatch.setattr(kernel, "host_namespaces", frozenset)
    return found


@pytest.fixture
def start(members: list[int]) -> Iterator[Start]:
    started: list[subprocess.Popen[str]] = []

    def _start(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        started.append(process)
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        members.append(process.pid)
        return process

    yield _start
    for process in started:
        process.kill()
        process.wait()


def key(members: list[int]) -> str | None:
    return workload_key({"Id": "c" * 64, "State": {"Pid": members[0]}})


def test_new_code_another_program_or_variable_changes_the_key_not_a_process_like_the_others(
    start: Start, members: list[int], tmp_path: Path
) -> None:
    go = tmp_path / "go"
    copy = tmp_path / "libcopy.so.1"
    shutil.copyfile(os.path.realpath(LIBZ), copy)
    loader = start(WAIT_AND_LOAD, str(go), str(copy))
    start(SLEEP)
    before = key(members)
    assert before is not None and key(members) == before

    worker = start(SLEEP)  # a worker like one before it: the same code, nothing new
    assert key(members) == before
    worker.kill()
    worker.wait()
    members.remove(worker.pid)
    assert key(members) == before

    go.touch()  # the loader maps a library mid-run
    assert loader.stdout is not None and loader.stdout.readline().strip() == "loaded"
    loaded = key(members)
    assert loaded not in (None, before)

    copy.unlink()  # deleted under the mapping: the kernel marks it
    deleted = key(members)
    assert deleted not in (None, before, loaded)

    preloaded = start(SLEEP, env={"LD_PRELOAD": LIBZ})  # a tracked variable
    assert key(members) not in (None, deleted)
    members.remove(preloaded.pid)
    assert key(members) == deleted
    other = start(SLEEP.replace("120", "121"), env={"HOME": "/elsewhere"})
    assert key(members) == deleted  # -c like the others; HOME is not tracked
    members.remove(other.pid)
    start(SLEEP, "-")
    assert key(members) == deleted  # its arguments are not what it is judged as


def test_no_key_where_the_processes_cannot_be_read(
    start: Start, members: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert workload_key({"Id": "c" * 64, "State": {"Pid": 0}}) is None
    assert workload_key({"State": {"Pid": 1}}) is None
    process = start(SLEEP)
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: ([pid], "not all listed"))
    assert key(members) is None
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: ([pid], None))
    assert key(members) is not None
    process.kill()
    process.wait()
    time.sleep(0.05)
    assert key(members) is None  # the init process is gone
