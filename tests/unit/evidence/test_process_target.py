"""The process target, ``process:PID`` (lockd.evidence.targets.process, #17), on real processes
this test starts: a job running from a venv recorded and verified through the command line (it
passes; the same program with ``LD_PRELOAD``, or with a copy of a library it maps loaded from
another directory, fails ``workload``), the interpreter taken from the command line and proven
to be the running program, the probe run in the process's environment and as its user, and
every bad input with its exact error and exit code. Reading a process's mapped files needs root:
those tests ask for ``root_required``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from child_processes import dying_with_parent

from lockd.evidence.cache import hashes
from lockd.evidence.targets import process as process_target
from lockd.model.workload import Workload

LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"
SYSTEM_PYTHON = "/usr/bin/python3"
JOB = "import zlib, time; print('ready', flush=True); time.sleep(600)"
SLEEP = "import time; print('ready', flush=True); time.sleep(600)"
JOB_ENV = {"PATH": "/usr/bin:/bin", "CUDA_MODULE_LOADING": "LAZY", "HOME": "/nonexistent"}

Lockd = Callable[..., subprocess.CompletedProcess[str]]
Start = Callable[..., subprocess.Popen[str]]


def said(result: subprocess.CompletedProcess[str]) -> str:
    """What lockd printed on stderr, with the terminal's line breaks undone."""
    return " ".join(result.stderr.split())


def refused(result: subprocess.CompletedProcess[str], code: int, message: str) -> None:
    assert (result.returncode, said(result)) == (code, f"lockd: error: {message}")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv (with the system site-packages) whose ``bin/python`` links to the base
    interpreter: /proc/PID/exe of a job started from it names the base, not the venv."""
    path = tmp_path_factory.mktemp("job") / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(path)],
        check=True,
    )
    return path


def _start(
    started: list[subprocess.Popen[str]],
    argv: Sequence[str],
    env: dict[str, str] | None,
    **kw: object,
) -> subprocess.Popen[str]:
    """``argv`` (it prints "ready" once set up, then sleeps), dying with this test process
    (unless ``executable`` runs in place of ``argv[0]``)."""
    process = subprocess.Popen(
        argv if "executable" in kw else dying_with_parent(argv),
        stdout=subprocess.PIPE,
        text=True,
        env={**JOB_ENV, **(env or {})},
        **kw,  # type: ignore[call-overload]
    )
    started.append(process)
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.strip() == "ready", line
    return process


def _stop(started: list[subprocess.Popen[str]]) -> None:
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.fixture
def start(venv: Path, tmp_path: Path) -> Iterator[Start]:
    """``start(env=None, argv=None, **popen)``: the job (``venv/bin/python -c JOB`` from the
    test's folder unless ``argv`` says otherwise), killed and reaped afterwards."""
    started: list[subprocess.Popen[str]] = []

    def run(
        env: dict[str, str] | None = None, argv: Sequence[str] | None = None, **kw: object
    ) -> subprocess.Popen[str]:
        kw.setdefault("cwd", tmp_path)
        return _start(started, argv or [str(venv / "bin" / "python"), "-c", JOB], env, **kw)

    yield run
    _stop(started)


def observed(lockd: Lockd, ref: str, *args: object, **kw: object) -> dict[str, object]:
    result = lockd("observe", ref, *args, **kw)
    assert result.returncode == 0, result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    return document


def probe_python(document: dict[str, object]) -> dict[str, str]:
    found: dict[str, str] = document["probe"]["python"]  # type: ignore[index]
    return found


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ref",
    ["process:", "process:abc", "process:-1", "process:0", "process:+12", "process: 12",
     "process:12abc", "process:1.5", "process:12345678901"],
)  # fmt: skip
def test_a_reference_that_is_no_process_id_is_a_usage_error(lockd: Lockd, ref: str) -> None:
    refused(
        lockd("observe", ref),
        2,
        f"target {ref!r}: name a process by its ID, a positive decimal number (process:1234; "
        "`ps -e` lists them)",
    )


