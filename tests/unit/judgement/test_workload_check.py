"""The ``workload`` check without processes (#17): constructed Workloads judged against the image
(the host's changes and mounts), the policy (volatile and JIT places, launchers' variables,
env.ignore) and the manifest (its workload, else its configuration and probe), each finding
exact: kind, the file or variable, the pids."""

from __future__ import annotations

from typing import Any

import pytest
from observations import FileChange, Mount, host, manifest, observation, probe

from lockd.judgement.checks.workload import check_workload, tracked_env
from lockd.judgement.compare import compare
from lockd.judgement.policy import Checks, EnvPolicy, Policy, WorkloadPolicy, load_policy
from lockd.model.environment import LoadedLibraries, MappedLibrary
from lockd.model.host import KernelMount, KernelView, TargetInfo
from lockd.model.manifest import Observation
from lockd.model.report import Check, Finding
from lockd.model.workload import (
    MappedFile,
    SkippedProcess,
    Special,
    Workload,
    WorkloadProcess,
)

PYTHON = "/usr/bin/python3.11"
SITE = "/opt/venv/lib/python3.11/site-packages"
TRAIN = f"{PYTHON} /app/train.py"
LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6"
CUDNN = f"{SITE}/nvidia/cudnn/lib/libcudnn.so.9"
STRICT = Policy()


def sha(n: int) -> str:
    return f"{n:064x}"


def mapped(path: str, n: int, **kw: Any) -> MappedFile:
    base: dict[str, Any] = {"path": path, "sha256": sha(n), "executable": True, "size": 10}
    base.update(kw)
    return MappedFile(**base)


FILES = [mapped(PYTHON, 1), mapped(LIBC, 2)]


def proc(pid: int, files: list[int], **kw: Any) -> WorkloadProcess:
    base: dict[str, Any] = {
        "pid": pid,
        "ppid": 1 if pid != 1 else 0,
        "origin": "init",
        "started": 100 + pid,
        "executable": PYTHON,
        "executable_sha256": sha(1),
        "command": ["python3", "/app/train.py", f"--seed={pid}"],
        "group": TRAIN,
        "env": {"CUDA_HOME": "/usr/local/cuda"},
        "files": files,
        "specials": [Special(kind="heap"), Special(kind="device", name="/dev/nvidia0")],
    }
    base.update(kw)
    return WorkloadProcess(**base)


def workload(
    files: list[MappedFile] | None = None,
    processes: list[WorkloadProcess] | None = None,
    **kw: Any,
) -> Workload:
    files = FILES if files is None else files
    processes = [proc(1, list(range(len(files))))] if processes is None else processes
    return Workload(files=files, processes=processes, **kw)


def seen(work: Workload | None, **host_changes: Any) -> Observation:
    return observation(host_evidence=host(**host_changes)).model_copy(update={"workload": work})


def check(
    work: Workload | None,
    recorded: Workload | None = None,
    policy: Policy = STRICT,
    recorded_observation: Observation | None = None,
    **host_changes: Any,
) -> Check:
    base = recorded_observation or observation()
    m = manifest(base.model_copy(update={"workload": recorded}))
    return check_workload(m, seen(work, **host_changes), policy)


def kinds(c: Check) -> list[tuple[str, str | None]]:
    return [(f.kind, f.path or f.name) for f in c.findings]


def only(c: Check, kind: str) -> Finding:
    [found] = [f for f in c.findings if f.kind == kind]
    return found


def test_no_workload_is_a_skip_and_the_check_runs_in_compare() -> None:
    c = check(None)
    assert (c.status, c.evidence) == ("skip", "host")
    assert "were not read" in c.message
    ids = [x.id for x in compare(manifest(), seen(workload()), STRICT)]
    assert ids.index("workload") == ids.index("libraries") + 1


def test_the_images_own_files_and_the_recorded_variables_pass_with_a_note() -> None:
    c = check(workload())
    assert c.status == "pass", c.findings
    assert kinds(c) == [("no-record", None)]
    assert "1 process(es) in 1 group(s), 2 mapped file(s)" in c.message


