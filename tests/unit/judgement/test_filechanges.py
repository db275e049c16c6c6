"""The container runtime's own changes (lockd.judgement.filechanges.runtime_change) against a GPU
container's upper directory and mountinfo, and the ways an attacker might hide behind them.

The GPU container fixture is NOT captured from a real machine: no Docker daemon with the NVIDIA
runtime was available to us (the GPU machine we can use runs no Docker). It is built from the
NVIDIA container toolkit's documented behaviour (nvidia-container-cli / the CDI hooks of
nvidia-container-toolkit 1.17): it bind-mounts driver libraries, binaries and firmware
read-only over empty files it creates in the container's root (they show in the overlay upper
directory as empty regular files), mounts /dev/nvidia* and /proc/driver/nvidia on tmpfs /dev
and proc (not in the upper directory), runs ldconfig in the container, which writes the soname
links (libcuda.so.1 -> libcuda.so.<driver>) and /etc/ld.so.cache (and ldconfig's aux-cache),
and its create-symlinks hook adds libcuda.so -> libcuda.so.1. The driver is 550.54.15.
"""

from __future__ import annotations

import pytest
from builders import ld_cache
from observations import host, manifest, observation

from lockd.evidence.targets.changes import ld_cache_folders
from lockd.judgement.filechanges import describe, judge_changes, runtime_change
from lockd.judgement.policy import DEFAULT_VOLATILE, Policy, volatile_places
from lockd.model.host import EMPTY_SHA256, FileChange, HostEvidence, KernelMount, KernelView, Mount

DRIVER = "550.54.15"
LIB = "/usr/lib/x86_64-linux-gnu"

MOUNTED_FILES = [
    "/usr/bin/nvidia-smi",
    "/usr/bin/nvidia-debugdump",
    "/usr/bin/nvidia-persistenced",
    "/usr/bin/nvidia-cuda-mps-control",
    "/usr/bin/nvidia-cuda-mps-server",
    f"{LIB}/libnvidia-ml.so.{DRIVER}",
    f"{LIB}/libcuda.so.{DRIVER}",
    f"{LIB}/libcudadebugger.so.{DRIVER}",
    f"{LIB}/libnvidia-opencl.so.{DRIVER}",
    f"{LIB}/libnvidia-ptxjitcompiler.so.{DRIVER}",
    f"{LIB}/libnvidia-nvvm.so.{DRIVER}",
    f"{LIB}/libnvidia-cfg.so.{DRIVER}",
    f"/lib/firmware/nvidia/{DRIVER}/gsp_ga10x.bin",
    f"/lib/firmware/nvidia/{DRIVER}/gsp_tu10x.bin",
]
LINKS = {
    f"{LIB}/libcuda.so.1": f"libcuda.so.{DRIVER}",
    f"{LIB}/libcuda.so": "libcuda.so.1",
    f"{LIB}/libnvidia-ml.so.1": f"libnvidia-ml.so.{DRIVER}",
    f"{LIB}/libcudadebugger.so.1": f"libcudadebugger.so.{DRIVER}",
    f"{LIB}/libnvidia-opencl.so.1": f"libnvidia-opencl.so.{DRIVER}",
    f"{LIB}/libnvidia-ptxjitcompiler.so.1": f"libnvidia-ptxjitcompiler.so.{DRIVER}",
    f"{LIB}/libnvidia-nvvm.so.4": f"libnvidia-nvvm.so.{DRIVER}",
    f"{LIB}/libnvidia-cfg.so.1": f"libnvidia-cfg.so.{DRIVER}",
}