def test_lockd_itself_is_a_usage_error(lockd: Lockd) -> None:
    me = os.getpid()  # the lockd fixture runs lockd in this process
    refused(
        lockd("observe", f"process:{me}"),
        2,
        f"process:{me} is this lockd itself: name the job's process (`ps -e` lists them)",
    )


def test_no_such_process(lockd: Lockd) -> None:
    pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    refused(
        lockd("observe", f"process:{pid}"),
        3,
        f"process:{pid}: no such process on this host (it exited, or runs in another PID "
        "namespace); `ps -e` lists the running ones",
    )


def test_a_zombie(lockd: Lockd) -> None:
    child = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        refused(
            lockd("observe", f"process:{child.pid}"),
            3,
            f"process:{child.pid} is a zombie: it exited and its parent has not reaped it, so "
            "nothing runs there to inspect",
        )
    finally:
        child.wait()


def test_a_program_that_is_not_python(lockd: Lockd) -> None:
    child = subprocess.Popen(["sleep", "600"])
    try:
        exe = os.readlink(f"/proc/{child.pid}/exe")
        refused(
            lockd("observe", f"process:{child.pid}"),
            3,
            f"process:{child.pid} runs {exe}, not a Python interpreter: name the job's Python "
            "process (a child of this one?), or give its interpreter with --python PATH",
        )
    finally:
        child.kill()
        child.wait()


def test_a_command_line_that_names_another_program_is_refused_and_python_names_it(
    lockd: Lockd, start: Start, venv: Path
) -> None:
    # argv[0] says the system's Python; the kernel runs the venv's base interpreter (which
    # then looks for its standard library where argv[0] says: no zlib there, so no JOB)
    python = str(venv / "bin" / "python")
    job = start(argv=[SYSTEM_PYTHON, "-c", SLEEP], executable=python)
    exe = os.readlink(f"/proc/{job.pid}/exe")
    refused(
        lockd("observe", f"process:{job.pid}"),
        3,
        f"process:{job.pid}: its command line names {SYSTEM_PYTHON!r} ({SYSTEM_PYTHON}), which "
        f"is not the program it runs ({exe}, /proc/{job.pid}/exe): the command line was "
        "rewritten, or the file replaced since it started; give its interpreter with --python "
        "PATH",
    )
    assert (
        probe_python(observed(lockd, f"process:{job.pid}", "--python", python))["executable"]
        == python
    )
    # a relative --python is lockd's (its working directory), made absolute: the probe starts in /
    relative = observed(lockd, f"process:{job.pid}", "--python", "bin/python", cwd=venv)
    assert probe_python(relative)["executable"] == python


def test_a_bare_name_is_looked_up_on_the_processs_own_path(
    lockd: Lockd, start: Start, venv: Path
) -> None:
    python = str(venv / "bin" / "python")
    job = start(argv=["python", "-c", JOB], executable=python, env={"PATH": f"{venv}/bin:/usr/bin"})
    found = probe_python(observed(lockd, f"process:{job.pid}"))
    assert (found["executable"], found["prefix"]) == (python, str(venv))


def test_a_relative_path_is_made_absolute_against_its_working_directory(
    lockd: Lockd, start: Start, venv: Path
) -> None:
    job = start(argv=["venv/bin/python", "-c", JOB], cwd=venv.parent)
    found = probe_python(observed(lockd, f"process:{job.pid}"))
    assert found["executable"] == str(venv / "bin" / "python")


# --- record and verify a job running from a venv (root: map_files) ------------------------------


@pytest.fixture(scope="module")
def recorded(
    root_required: None,
    venv: Path,
    lockd: Lockd,
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[int, Path]]:
    """(the job's pid, its manifest): the job started from the venv, recorded."""
    folder = tmp_path_factory.mktemp("recorded")
    started: list[subprocess.Popen[str]] = []
    job = _start(started, [str(venv / "bin" / "python"), "-c", JOB], None, cwd=folder)
    manifest = folder / "job.dsse.json"
    result = lockd("record", f"process:{job.pid}", "--key", keypair[0], "--output", manifest)
    assert result.returncode == 0, result.stderr
    yield job.pid, manifest
    _stop(started)


