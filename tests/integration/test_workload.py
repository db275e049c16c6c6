"""The running workload on the real daemon (#17): `lockd record` keeps what a container's processes
run and map, `lockd verify` judges it in the `workload` check, read on the host before lockd's
own probe runs. A launcher's LD_PRELOAD or CUBLAS_WORKSPACE_CONFIG given only to the job, a
library deleted, replaced or altered after the job loaded it fail, naming the variable or the
file; an untouched workload, a torchrun job of two workers and two Jupyter kernels that ran a
notebook pass, grouped by what they run; a probe report taken from the probe cache never carries
an old workload."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

Lockd = Callable[..., subprocess.CompletedProcess[str]]
PYTHON = "/usr/bin/python3.11"
LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
LIBBZ2 = "/usr/lib/x86_64-linux-gnu/libbz2.so.1.0.4"
JOB = "import zlib, time; print('ready', flush=True); time.sleep(1e6)"
LOADER = """
import ctypes, os, sys, time
print('ready', flush=True)
while not os.path.exists('/tmp/go'):
    time.sleep(0.05)
library = ctypes.CDLL(sys.argv[1])
print('loaded', flush=True)
time.sleep(1e6)
"""


def wait_for_log(container: Any, line: str, count: int = 1, deadline: float = 180.0) -> None:
    end = time.monotonic() + deadline
    while container.logs().decode("utf-8", "replace").count(line) < count:
        container.reload()
        if container.status != "running" or time.monotonic() > end:
            logs = container.logs().decode("utf-8", "replace")[-3000:]
            pytest.fail(f"{container.name} ({container.status}) never printed {line!r}: {logs}")
        time.sleep(0.1)


def pid_of(container: Any) -> int:
    """The host pid of the container's init process, as the daemon says now."""
    container.reload()
    return int(container.attrs["State"]["Pid"])


def sh(container: Any, command: str) -> str:
    code, output = container.exec_run(["sh", "-c", command])
    assert code == 0, output.decode()
    return str(output.decode())


class Lockdrun:
    """`lockd record` and `lockd verify --json` with a key pair and a cache directory of this
    test's own."""

    def __init__(self, lockd: Lockd, keypair: tuple[Path, Path], tmp: Path) -> None:
        self.lockd, self.keypair, self.tmp = lockd, keypair, tmp
        self.env = {"LOCKD_CACHE_DIR": str(tmp / "cache")}

    def record(self, target: str, name: str = "m.dsse.json") -> Path:
        out = self.tmp / name
        made = self.lockd("record", target, "--key", self.keypair[0], "--output", out, env=self.env)
        assert made.returncode == 0, made.stdout + made.stderr
        return out

    def verify(self, target: str, manifest: Path, *extra: str) -> tuple[int, dict[str, Any]]:
        result = self.lockd(
            "verify", target, "--manifest", manifest, "--key", self.keypair[1], "--json", *extra,
            env=self.env,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)


@pytest.fixture
def lockdrun(lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path) -> Lockdrun:
    return Lockdrun(lockd, keypair, tmp_path)


def check(report: dict[str, Any], check_id: str) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == check_id]
    return found


def failing(report: dict[str, Any]) -> list[str]:
    return [c["id"] for c in report["checks"] if c["status"] == "fail"]


def findings(report: dict[str, Any], *keys: str) -> list[tuple[Any, ...]]:
    """The workload check's findings as tuples of ``keys`` (kind, then name by default)."""
    wanted = keys or ("kind", "name")
    return [tuple(f.get(k) for k in wanted) for f in check(report, "workload")["findings"]]


def recorded_workload(envelope: Path) -> dict[str, Any]:
    """The workload a signed manifest carries (its Statement's predicate)."""
    payload = json.loads(envelope.read_text())["payload"]
    statement = json.loads(base64.b64decode(payload))
    assert statement["predicateType"] == "https://lockd.dev/manifest/v3"
    workload: dict[str, Any] = statement["predicate"]["observation"]["workload"]
    return workload


def groups(workload: dict[str, Any]) -> dict[str, int]:
    found: dict[str, int] = {}
    for process in workload["processes"]:
        found[process["group"]] = found.get(process["group"], 0) + 1
    return found