def test_code_deleted_after_it_was_mapped_fails_naming_the_file_and_pids() -> None:
    files = [*FILES, mapped(f"{SITE}/torch/lib/libtorch_cpu.so", 3, deleted=True)]
    c = check(workload(files, [proc(7, [0, 1, 2]), proc(9, [0, 2])]))
    assert c.status == "fail"
    finding = only(c, "deleted")
    assert finding.path == f"{SITE}/torch/lib/libtorch_cpu.so"
    assert finding.observed == f"sha256:{sha(3)}"
    assert (finding.message or "").startswith(f"pid 7, 9 ({TRAIN}): deleted or replaced")


def test_data_mapped_read_only_is_listed_not_judged() -> None:
    weights = mapped("/data/model.safetensors", 4, executable=False, deleted=True)
    big = mapped("/data/big.bin", 5, executable=False, sha256=None, unread="larger")
    c = check(
        workload([*FILES, weights, big]),
        mounts=[Mount(destination="/data", source="/srv/data", type="bind", rw=False)],
    )
    assert c.status == "pass"
    assert kinds(c) == [("unread-data", "/data/big.bin"), ("no-record", None)]


@pytest.mark.parametrize(
    ("change", "kind", "expected"),
    [
        (FileChange(path=f"{SITE}/evil.so", kind="added", sha256=sha(3)), "not-in-image", None),
        (
            FileChange(path=f"{SITE}/evil.so", kind="changed", sha256=sha(8)),
            "altered",
            f"sha256:{sha(8)}",
        ),
    ],
)
def test_code_the_container_added_or_changed_is_not_the_images(
    change: FileChange, kind: str, expected: str | None
) -> None:
    files = [*FILES, mapped(f"{SITE}/evil.so", 3)]
    c = check(workload(files), changes=[change])
    assert c.status == "fail"
    finding = only(c, kind)
    assert (finding.path, finding.expected, finding.observed) == (
        f"{SITE}/evil.so",
        expected,
        f"sha256:{sha(3)}",
    )


def test_code_on_a_mount_fails_but_the_gpu_drivers_injection_does_not() -> None:
    view = KernelView(
        processes=1,
        namespaces=1,
        mounts=[
            KernelMount(mount_point="/", fstype="overlay", source="o", root="/", declared="root"),
            KernelMount(
                mount_point="/opt/libs", fstype="ext4", source="/dev/vda", root="/x", declared=None
            ),
            KernelMount(
                mount_point="/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
                fstype="ext4",
                source="/dev/vda",
                root="/usr/lib/libcuda.so.550.54.15",
                declared="gpu",
            ),
        ],
    )
    libcuda = mapped(
        "/usr/lib/x86_64-linux-gnu/libcuda.so.550.54.15",
        4,
        library="libcuda",
        library_role="driver",
        library_version="550.54.15",
    )
    files = [*FILES, mapped("/opt/libs/libnccl.so.2", 3), libcuda]
    c = check(workload(files), kernel=view)
    assert c.status == "fail"
    assert [(f.kind, f.path) for f in c.findings if f.kind != "no-record"] == [
        ("not-in-image", "/opt/libs/libnccl.so.2")
    ]
    assert "on a ext4 mount at /opt/libs" in (c.findings[0].message or "")


def test_code_from_memory_or_a_volatile_place_is_not_the_images() -> None:
    files = [
        *FILES,
        mapped("/memfd:payload", 3, kind="memfd"),
        mapped("/tmp/x/libhook.so", 4),
    ]
    c = check(workload(files))
    assert [(f.kind, f.path) for f in c.findings if f.kind != "no-record"] == [
        ("not-in-image", "/memfd:payload"),
        ("not-in-image", "/tmp/x/libhook.so"),
    ]
    assert "memfd" in (c.findings[0].message or "")
    assert "volatile place" in (c.findings[1].message or "")


def test_generated_code_warns_with_its_hash_and_the_policy_sets_its_level() -> None:
    kernel_so = "/tmp/torchinductor_root/ab/cabcdef.so"
    triton = "/root/.triton/cache/XYZ/triton_.so"
    files = [*FILES, mapped(kernel_so, 3), mapped(triton, 4)]
    c = check(workload(files))
    assert c.status == "warn"
    assert [(f.kind, f.path, f.observed) for f in c.findings if f.kind == "jit"] == [
        ("jit", kernel_so, f"sha256:{sha(3)}"),
        ("jit", triton, f"sha256:{sha(4)}"),
    ]
    strict = Policy(workload=WorkloadPolicy(jit_level="required"))
    assert check(workload(files), policy=strict).status == "fail"
    quiet = Policy(workload=WorkloadPolicy(jit_level="ignore"))
    c = check(workload(files), policy=quiet)
    assert c.status == "pass"
    assert "jit" not in {f.kind for f in c.findings}


