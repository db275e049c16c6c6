"""The workload read from this host's /proc (lockd.evidence.workload, #17), on real processes this
test starts: a launcher's LD_PRELOAD, a library deleted or replaced after it was loaded, a zombie,
a process that exits while lockd reads it, another user's process, 10 000 mappings, a cgroup's
members, lockd's own exec left out. Reading another process's map_files needs root: these tests
ask for ``root_required`` (marked ``root``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from observations import host, manifest, observation

from lockd.evidence import workload as reader
from lockd.evidence.workload import (
    HashCache,
    container_processes,
    process_tree,
    read_workload,
)
from lockd.judgement.checks.workload import check_workload
from lockd.judgement.policy import Policy
from lockd.model.workload import MappedFile, Workload, WorkloadProcess

pytestmark = pytest.mark.usefixtures("root_required")

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
PYTHON = os.path.realpath(sys.executable)

Spawn = Callable[..., subprocess.Popen[str]]


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start ``python -c CODE`` (the code prints "ready" once set up, then sleeps), wait until it
    is ready; every process started is killed and reaped afterwards."""
    started: list[subprocess.Popen[str]] = []

    def start(
        code: str, env: dict[str, str] | None = None, prefix: Sequence[str] = (), **kw: object
    ) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*prefix, sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            **kw,  # type: ignore[call-overload]
        )
        started.append(process)
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.strip() == "ready", line
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def the(found: Workload, pid: int) -> WorkloadProcess:
    [process] = [p for p in found.processes if p.pid == pid]
    return process


def files_of(found: Workload, pid: int) -> dict[str, MappedFile]:
    return {f.path: f for f in found.files_of(the(found, pid))}


SLEEP = "print('ready', flush=True); import time; time.sleep(120)"