@pytest.fixture
def job(app_image: str, run_container: Callable[..., Any]) -> Callable[..., Any]:
    """``job(prefix="")``: a running container of the app image whose process is ``python3 -c
    JOB`` (it imports zlib and sleeps), started by ``sh -c 'PREFIX exec python3 -c ...'``."""

    def _job(prefix: str = "") -> Any:
        command = f'{prefix} exec python3 -c "{JOB}"'.strip()
        container = run_container(app_image, command=["sh", "-c", command])
        wait_for_log(container, "ready")
        return container

    return _job


# --- (f) an untouched workload, and (a), (c): what a launcher gives only the job ---------------


def test_an_untouched_workload_is_recorded_and_passes(
    job: Callable[..., Any], lockdrun: Lockdrun
) -> None:
    """The manifest carries the job's workload (predicate v3), read before lockd's probe ran:
    one process, no exec session; verifying it again passes, the second time with the probe's
    report and the files' digests taken from the caches, the workload read anew."""
    running = job()
    manifest = lockdrun.record(f"container:{running.name}")
    workload = recorded_workload(manifest)
    assert workload.get("not_examined") is None
    assert groups(workload) == {f"{PYTHON} -c": 1}
    [process] = workload["processes"]
    assert (process["pid"], process["origin"]) == (pid_of(running), "init")
    assert workload.get("skipped", []) == []  # lockd's own probe was not running yet
    assert LIBZ.replace("libz.so.1", "libz.so.1.2.13") in {f["path"] for f in workload["files"]}
    for _ in range(2):
        code, report = lockdrun.verify(running.name, manifest)
        assert code == 0, failing(report)
        workload_check = check(report, "workload")
        assert workload_check["status"] == "pass"
        assert workload_check["message"].startswith(
            "the running workload is the image's and the manifest's (1 process(es) in 1 group(s)"
        )
        assert workload_check.get("findings", []) == []
    kept = Path(lockdrun.env["LOCKD_CACHE_DIR"]) / "workload" / "workload-hashes.json"
    assert kept.is_file()  # the files' digests, for the next run