def test_a_variable_the_manifest_does_not_have_fails_but_launchers_and_ignored_ones_do_not() -> (
    None
):
    env = {
        "CUDA_HOME": "/usr/local/cuda",
        "LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libz.so.1",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "NCCL_DEBUG": "INFO",
        # set by torchrun and Jupyter by design (the shipped policies name them)
        "TORCHELASTIC_RUN_ID": "none",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONHASHSEED": "0",
    }
    processes = [proc(1, [0, 1], env=env), proc(2, [0, 1], env=env)]
    policy = Policy(env=EnvPolicy(ignore=["NCCL_DEBUG"]))
    c = check(workload(processes=processes), policy=policy)
    assert c.status == "fail"
    assert [(f.kind, f.name, f.observed) for f in c.findings if f.kind.startswith("env")] == [
        ("env-added", "CUBLAS_WORKSPACE_CONFIG", ":4096:8"),
        ("env-added", "LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libz.so.1"),
    ]
    message = next(f.message for f in c.findings if f.name == "LD_PRELOAD")
    assert (message or "").startswith(f"pid 1, 2 ({TRAIN}), read from the process's own memory")
    changed = [proc(1, [0, 1], env={"CUDA_HOME": "/opt/cuda"})]
    finding = only(check(workload(processes=changed)), "env-changed")
    assert (finding.name, finding.expected, finding.observed) == (
        "CUDA_HOME",
        "/usr/local/cuda",
        "/opt/cuda",
    )


def test_tracked_variables() -> None:
    assert all(map(tracked_env, ["LD_PRELOAD", "LD_BIND_NOW", "PYTHONPATH", "PYTHONHASHSEED"]))
    assert all(map(tracked_env, ["CUDA_HOME", "NCCL_P2P_DISABLE", "CUBLAS_WORKSPACE_CONFIG"]))
    assert not any(map(tracked_env, ["RANK", "HOME", "CUDA_VISIBLE_DEVICES", "AWS_SECRET"]))


def test_against_a_recorded_workload_what_is_the_same_passes() -> None:
    before = workload(processes=[proc(1, [0, 1]), proc(5, [0, 1])])
    now = workload(processes=[proc(8, [0, 1], started=999)])
    c = check(now, recorded=before)
    assert (c.status, c.findings) == ("pass", [])


def test_groups_that_appear_or_go_and_an_executable_that_differs_fail() -> None:
    serve = f"{PYTHON} -m app.serve"
    before = workload(processes=[proc(1, [0, 1]), proc(2, [0, 1], group=serve)])
    now = workload(
        processes=[
            proc(1, [0, 1], executable_sha256=sha(9)),
            proc(3, [0, 1], group=f"{PYTHON} /tmp/miner.py"),
        ]
    )
    c = check(now, recorded=before)
    assert c.status == "fail"
    assert kinds(c) == [
        ("executable", PYTHON),
        ("group-added", f"{PYTHON} /tmp/miner.py"),
        ("group-gone", serve),
    ]
    executable = only(c, "executable")
    assert (executable.expected, executable.observed) == (
        f"{PYTHON} sha256:{sha(1)}",
        f"{PYTHON} sha256:{sha(9)}",
    )


def test_an_operators_exec_session_is_listed_not_failed() -> None:
    shell = proc(40, [1], origin="exec", group="/usr/bin/bash", executable="/usr/bin/bash")
    before = workload(processes=[proc(1, [0, 1])])
    c = check(workload(processes=[proc(1, [0, 1]), shell]), recorded=before)
    assert c.status == "pass"
    assert kinds(c) == [("exec-session", "/usr/bin/bash")]


def test_a_recorded_groups_variable_removed_or_changed_fails() -> None:
    before = workload(processes=[proc(1, [0, 1], env={"CUDA_HOME": "/c", "PYTHONPATH": "/a"})])
    now = workload(processes=[proc(1, [0, 1], env={"CUDA_HOME": "/d"})])
    c = check(now, recorded=before)
    assert [(f.kind, f.name, f.expected, f.observed) for f in c.findings] == [
        ("env-changed", "CUDA_HOME", "/c", "/d"),
        ("env-removed", "PYTHONPATH", "/a", None),
    ]