# /proc/<pid>/mountinfo of the container's init, as the host reads it (the lines that matter)
MOUNTINFO = (
    "1425 1300 0:120 / / rw,relatime master:1 - overlay overlay rw,lowerdir=/l,upperdir=/u\n"
    "1426 1425 0:123 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
    "1427 1425 0:124 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755\n"
    "1434 1425 259:2 /var/lib/docker/containers/c/hostname /etc/hostname rw - ext4 /dev/x rw\n"
    "1435 1425 259:2 /var/lib/docker/containers/c/hosts /etc/hosts rw - ext4 /dev/x rw\n"
    "1436 1425 259:2 /var/lib/docker/containers/c/resolv.conf /etc/resolv.conf rw - ext4 /dev/x rw\n"
    "1437 1425 259:2 /srv/app.yaml /app/config.yaml ro - ext4 /dev/x rw\n"
    + "".join(
        f"{1440 + i} 1425 259:2 {p} {p} ro,nosuid,nodev,relatime - ext4 /dev/x rw\n"
        for i, p in enumerate(MOUNTED_FILES)
    )
    + "1470 1427 0:5 /nvidia0 /dev/nvidia0 rw,nosuid - devtmpfs udev rw\n"
    "1471 1427 0:5 /nvidiactl /dev/nvidiactl rw,nosuid - devtmpfs udev rw\n"
    "1472 1426 0:130 / /proc/driver/nvidia rw,nosuid - tmpfs tmpfs rw,mode=555\n"
)


def mount_points(mountinfo: str) -> set[str]:
    """Field 5 of each mountinfo line: the mount point."""
    return {line.split()[4] for line in mountinfo.splitlines()}


def empty(path: str, kind: str = "added") -> FileChange:
    return FileChange(
        path=path, kind=kind, type="file", mode=0o644, uid=0, gid=0, size=0, sha256=EMPTY_SHA256
    )  # type: ignore[arg-type]


def link(path: str, target: str) -> FileChange:
    return FileChange(
        path=path, kind="added", type="symlink", mode=0o777, uid=0, gid=0, target=target
    )


def written(path: str, kind: str = "changed", sha: str = "3" * 64) -> FileChange:
    return FileChange(
        path=path, kind=kind, type="file", mode=0o644, uid=0, gid=0, size=4096, sha256=sha
    )  # type: ignore[arg-type]


UPPER = sorted(
    [
        *(empty(p) for p in MOUNTED_FILES),
        *(link(p, t) for p, t in LINKS.items()),
        empty("/app/config.yaml"),  # the mount point of a declared file bind mount
        written("/etc/ld.so.cache").model_copy(
            update={"cache_dirs": [LIB, "/lib/x86_64-linux-gnu"]}
        ),
        written("/var/cache/ldconfig/aux-cache", "added"),
    ],
    key=lambda c: c.path,
)
"""The GPU container's upper directory (/run/nvidia-persistenced/socket, volatile, left out)."""