@pytest.mark.parametrize(
    ("prefix", "variable", "value"),
    [
        (f"LD_PRELOAD={LIBZ}", "LD_PRELOAD", LIBZ),
        ("CUBLAS_WORKSPACE_CONFIG=:4096:8", "CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
    ],
    ids=["LD_PRELOAD", "CUBLAS_WORKSPACE_CONFIG"],
)
def test_a_variable_a_launcher_gives_only_the_job_fails_workload(
    job: Callable[..., Any], lockdrun: Lockdrun, prefix: str, variable: str, value: str
) -> None:
    """The issue's launcher: ``sh -c 'LD_PRELOAD=... exec python3 -c ...'`` of the recorded
    image, beside a manifest recorded from the same job without it. The daemon's configuration
    and a fresh probe do not show the variable (`env` passes); the job's own process does."""
    manifest = lockdrun.record(f"container:{job().name}")
    launched = job(prefix)
    code, report = lockdrun.verify(launched.name, manifest)
    assert code == 1
    assert failing(report) == ["workload"]
    assert check(report, "env")["status"] == "pass"
    pid = pid_of(launched)
    assert findings(report, "kind", "name", "observed", "message") == [
        (
            "env-added",
            variable,
            value,
            f"pid {pid} ({PYTHON} -c), read from the process's own memory: not as the "
            "recorded group has it",
        )
    ]


# --- (b) a library deleted, replaced or altered after the job loaded it -----------------------

ADDED = "/opt/lib/libcopy.so.1"


@pytest.mark.parametrize("how", ["deleted", "replaced", "altered"])
def test_a_library_changed_on_disk_after_load_fails_workload(
    app_image: str, run_container: Callable[..., Any], lockdrun: Lockdrun, how: str
) -> None:
    """A job loads a library with ctypes (a copy the container added, or the image's libbz2),
    then the file is deleted, replaced (a new file renamed over it) or altered in place (the
    image's file, copied up): the bytes the job runs are hashed through the kernel's link to
    the mapping, and the check names the file."""
    manifest = lockdrun.record(f"image:{app_image}")
    library = LIBBZ2 if how == "altered" else ADDED
    running = run_container(app_image, command=["python3", "-c", LOADER, library])
    wait_for_log(running, "ready")
    if how != "altered":
        sh(running, f"mkdir -p /opt/lib && cp {LIBZ} {ADDED}")
    sh(running, "touch /tmp/go")
    wait_for_log(running, "loaded")
    loaded = sh(running, f"sha256sum {library}").split()[0]
    if how == "deleted":
        sh(running, f"rm {ADDED}")
    elif how == "replaced":
        sh(running, f"cp {LIBBZ2} /opt/lib/new && mv /opt/lib/new {ADDED}")
    else:
        sh(running, f"cp {LIBBZ2} /tmp/b && printf x >> /tmp/b && cat /tmp/b > {LIBBZ2}")
    code, report = lockdrun.verify(running.name, manifest)
    assert code == 1
    pid = pid_of(running)
    failed = findings(report, "kind", "path", "observed", "message")
    if how == "altered":
        assert failing(report) == ["filesystem", "workload"]
        now = sh(running, f"sha256sum {LIBBZ2}").split()[0]
        assert now != loaded
        [altered] = [f for f in check(report, "workload")["findings"] if f["kind"] == "altered"]
        # the kernel reopens an overlayfs mapping through the overlay's path: once the image's
        # file is copied up, /proc/PID/map_files reads the container's new copy, not the image's
        # bytes the job still runs (docs/workload.md); `altered` rests on the upper directory
        assert (altered["path"], altered["expected"], altered["observed"]) == (
            LIBBZ2,
            f"sha256:{now}",
            f"sha256:{now}",
        )
        assert altered["message"] == (
            f"pid {pid} ({PYTHON} -c): a file the container changed since its image"
        )
    else:
        assert failing(report) == (["workload"] if how == "deleted" else ["filesystem", "workload"])
        assert failed[0] == (
            "deleted",
            ADDED,
            f"sha256:{loaded}",
            f"pid {pid} ({PYTHON} -c): deleted or replaced on disk after it was mapped: the "
            "process runs bytes that are no longer at that path",
        )
    assert [f[0] for f in failed] == [failed[0][0], "no-record"]  # recorded from the image


# --- a probe report from the probe cache never carries an old workload --------------------------

SPAWNER = f"""
import os, signal, subprocess, time
def spawn(*_):
    subprocess.Popen(['python3', '-c', 'import time; time.sleep(1e6)'],
                     env={{**os.environ, 'LD_PRELOAD': '{LIBZ}'}})
signal.signal(signal.SIGUSR1, spawn)
print('ready', flush=True)
while True:
    time.sleep(1e6)
"""


def exec_creates(docker_client: Any, container: Any, since: int) -> int:
    events = docker_client.events(
        since=since,
        until=int(time.time()) + 1,
        decode=True,
        filters={"container": container.id, "event": "exec_create"},
    )
    return len(list(events))


def test_a_reused_probe_report_never_carries_an_old_workload(
    app_image: str, run_container: Callable[..., Any], lockdrun: Lockdrun, docker_client: Any
) -> None:
    """Nothing the probe can see changes when the init process starts a job with LD_PRELOAD
    (no file written, no mount: the probe cache's fingerprint holds, no probe runs), but the
    workload is read anew and fails."""
    running = run_container(app_image, command=["python3", "-c", SPAWNER])
    wait_for_log(running, "ready")
    manifest = lockdrun.record(running.name)
    assert lockdrun.verify(running.name, manifest)[0] == 0  # the probe's report is kept
    running.kill(signal="SIGUSR1")
    deadline = time.monotonic() + 60
    while len(running.top()["Processes"]) < 2:
        assert time.monotonic() < deadline, running.top()
        time.sleep(0.1)
    time.sleep(1.05 - time.time() % 1)  # the daemon's events are filtered by whole seconds
    since = int(time.time())
    code, report = lockdrun.verify(running.name, manifest)
    assert exec_creates(docker_client, running, since) == 0  # the kept report, no probe
    assert code == 1
    assert failing(report) == ["workload"]
    # the job runs as the recorded group (python3 -c): judged against that group's variables
    assert findings(report, "kind", "name", "observed") == [("env-added", "LD_PRELOAD", LIBZ)]


# --- (d) a torchrun job of two workers (gloo on CPU) --------------------------------------------

TORCH_JOB = """
import time
import torch
import torch.distributed as dist

dist.init_process_group("gloo")
value = torch.ones(4) * (dist.get_rank() + 1)
dist.all_reduce(value)
model = torch.nn.Linear(4, 2)
model(value).sum().backward()
print("ready", dist.get_rank(), value.tolist(), flush=True)
time.sleep(1e6)
"""


@pytest.fixture
def torchrun(
    torch_cpu_image: str, run_container: Callable[..., Any]
) -> Iterator[Callable[[], Any]]:
    def _start() -> Any:
        command = 'printf "%s" "$JOB" > /tmp/job.py && exec torchrun --nproc-per-node 2 /tmp/job.py'
        container = run_container(
            torch_cpu_image, command=["sh", "-c", command], environment={"JOB": TORCH_JOB}
        )
        wait_for_log(container, "ready", count=2, deadline=300)
        return container

    yield _start


def test_a_torchrun_job_is_grouped_and_verifies_clean(
    torchrun: Callable[[], Any], lockdrun: Lockdrun
) -> None:
    """torchrun and its two workers (each with its own RANK, LOCAL_RANK, MASTER_PORT,
    TORCHELASTIC_* : the launcher's variables by design) are two groups: the launcher, and the
    workers as one. A second run of the same job verifies clean against the first's manifest."""
    first = torchrun()
    manifest = lockdrun.record(f"container:{first.name}")
    workload = recorded_workload(manifest)
    assert groups(workload) == {
        f"{PYTHON} /opt/venv/bin/torchrun": 1,
        f"{PYTHON} /tmp/job.py": 2,
    }
    workers = [p for p in workload["processes"] if p["group"] == f"{PYTHON} /tmp/job.py"]
    assert {p["origin"] for p in workers} == {"init"}
    code, report = lockdrun.verify(first.name, manifest)
    assert code == 0, [c for c in report["checks"] if c["status"] == "fail"]
    second = torchrun()
    code, report = lockdrun.verify(second.name, manifest)
    assert code == 0, [c for c in report["checks"] if c["status"] == "fail"]
    workload_check = check(report, "workload")
    assert workload_check["status"] == "pass"
    assert "(3 process(es) in 2 group(s)" in workload_check["message"]


# --- (e) Jupyter kernels running a notebook, started as a notebook server starts them ----------

RUNNER = f"{PYTHON} /opt/notebook/run_notebook.py"
KERNEL = f"{PYTHON} -m ipykernel_launcher"
RUNTIME = "/root/.local/share/jupyter/runtime"
LIBDB = "/usr/lib/x86_64-linux-gnu/libdb-5.3.so"  # dbm.ndbm's: the notebook's import, no one else's
RAN = re.compile(  # what run_notebook.py prints for a kernel that ran the notebook's cells
    rf"^ran 3 cells in ({re.escape(RUNTIME)}/kernel-[0-9a-f-]{{36}}\.json) "
    "sum 23730841060 dbm Berkeley DB$",
    re.MULTILINE,
)


@pytest.fixture
def notebook(
    app_image: str, build_image: Callable[..., str], run_container: Callable[..., Any]
) -> Callable[[str, str], Any]:
    """``notebook(session, unbuffered)``: a container of the jupyter test image
    (tests/assets/images/jupyter: ipykernel and jupyter_client from $LOCKD_WHEELS) whose init
    process is run_notebook.py, a notebook server's part: jupyter_client's MultiKernelManager
    starts two real kernels (``python -m ipykernel_launcher -f RUNTIME/kernel-ID.json``, with
    JPY_PARENT_PID and JPY_SESSION_NAME=/tmp/SESSION.ipynb, the notebook's copy), runs the
    notebook's three code cells in each through execute requests, prints what each printed, and
    keeps them running. The container's PYTHONUNBUFFERED is ``unbuffered``."""
    image = build_image("jupyter", BASE=app_image)

    def _start(session: str, unbuffered: str) -> Any:
        path = f"/tmp/{session}.ipynb"
        command = (
            f"cp /opt/notebook/analysis.ipynb {path} "
            f"&& exec python3 /opt/notebook/run_notebook.py {path} 2"
        )
        container = run_container(
            image, command=["sh", "-c", command], environment={"PYTHONUNBUFFERED": unbuffered}
        )
        wait_for_log(container, "ready")
        return container

    return _start


def connection_files(container: Any) -> list[str]:
    """The connection files of the kernels that ran the notebook, as run_notebook.py printed."""
    found = RAN.findall(container.logs().decode("utf-8", "replace"))
    assert len(set(found)) == 2, container.logs().decode("utf-8", "replace")[-3000:]
    return sorted(found)


def kernel_pids(container: Any) -> list[int]:
    """The host pids of the container's kernels (the daemon's ``top``)."""
    top = container.top()
    pid, command = top["Titles"].index("PID"), top["Titles"].index("CMD")
    return [int(p[pid]) for p in top["Processes"] if "-m ipykernel_launcher" in p[command]]


def launcher_env(pid: int) -> dict[str, str]:
    """The JPY_* variables and PYTHONUNBUFFERED of a process (its /proc/PID/environ)."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    pairs = dict(e.split("=", 1) for e in entries if "=" in e)
    return {k: v for k, v in pairs.items() if k.startswith("JPY_") or k == "PYTHONUNBUFFERED"}


def test_jupyter_kernels_are_one_group_and_verify_clean(
    notebook: Callable[[str, str], Any], lockdrun: Lockdrun
) -> None:
    """Two kernels that ran a notebook, recorded with their server's process; a second session
    (other connection files, JPY_SESSION_NAME and PYTHONUNBUFFERED: the launcher's) verifies
    clean against that manifest, its two kernels judged as the recorded group."""
    first = notebook("one", "1")
    files = connection_files(first)
    assert [launcher_env(pid) for pid in kernel_pids(first)] == [
        {"JPY_PARENT_PID": "1", "JPY_SESSION_NAME": "/tmp/one.ipynb", "PYTHONUNBUFFERED": "1"}
    ] * 2
    manifest = lockdrun.record(f"container:{first.name}")
    workload = recorded_workload(manifest)
    assert workload.get("not_examined") is None
    assert workload.get("skipped", []) == []
    assert groups(workload) == {RUNNER: 1, KERNEL: 2}
    [runner] = [p for p in workload["processes"] if p["group"] == RUNNER]
    kernels = [p for p in workload["processes"] if p["group"] == KERNEL]
    assert (runner["pid"], runner["origin"]) == (pid_of(first), "init")
    assert sorted(p["command"] for p in kernels) == [
        ["/opt/venv/bin/python3", "-m", "ipykernel_launcher", "-f", f] for f in files
    ]
    for kernel in kernels:
        assert (kernel["ppid"], kernel["origin"]) == (runner["pid"], "init")
        assert kernel["env"] == {"PYTHONUNBUFFERED": "1"}  # JPY_* are not tracked variables
    mapped = [{workload["files"][i]["path"] for i in p["files"]} for p in (runner, *kernels)]
    assert [LIBDB in paths for paths in mapped] == [False, True, True]  # the notebook ran there

    second = notebook("two", "0")
    assert set(connection_files(second)).isdisjoint(files)
    assert [launcher_env(pid) for pid in kernel_pids(second)] == [
        {"JPY_PARENT_PID": "1", "JPY_SESSION_NAME": "/tmp/two.ipynb", "PYTHONUNBUFFERED": "0"}
    ] * 2
    code, report = lockdrun.verify(second.name, manifest)
    assert code == 0, failing(report)
    statuses = {c: check(report, c)["status"] for c in ("image", "env", "filesystem", "workload")}
    assert statuses == dict.fromkeys(statuses, "pass")
    workload_check = check(report, "workload")
    assert workload_check["message"].startswith(
        "the running workload is the image's and the manifest's (3 process(es) in 2 group(s)"
    )
    assert workload_check.get("findings", []) == []