def test_a_cuda_library_at_another_path_fails_naming_both_paths() -> None:
    lib = {"library": "libcudnn", "library_role": "cuda", "library_version": "9"}
    recorded_file = mapped(CUDNN, 5, **lib)
    copy = mapped("/opt/copy/libcudnn.so.9", 5, **lib)
    before = workload([*FILES, recorded_file])
    now = workload([*FILES, copy])
    c = check(
        now,
        recorded=before,
        kernel=KernelView(
            mounts=[
                KernelMount(
                    mount_point="/", fstype="overlay", source="o", root="/", declared="root"
                )
            ]
        ),
        changes=[FileChange(path="/opt/copy/libcudnn.so.9", kind="added", sha256=sha(5))],
    )
    assert c.status == "fail"
    finding = only(c, "cuda-library")
    assert finding.name == "libcudnn"
    assert finding.expected == f"{CUDNN} 9 sha256:{sha(5)}"
    assert finding.observed == f"/opt/copy/libcudnn.so.9 9 sha256:{sha(5)}"
    assert "the same bytes at another path" in (finding.message or "")
    assert {f.kind for f in c.findings} == {"cuda-library", "not-in-image"}


def test_without_a_recorded_workload_cuda_libraries_meet_the_probes_record() -> None:
    probed = LoadedLibraries(
        scope="probe",
        libraries=[MappedLibrary(path=CUDNN, role="cuda", sha256=sha(5), version="9.1.0")],
    )
    recorded_observation = observation(report=probe(libraries=probed))
    lib = {"library": "libcudnn", "library_role": "cuda"}
    same = workload([*FILES, mapped(CUDNN, 5, **lib)])
    assert check(same, recorded_observation=recorded_observation).status == "pass"
    other = workload([*FILES, mapped(CUDNN, 6, **lib)])
    c = check(other, recorded_observation=recorded_observation)
    finding = only(c, "cuda-library")
    assert finding.expected == f"{CUDNN} 9.1.0 sha256:{sha(5)}"
    assert "another version or build than recorded (the probe's record)" in (finding.message or "")


def test_code_outside_the_image_recorded_with_the_same_content_is_not_drift() -> None:
    plugin = mapped("/opt/libs/plugin.so", 3)
    # the daemon's mounts (where the host could not read the kernel's view)
    on = {"mounts": [Mount(destination="/opt/libs", source="/srv/libs", type="bind", rw=False)]}
    on["kernel"] = None
    before = workload([*FILES, plugin])
    assert check(workload([*FILES, plugin]), recorded=before, **on).status == "pass"
    c = check(workload([*FILES, mapped("/opt/libs/plugin.so", 4)]), recorded=before, **on)
    assert [f.kind for f in c.findings] == ["not-in-image"]


def test_a_file_not_the_recorded_one_at_its_path_is_altered() -> None:
    before = workload()
    c = check(workload([mapped(PYTHON, 1), mapped(LIBC, 7)]), recorded=before)
    finding = only(c, "altered")
    assert (finding.path, finding.expected, finding.observed) == (
        LIBC,
        f"sha256:{sha(2)}",
        f"sha256:{sha(7)}",
    )


def test_what_the_host_could_not_read_never_passes_and_markers_name_the_pid() -> None:
    not_examined = Workload(
        not_examined="the host may not read /proc/7/map_files (Operation not permitted)",
        processes=[proc(7, [])],
    )
    c = check(not_examined)
    assert c.status == "fail"
    assert "not examined" in (only(c, "not-examined").message or "")
    audit = check(not_examined, policy=load_policy("audit"))
    assert audit.status == "warn"
    skipped = workload(
        skipped=[
            SkippedProcess(pid=11, reason="vanished", message="pid 11 exited"),
            SkippedProcess(pid=12, reason="zombie", message="pid 12 is a zombie"),
            SkippedProcess(pid=13, reason="excluded", message="lockd"),
        ]
    )
    c = check(skipped)
    assert c.status == "pass"
    assert [(f.kind, f.observed) for f in c.findings] == [
        ("vanished", "pid 11"),
        ("zombie", "pid 12"),
        ("no-record", None),
    ]
    unreadable = workload(
        skipped=[SkippedProcess(pid=14, reason="unreadable", message="permission denied")]
    )
    assert only(check(unreadable), "unreadable").observed == "pid 14"
    part = workload(processes=[proc(1, [0, 1], unread="2 line(s) of /proc/1/maps not in format")])
    assert only(check(part), "unreadable").message == "2 line(s) of /proc/1/maps not in format"
    unverified = workload([*FILES, mapped("/usr/lib/libx.so", 3, sha256=None, unread="changed")])
    assert only(check(unverified), "unverified").path == "/usr/lib/libx.so"