def kernel_view(mountinfo: str, gpus: bool = True) -> KernelView:
    """The kernel's view as lockd.evidence.kernel would give it: every mount of MOUNTINFO, declared
    (the container's root, the runtime's standard set, the daemon's bind, the toolkit's)."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        point, fstype, source = fields[4], fields[-3], fields[-2]
        nvidia = "nvidia" in point or point.startswith("/lib/firmware")
        declared = "gpu" if nvidia and gpus else None if nvidia else "runtime"
        mounts.append(
            KernelMount(
                mount_point=point, fstype=fstype, source=source, root=fields[3], declared=declared
            )
        )
    return KernelView(processes=1, namespaces=1, mounts=mounts)


def gpu_host(
    changes: list[FileChange] = UPPER, *, gpus: bool = True, kernel: bool = True
) -> HostEvidence:
    return host(
        changes=changes,
        changes_content=True,
        gpus_requested=gpus,
        kernel=kernel_view(MOUNTINFO, gpus) if kernel else None,
        mounts=[
            Mount(destination="/app/config.yaml", source="/srv/app.yaml", type="bind", rw=False)
        ],
    )


def test_every_change_the_gpu_runtime_makes_is_runtime_evidence() -> None:
    evidence = gpu_host()
    points = mount_points(MOUNTINFO)
    why = {c.path: runtime_change(c, evidence, points) for c in evidence.changes}
    assert {path for path, reason in why.items() if reason is None} == set()
    assert why[f"{LIB}/libcuda.so.{DRIVER}"] == (
        "the mount point of a driver file the NVIDIA container toolkit mounts"
    )
    assert why[f"{LIB}/libcuda.so.1"] == (
        f"a link the NVIDIA container toolkit's ldconfig makes to libcuda.so.{DRIVER}"
    )
    assert why[f"{LIB}/libcuda.so"] == "a link the NVIDIA container toolkit makes to libcuda.so.1"
    assert why["/etc/ld.so.cache"] == "rewritten by the NVIDIA container toolkit's ldconfig hook"
    assert why["/app/config.yaml"] == "the mount point of a mount Docker makes"
    # the same from HostEvidence's own kernel view, and without one (lockd not root, or a
    # manifest recorded before it was kept): the daemon's word
    assert all(runtime_change(c, evidence) for c in evidence.changes)
    without = gpu_host(kernel=False)
    assert all(runtime_change(c, without) for c in without.changes)


def test_the_filesystem_check_lists_them_without_failing() -> None:
    recorded = manifest(observation(host_evidence=host(changes_content=True)))
    judged = judge_changes(recorded, gpu_host(), Policy())
    assert judged.failing == []
    assert len(judged.notes) == len(UPPER)
    assert {f.kind for f in judged.notes} == {"runtime"}
    [note] = [f for f in judged.notes if f.path == f"{LIB}/libcuda.so.1"]
    assert note.observed == f"symlink 0777 0:0 -> libcuda.so.{DRIVER}"


def test_a_manifest_recorded_on_another_driver_verifies_here() -> None:
    """The manifest of a GPU container recorded on a node with driver 535: its runtime
    changes are not expected here, and this node's are not drift."""
    other = [
        empty(f"{LIB}/libcuda.so.535.104.05"),
        link(f"{LIB}/libcuda.so.1", "libcuda.so.535.104.05"),
        written("/etc/ld.so.cache", sha="4" * 64).model_copy(update={"cache_dirs": [LIB]}),
    ]
    there = host(
        changes=other,
        changes_content=True,
        gpus_requested=True,
        kernel=kernel_view(MOUNTINFO.replace(DRIVER, "535.104.05")),
    )
    recorded = manifest(observation(host_evidence=there))
    assert judge_changes(recorded, gpu_host(), Policy()).failing == []