def verify(lockd: Lockd, pid: int, manifest: Path, key: Path) -> tuple[int, dict[str, dict]]:  # type: ignore[type-arg]
    result = lockd("verify", f"process:{pid}", "--manifest", manifest, "--key", key, "--json")
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert report["target"] == {"kind": "process", "ref": str(pid)}
    return result.returncode, {c["id"]: c for c in report["checks"]}


def test_a_job_from_a_venv_recorded_then_verified_passes(
    lockd: Lockd, recorded: tuple[int, Path], keypair: tuple[Path, Path], venv: Path
) -> None:
    pid, manifest = recorded
    code, checks = verify(lockd, pid, manifest, keypair[1])
    assert code == 0, checks
    statuses = {name: checks[name]["status"] for name in ("workload", "packages", "python", "env")}
    assert statuses == dict.fromkeys(statuses, "pass")
    assert checks["workload"]["message"].startswith("the running workload is the manifest's")
    assert checks["python"]["message"].endswith(f"at {venv}/bin/python")  # not /proc/PID/exe's
    assert (checks["image"]["status"], checks["filesystem"]["status"]) == ("skip", "skip")


def test_the_probe_runs_with_the_venvs_python_in_the_processs_environment(
    lockd: Lockd, recorded: tuple[int, Path], venv: Path
) -> None:
    pid, _ = recorded
    document = observed(lockd, f"process:{pid}")
    assert "host" not in document  # no image: no host evidence
    found = probe_python(document)
    assert (found["executable"], found["prefix"]) == (f"{venv}/bin/python", str(venv))
    # the job's variable, not lockd's (this test's environment has none of it)
    assert "CUDA_MODULE_LOADING" not in os.environ
    assert document["probe"]["env"] == {"CUDA_MODULE_LOADING": "LAZY"}  # type: ignore[index]
    [process] = document["workload"]["processes"]  # type: ignore[index]
    assert (process["pid"], process["env_source"]) == (pid, "process-memory")
    assert process["env"] == {"CUDA_MODULE_LOADING": "LAZY"}


def test_the_same_program_with_ld_preload_fails_workload_naming_the_library(
    lockd: Lockd, recorded: tuple[int, Path], keypair: tuple[Path, Path], start: Start
) -> None:
    job = start(env={"LD_PRELOAD": LIBZ})
    code, checks = verify(lockd, job.pid, recorded[1], keypair[1])
    assert (code, checks["workload"]["status"]) == (1, "fail")
    found = [(f["kind"], f["name"], f["observed"]) for f in checks["workload"]["findings"]]
    assert found == [("env-added", "LD_PRELOAD", LIBZ)]  # libz itself is the recorded file


def test_a_copy_of_a_library_loaded_from_another_path_fails_naming_both_paths(
    lockd: Lockd,
    recorded: tuple[int, Path],
    keypair: tuple[Path, Path],
    start: Start,
    tmp_path: Path,
) -> None:
    original = os.path.realpath(LIBZ)  # the path the kernel prints for the recorded mapping
    copies = tmp_path / "lib"
    copies.mkdir()
    copy = copies / "libz.so.1"
    shutil.copyfile(original, copy)
    job = start(env={"LD_LIBRARY_PATH": str(copies)})
    assert str(copy) in Path(f"/proc/{job.pid}/maps").read_text()  # the loader took the copy
    code, checks = verify(lockd, job.pid, recorded[1], keypair[1])
    assert (code, checks["workload"]["status"]) == (1, "fail")
    [finding] = [f for f in checks["workload"]["findings"] if f["kind"] == "not-in-image"]
    digest = f"sha256:{hashlib.sha256(Path(original).read_bytes()).hexdigest()}"
    assert (finding["path"], finding["observed"]) == (str(copy), digest)
    assert finding["expected"] == f"{original} {digest}"
    assert f"the same bytes were recorded at {original}" in finding["message"]