def test_the_policy_can_ignore_the_check_and_warn_under_audit() -> None:
    deleted = workload([mapped(PYTHON, 1, deleted=True)], [proc(1, [0])])
    ignored = Policy(checks=Checks(workload="ignore"))
    assert check(deleted, policy=ignored).status == "skip"
    assert check(deleted, policy=load_policy("audit")).status == "warn"
    assert check(deleted).status == "fail"


# --- without an image: a process on this host (process:PID, no host evidence) ------------------

COPY = "/opt/copies/libc.so.6"  # not a volatile place: nothing but the manifest can vouch for it


def process_check(work: Workload, recorded: Workload | None, recorded_probe: Any = None) -> Check:
    """``work`` seen in a process target (no host evidence) against a manifest recorded from one."""
    target = TargetInfo(kind="process", ref="4242")
    base = Observation(target=target, probe=recorded_probe or probe())
    seen_here = Observation(target=target, probe=probe(), workload=work)
    return check_workload(
        manifest(base.model_copy(update={"workload": recorded})), seen_here, STRICT
    )


def test_without_an_image_the_recorded_workload_vouches_for_code() -> None:
    c = process_check(workload(), workload())
    assert c.status == "pass"
    assert c.message.startswith("the running workload is the manifest's (")


def test_without_an_image_a_copy_at_another_path_names_both_paths() -> None:
    files = [mapped(PYTHON, 1), mapped(COPY, 2)]
    c = process_check(workload(files), workload())
    assert c.status == "fail"
    found = only(c, "not-in-image")
    assert (found.name, found.path, found.observed) == ("libc.so.6", COPY, f"sha256:{sha(2)}")
    assert found.expected == f"{LIBC} sha256:{sha(2)}"
    assert f"the same bytes were recorded at {LIBC}" in found.message
    assert "with no image to vouch for it" in found.message


def test_without_an_image_unrecorded_code_fails_and_a_volatile_place_says_so() -> None:
    files = [mapped(PYTHON, 1), mapped(LIBC, 2), mapped("/tmp/x/libfoo.so", 9)]
    found = only(process_check(workload(files), workload()), "not-in-image")
    assert (found.path, found.expected) == ("/tmp/x/libfoo.so", None)
    assert "under a volatile place (tmp, caches)" in found.message
    assert "the same bytes" not in found.message


def test_without_an_image_other_bytes_at_a_recorded_path_are_altered() -> None:
    files = [mapped(PYTHON, 1), mapped(LIBC, 7)]
    found = only(process_check(workload(files), workload()), "altered")
    assert (found.path, found.expected, found.observed) == (
        LIBC,
        f"sha256:{sha(2)}",
        f"sha256:{sha(7)}",
    )


def test_without_an_image_the_libraries_the_recorded_probe_mapped_vouch_too() -> None:
    probed = LoadedLibraries(
        scope="probe",
        libraries=[MappedLibrary(path=CUDNN, role="cuda", sha256=sha(5), version="9.1.0")],
    )
    files = [*FILES, mapped(CUDNN, 5)]
    work = workload(files)
    recorded = workload()
    assert process_check(work, recorded, probe(libraries=probed)).status == "pass"
    assert only(process_check(work, recorded), "not-in-image").path == CUDNN


def test_without_an_image_and_no_recorded_workload_only_what_needs_none_is_judged() -> None:
    files = [mapped(PYTHON, 1), mapped(COPY, 2), mapped("/tmp/gone.so", 3, deleted=True)]
    c = process_check(workload(files), None)
    assert kinds(c) == [("deleted", "/tmp/gone.so"), ("no-record", None)]