@pytest.mark.parametrize(
    ("change", "why"),
    [
        # /etc/ld.so.cache rewritten in a container that asked for no GPU, or pointing the
        # loader into a volatile place, or not read (the daemon's changes API)
        (written("/etc/ld.so.cache").model_copy(update={"cache_dirs": [LIB]}), "no gpus"),
        (
            written("/etc/ld.so.cache").model_copy(update={"cache_dirs": [LIB, "/tmp/evil"]}),
            "loader into /tmp",
        ),
        (written("/etc/ld.so.cache"), "not parsed"),
        (FileChange(path="/etc/ld.so.cache", kind="changed"), "not read"),
        # a driver library's mount point with content: the library was replaced
        (written(f"{LIB}/libcuda.so.{DRIVER}", "added"), "content"),
        # an empty file where the kernel lists no mount
        (empty(f"{LIB}/libnvidia-evil.so.1"), "not mounted"),
        # a link named like the toolkit's to a library outside the folder, or to a volatile place
        (link(f"{LIB}/libcuda.so.1", "/tmp/evil.so"), "outside the folder"),
        (link(f"{LIB}/libcuda.so.1", "../../../tmp/libcuda.so.9"), "outside the folder"),
        # a link to an NVIDIA-named file the container wrote itself
        (link(f"{LIB}/libnvidia-x.so.1", "libnvidia-x.so.2"), "target not a mount point"),
        # a link with a library's name that is not the toolkit's
        (link(f"{LIB}/libc.so.6", f"libcuda.so.{DRIVER}"), "not an NVIDIA name"),
        # a Docker mount point with content, and a path Docker never mounts
        (written("/app/config.yaml", "added"), "content"),
        (written("/etc/hosts"), "content"),
        (empty("/etc/ld.so.preload", "added"), "not a mount point"),
        # a deleted driver file is the container's doing
        (FileChange(path=f"{LIB}/libcuda.so.{DRIVER}", kind="deleted"), "deleted"),
    ],
)
def test_a_real_change_cannot_hide_behind_the_runtime(change: FileChange, why: str) -> None:
    gpus = why != "no gpus"
    evidence = gpu_host([*UPPER, written(f"{LIB}/libnvidia-x.so.2", "added")], gpus=gpus)
    points = mount_points(MOUNTINFO)
    volatile = volatile_places(DEFAULT_VOLATILE, {})
    assert runtime_change(change, evidence, points, volatile) is None
    if why == "not mounted":
        # without the kernel's view lockd takes the daemon's word for an empty file (it has
        # no bytes to run); with it (lockd.evidence.kernel), the file must be mounted over
        assert runtime_change(change, gpu_host([*UPPER, change], kernel=False)) is not None
    changes = [c for c in evidence.changes if c.path != change.path] + [change]
    seen = gpu_host(sorted(changes, key=lambda c: c.path), gpus=gpus)
    recorded = manifest(observation(host_evidence=host(changes_content=True)))
    failing = judge_changes(recorded, seen, Policy()).failing
    assert change.path in {f.path for f in failing}


def test_the_kernel_view_confirms_the_mount_points() -> None:
    evidence = gpu_host()
    without = mount_points(MOUNTINFO) - {f"{LIB}/libcuda.so.{DRIVER}"}
    [lib] = [c for c in evidence.changes if c.path == f"{LIB}/libcuda.so.{DRIVER}"]
    [soname] = [c for c in evidence.changes if c.path == f"{LIB}/libcuda.so.1"]
    assert runtime_change(lib, evidence, without) is None
    assert runtime_change(soname, evidence, without) is None


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (written("/x"), f"file 0644 0:0 4096 bytes sha256:{'3' * 64}"),
        (link("/x", "y"), "symlink 0777 0:0 -> y"),
        (FileChange(path="/x", kind="deleted"), "deleted"),
        (FileChange(path="/x", kind="added"), "content not read"),
        (
            FileChange(path="/x", kind="added", type="fifo", mode=0o600, uid=1, gid=2),
            "fifo 0600 1:2",
        ),
    ],
)
def test_describe(change: FileChange, line: str) -> None:
    assert describe(change) == line


@pytest.mark.parametrize(
    ("data", "folders"),
    [
        (
            ld_cache([f"{LIB}/libz.so.1", "/lib/x86_64-linux-gnu/libc.so.6"]),
            ["/lib/x86_64-linux-gnu", LIB],
        ),
        (ld_cache([f"{LIB}/libz.so.1"], old=3), [LIB]),
        # what ld.so reads: the string at the value's offset, not the string around it
        (ld_cache(["/usr/lib/x/tmp/evil/libc.so.6"], shift=10), ["/tmp/evil"]),
        (ld_cache(["libc.so.6"]), None),  # not an absolute path
        (ld_cache([f"{LIB}/libz.so.1"])[:60], None),  # cut short
        (b"garbage", None),
        (b"", None),
    ],
)
def test_ld_cache_folders(data: bytes, folders: list[str] | None) -> None:
    assert ld_cache_folders(data) == folders


def test_this_hosts_ld_cache_reads() -> None:
    from pathlib import Path

    folders = ld_cache_folders(Path("/etc/ld.so.cache").read_bytes())  # a glibc host's own
    assert folders
    assert all(f.startswith("/") for f in folders)