# --- the digests verify keeps across runs (root) -----------------------------------------------

LOAD = """
import ctypes, sys, time
library = ctypes.CDLL(sys.argv[1])
print('ready', flush=True)
time.sleep(600)
"""


def test_verify_takes_the_digests_its_last_run_kept_and_reads_a_library_rewritten_in_place(
    root_required: None,
    lockd: Lockd,
    keypair: tuple[Path, Path],
    start: Start,
    venv: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`verify process:PID` keeps the digests of the files the job maps (the kept-store under
    LOCKD_CACHE_DIR, as for a container) and takes them on its next run while each file's guard
    holds; `record` and `verify --no-cache` neither take nor keep them. A library the job
    loaded, then rewritten in place with its size and mtime put back (its ctime moved), is read
    again through the mapping: the new bytes fail `workload`, never hidden by a kept digest."""
    library = tmp_path / "libcopy.so.1"
    shutil.copyfile(os.path.realpath(LIBZ), library)
    loaded = hashlib.sha256(library.read_bytes()).hexdigest()
    job = start(argv=[str(venv / "bin" / "python"), "-c", LOAD, str(library)])
    read: list[Workload] = []
    real = process_target.read_workload

    def reading(*args: object, **kw: object) -> Workload:
        found = real(*args, **kw)  # type: ignore[arg-type]
        read.append(found)
        return found

    monkeypatch.setattr(process_target, "read_workload", reading)
    env = {"LOCKD_CACHE_DIR": str(tmp_path / "cache")}
    kept = tmp_path / "cache" / "workload" / hashes.ENTRY
    manifest = tmp_path / "job.dsse.json"
    made = lockd("record", f"process:{job.pid}", "--key", keypair[0], "--output", manifest, env=env)
    assert made.returncode == 0, made.stderr
    assert not kept.exists()

    def verify(*extra: str) -> tuple[int, dict[str, Any], Workload]:
        result = lockd(
            "verify", f"process:{job.pid}", "--manifest", manifest, "--key", keypair[1],
            "--json", *extra, env=env,
        )  # fmt: skip
        assert result.returncode in (0, 1), result.stderr
        [workload] = [c for c in json.loads(result.stdout)["checks"] if c["id"] == "workload"]
        return result.returncode, workload, read[-1]

    def mapped(workload: Workload) -> str | None:
        [entry] = [f for f in workload.files if f.path == str(library)]
        return entry.sha256

    # the copy was just written: a file changed in the last RACY_NS is not kept
    time.sleep(max(0, library.stat().st_ctime_ns + hashes.RACY_NS - time.time_ns()) / 1e9 + 0.05)
    code, check, first = verify()
    assert (code, check["status"]) == (0, "pass")
    assert (first.hashed, first.reused) == (len(first.files), 0)
    assert kept.is_file()
    code, check, warm = verify()
    assert (code, check["status"]) == (0, "pass")
    assert (warm.hashed, warm.reused) == (0, len(warm.files)) == (0, len(first.files))
    assert mapped(warm) == loaded
    before = kept.read_bytes()
    code, _, cold = verify("--no-cache")
    assert code == 0
    assert (cold.hashed, cold.reused) == (len(cold.files), 0)
    assert kept.read_bytes() == before

    stat = library.stat()
    data = bytearray(library.read_bytes())
    data[-1] ^= 0xFF
    with library.open("r+b") as handle:
        handle.write(bytes(data))
    os.utime(library, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    now = library.stat()
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (
        stat.st_ino,
        stat.st_size,
        stat.st_mtime_ns,
    )
    code, check, again = verify()
    rewritten = hashlib.sha256(bytes(data)).hexdigest()
    assert mapped(again) == rewritten != loaded
    assert (again.hashed, again.reused) == (1, len(again.files) - 1)
    assert (code, check["status"]) == (1, "fail")
    found = [(f["kind"], f["path"], f["expected"], f["observed"]) for f in check["findings"]]
    assert found == [("altered", str(library), f"sha256:{loaded}", f"sha256:{rewritten}")]
    assert len(read) == 5  # one read of the workload a run


# --- processes lockd refuses, or treats with care (root) ----------------------------------------


@pytest.mark.usefixtures("root_required")
def test_a_process_that_exits_while_lockd_reads_it(
    lockd: Lockd, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = start()
    listed = process_target.process_tree

    def list_then_exit(pid: int, proc: str = "/proc") -> list[int]:
        found = listed(pid, proc)
        job.kill()
        job.wait()
        return found

    monkeypatch.setattr(process_target, "process_tree", list_then_exit)
    refused(
        lockd("observe", f"process:{job.pid}"),
        3,
        f"process:{job.pid} exited while lockd read it (or its ID was reused): there is nothing "
        "left to inspect; start the job again and name its new ID",
    )


@pytest.mark.usefixtures("root_required")
def test_another_users_process_without_root(
    lockd: Lockd, start: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = start(argv=[SYSTEM_PYTHON, "-c", JOB], user=65534, group=65534, extra_groups=[], cwd="/")
    monkeypatch.setattr(process_target, "_caller_uid", lambda: 1000)  # lockd as uid 1000
    refused(
        lockd("observe", f"process:{job.pid}"),
        3,
        f"process:{job.pid} belongs to uid 65534 (nobody), not to this user (uid 1000): reading "
        "another user's process needs root; run lockd as root",
    )


@pytest.mark.usefixtures("root_required")
def test_the_probe_runs_as_the_processs_user(lockd: Lockd, start: Start) -> None:
    # A sitecustomize on the job's PYTHONPATH writes down who runs each Python started with the
    # job's environment: the job itself and lockd's probe. Root's lockd must not run code the
    # job's user can write with root's rights.
    folder = Path(tempfile.mkdtemp(prefix="lockd-process-user-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        seen = folder / "seen"
        seen.touch(mode=0o666)
        seen.chmod(0o666)
        (folder / "sitecustomize.py").write_text(
            "import os\n"
            f"with open({str(seen)!r}, 'a') as out:\n"
            "    out.write(f'{os.getuid()} {os.geteuid()} {os.getegid()} {os.getgroups()}\\n')\n"
        )
        job = start(
            argv=[SYSTEM_PYTHON, "-c", JOB],
            env={"PYTHONPATH": str(folder)},
            user=65534,
            group=65534,
            extra_groups=[],
            cwd="/",
        )
        observed(lockd, f"process:{job.pid}")
        assert seen.read_text().splitlines() == ["65534 65534 65534 []"] * 2
    finally:
        shutil.rmtree(folder)


@pytest.mark.usefixtures("root_required")
def test_a_process_in_another_mount_namespace_is_refused(
    lockd: Lockd, start: Start, venv: Path
) -> None:
    job = start(argv=["unshare", "--mount", "--", str(venv / "bin" / "python"), "-c", JOB])
    theirs, ours = os.readlink(f"/proc/{job.pid}/ns/mnt"), os.readlink("/proc/self/ns/mnt")
    assert theirs != ours
    refused(
        lockd("observe", f"process:{job.pid}"),
        3,
        f"process:{job.pid} runs in another mount namespace than lockd ({theirs}; lockd's: "
        f"{ours}), a container's? The paths it maps and its interpreter are not this host's: "
        "verify its container (container:NAME)",
    )


@pytest.mark.usefixtures("root_required")
def test_a_chrooted_process_is_refused(
    lockd: Lockd, start: Start, venv: Path, tmp_path: Path
) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    code = f"import os; os.chroot({str(jail)!r}); os.chdir('/'); {JOB}"
    job = start(argv=[str(venv / "bin" / "python"), "-c", code])
    refused(
        lockd("observe", f"process:{job.pid}"),
        3,
        f"process:{job.pid} runs under another root directory ({jail}: a chroot): the paths it "
        "maps are not this host's, and lockd will not start its probe there",
    )