def test_a_launchers_ld_preload_is_seen_in_the_mapping_and_the_environment(spawn: Spawn) -> None:
    child = spawn(SLEEP, env={"LD_PRELOAD": LIBZ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"})
    found = read_workload([child.pid], init_pid=child.pid)
    assert found.not_examined is None
    process = the(found, child.pid)
    assert process.group == f"{PYTHON} -c"
    assert process.origin == "init"
    assert process.env_source == "process-memory"
    assert process.env["LD_PRELOAD"] == LIBZ
    assert process.env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "HOME" not in process.env  # only what lockd tracks: never every variable
    assert process.executable == PYTHON
    assert process.executable_sha256 == sha256(PYTHON)
    real = os.path.realpath(LIBZ)
    libz = files_of(found, child.pid)[real]
    assert (libz.sha256, libz.executable, libz.deleted) == (sha256(real), True, False)
    assert libz.soname == "libz.so.1"
    assert {s.kind for s in process.specials} >= {"heap", "stack", "vdso"}
    # judged against a manifest whose configuration is this test's environment, without them
    recorded = manifest(observation(host_evidence=host(config_env=dict(os.environ))))
    seen = observation(host_evidence=host()).model_copy(update={"workload": found})
    check = check_workload(recorded, seen, Policy())
    assert check.status == "fail"
    assert [(f.kind, f.name, f.observed) for f in check.findings if f.kind == "env-added"] == [
        ("env-added", "CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
        ("env-added", "LD_PRELOAD", LIBZ),
    ]


LOAD = """
import ctypes, sys
library = ctypes.CDLL(sys.argv[1])
print('ready', flush=True)
import time; time.sleep(120)
"""


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_library_deleted_or_replaced_after_load_is_hashed_as_loaded(
    spawn: Spawn, tmp_path: Path, how: str
) -> None:
    copy = tmp_path / "libcopy.so.1"
    shutil.copyfile(os.path.realpath(LIBZ), copy)
    loaded = sha256(copy)
    child = spawn(LOAD.replace("sys.argv[1]", repr(str(copy))))
    if how == "deleted":
        copy.unlink()
    else:  # as a package manager replaces a file: a new one renamed over it
        other = tmp_path / "new.so"
        other.write_bytes(b"\x7fELF not the loaded bytes")
        os.replace(other, copy)
    found = read_workload([child.pid], init_pid=child.pid)
    entry = files_of(found, child.pid)[str(copy)]
    assert (entry.deleted, entry.sha256, entry.executable) == (True, loaded, True)
    seen = observation(host_evidence=host()).model_copy(update={"workload": found})
    check = check_workload(manifest(), seen, Policy())
    [deleted] = [f for f in check.findings if f.kind == "deleted"]
    assert (deleted.path, deleted.observed) == (str(copy), f"sha256:{loaded}")
    assert (deleted.message or "").startswith(f"pid {child.pid} ({PYTHON} -c)")
    assert check.status == "fail"


def test_a_zombie_and_a_pid_that_is_gone_are_markers(spawn: Spawn) -> None:
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while Path(f"/proc/{zombie.pid}/stat").read_text().split(")")[-1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        gone = 4_194_304 + 1  # above pid_max: no such process
        found = read_workload([zombie.pid, gone])
        assert [(s.pid, s.reason) for s in found.skipped] == [
            (zombie.pid, "zombie"),
            (gone, "vanished"),
        ]
        assert found.processes == []
    finally:
        zombie.wait()


def test_a_process_that_exits_while_it_is_read_is_vanished_never_a_crash(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    stays = spawn(SLEEP)
    leaves = spawn(SLEEP)
    examine = reader._examine

    def kill_first(candidate: object, proc: str) -> None:  # after maps, before map_files
        if leaves.poll() is None:
            leaves.kill()
            leaves.wait()
        examine(candidate, proc)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "_examine", kill_first)
    found = read_workload([stays.pid, leaves.pid])
    assert [p.pid for p in found.processes] == [stays.pid]
    assert [(s.pid, s.reason) for s in found.skipped] == [(leaves.pid, "vanished")]
    assert found.not_examined is None
    assert files_of(found, stays.pid)[PYTHON].sha256 == sha256(PYTHON)


UNMAPS = """
import mmap, signal, sys, time
handle = open(sys.argv[1], 'rb')
mapping = mmap.mmap(handle.fileno(), 4096, prot=mmap.PROT_READ)
signal.signal(signal.SIGUSR1, lambda *_: mapping.close())
print('ready', flush=True)
time.sleep(120)
"""


def test_a_file_unmapped_while_it_is_read_is_said_never_dropped_in_silence(
    spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "plugin.bin"
    data.write_bytes(os.urandom(4096))
    child = spawn(UNMAPS.replace("sys.argv[1]", repr(str(data))))
    examine = reader._examine

    def unmap_first(candidate: object, proc: str) -> None:  # after maps, before map_files
        if str(data) in Path(f"/proc/{child.pid}/maps").read_text():
            os.kill(child.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 10
            while str(data) in Path(f"/proc/{child.pid}/maps").read_text():
                assert time.monotonic() < deadline
                time.sleep(0.01)
        examine(candidate, proc)  # type: ignore[arg-type]

    monkeypatch.setattr(reader, "_examine", unmap_first)
    found = read_workload([child.pid])
    process = the(found, child.pid)
    assert str(data) not in files_of(found, child.pid)
    assert process.unread == "1 mapped file(s) unmapped while lockd read them"
    seen = observation(host_evidence=host()).model_copy(update={"workload": found})
    check = check_workload(manifest(), seen, Policy())
    assert check.status == "fail"
    [finding] = [f for f in check.findings if f.kind == "unreadable"]
    assert finding.observed == f"pid {child.pid}"


AS_NOBODY = """
import concurrent.futures, os, sys
import lockd.probe.fatbin
from lockd.evidence.workload import read_workload
os.setgroups([]); os.setgid(65534); os.setuid(65534)  # (nobody may not run this venv's python)
print(read_workload([int(p) for p in sys.argv[1:]]).model_dump_json())
"""


def as_nobody(pids: Sequence[int]) -> Workload:
    result = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, *map(str, pids)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return Workload.model_validate(json.loads(result.stdout))


def test_another_users_process_is_unreadable_and_without_root_nothing_is_examined(
    spawn: Spawn,
) -> None:
    roots = spawn(SLEEP)
    nobodys = subprocess.Popen(["sleep", "120"], user=65534, group=65534, extra_groups=[])
    try:
        found = as_nobody([roots.pid, nobodys.pid])
    finally:
        nobodys.kill()
        nobodys.wait()
    [skip] = found.skipped
    assert (skip.pid, skip.reason) == (roots.pid, "unreadable")
    assert f"/proc/{roots.pid}" in skip.message
    # its own user's process: read, but map_files needs root: no file is opened by name instead
    assert found.not_examined is not None
    assert "needs root" in found.not_examined
    assert found.files == []
    assert the(found, nobodys.pid).files == []
    assert the(found, nobodys.pid).uid == 65534
    seen = observation(host_evidence=host()).model_copy(update={"workload": found})
    check = check_workload(manifest(), seen, Policy())
    assert check.status == "fail"
    assert {"not-examined", "unreadable"} <= {f.kind for f in check.findings}


MAPPINGS = """
import mmap, sys
handle = open(sys.argv[1], 'rb')
maps = [mmap.mmap(handle.fileno(), 4096, prot=mmap.PROT_READ) for _ in range(10_000)]
print('ready', flush=True)
import time; time.sleep(120)
"""


def test_ten_thousand_mappings_of_one_file_list_it_once(spawn: Spawn, tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(8192))
    child = spawn(MAPPINGS.replace("sys.argv[1]", repr(str(data))))
    started = time.perf_counter()
    found = read_workload([child.pid])
    took = time.perf_counter() - started
    process = the(found, child.pid)
    assert process.mappings > 10_000
    weights = files_of(found, child.pid)[str(data)]
    assert (weights.sha256, weights.executable) == (sha256(data), False)
    assert [f.path for f in found.files].count(str(data)) == 1
    assert process.unread is None
    assert took < 10, took


def test_the_init_tree_exec_sessions_and_lockds_own_exec_are_told_apart(spawn: Spawn) -> None:
    parent = spawn(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(0.5); print('ready', flush=True); time.sleep(120)"
    )
    beside = spawn(SLEEP)
    lockd_exec = spawn(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
        "time.sleep(0.5); print('ready', flush=True); time.sleep(120)"
    )
    tree = process_tree(parent.pid)
    lockd_tree = process_tree(lockd_exec.pid)
    try:
        assert tree[0] == parent.pid
        assert len(tree) == 2
        found = read_workload(
            [*tree, beside.pid, *lockd_tree], init_pid=parent.pid, exclude=[lockd_exec.pid]
        )
    finally:  # the children the two parents started (the fixture stops the parents)
        for pid in (*tree[1:], *lockd_tree[1:]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert {p.pid: p.origin for p in found.processes} == {
        tree[0]: "init",
        tree[1]: "init",
        beside.pid: "exec",
    }
    assert sorted((s.pid, s.reason) for s in found.skipped) == sorted(
        (pid, "excluded") for pid in lockd_tree
    )


def test_the_hash_cache_is_reused_only_while_every_guard_holds(
    spawn: Spawn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "table.bin"
    data.write_bytes(b"a" * 8192)
    old = sha256(data)
    child = spawn(
        MAPPINGS.replace("range(10_000)", "range(1)").replace("sys.argv[1]", repr(str(data)))
    )
    cache = HashCache()
    first = read_workload([child.pid], hashes=cache)
    assert files_of(first, child.pid)[str(data)].sha256 == sha256(data)
    # just written: its timestamps could repeat within a clock tick, so it was not kept
    second = read_workload([child.pid], hashes=cache)
    assert (second.hashed, second.reused) == (1, len(second.files) - 1)
    later = time.time_ns() + 10 * 10**9
    monkeypatch.setattr(reader.time, "time_ns", lambda: later)
    read_workload([child.pid], hashes=cache)
    warm = read_workload([child.pid], hashes=cache)
    assert (warm.hashed, warm.reused) == (0, len(warm.files))
    # rewritten in place with its size and mtime kept: the ctime moves, it is read again
    before = data.stat()
    with data.open("r+b") as handle:
        handle.write(b"b" * 8192)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    again = read_workload([child.pid], hashes=cache)
    assert files_of(again, child.pid)[str(data)].sha256 == sha256(data) != old
    assert again.hashed == 1


@pytest.fixture
def cgroup() -> Iterator[tuple[Path, str]]:
    """A cgroup named like a container's (cgroup v2 where /sys/fs/cgroup is one, else v1's pids
    hierarchy), removed afterwards."""
    container_id = hashlib.sha256(os.urandom(8)).hexdigest()
    unified = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if unified else Path("/sys/fs/cgroup/pids")
    path = base / f"lockd-test-{container_id}"
    path.mkdir()
    yield path, container_id
    for _ in range(100):
        try:
            path.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def test_a_containers_processes_are_its_cgroups_members_but_lockds_exec(
    spawn: Spawn, cgroup: tuple[Path, str]
) -> None:
    path, container_id = cgroup
    own = ["unshare", "--mount"]  # a mount namespace of its own, as a container's processes have
    init = spawn(SLEEP, prefix=own)
    worker = spawn(SLEEP, prefix=own)
    probe = spawn(SLEEP, prefix=own)
    entering = spawn(SLEEP)  # still in the host's namespace: a docker exec on its way in
    for process in (init, worker, probe, entering):
        (path / "cgroup.procs").write_text(str(process.pid))
    try:
        pids, incomplete = container_processes(init.pid, container_id, exclude=[probe.pid])
        assert (pids, incomplete) == ([init.pid, *sorted([worker.pid, entering.pid])], None)
        found = reader.read_container_workload(
            {"Id": container_id, "State": {"Pid": init.pid}},
            "container test",
            exclude=[probe.pid],
        )
        assert [(p.pid, p.origin) for p in found.processes] == [
            (init.pid, "init"),
            (worker.pid, "exec"),
        ]
        assert [(s.pid, s.reason) for s in found.skipped] == [
            (probe.pid, "excluded"),
            (entering.pid, "transit"),
        ]
    finally:
        for process in (init, worker, probe, entering):
            process.kill()
            process.wait()


def test_nothing_is_opened_by_name_inside_the_target(
    spawn: Spawn, monkeypatch: pytest.MonkeyPatch
) -> None:
    child = spawn(SLEEP, env={"LD_PRELOAD": LIBZ})
    opened: list[str] = []
    real_open = os.open

    def watch(path: str, *args: object, **kw: object) -> int:
        opened.append(str(path))
        return real_open(path, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(reader.os, "open", watch)
    read_workload([child.pid])
    assert opened
    assert all(
        p.startswith((f"/proc/{child.pid}/map_files/", f"/proc/{child.pid}/exe")) for p in opened
    )
