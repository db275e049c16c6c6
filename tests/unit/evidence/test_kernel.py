"""lockd.evidence.kernel without Docker: mountinfo and cgroup parsing (escapes, optional fields, hostile
lines), which mounts a container was given (Docker's standard set, masked and read-only paths,
the NVIDIA toolkit's injections, recursive binds) and which it made itself, and reading a
process's view at the edge (a process that vanishes, one that is not the container's)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from lockd.errors import TargetError
from lockd.evidence import kernel
from lockd.evidence.kernel import (
    MountinfoError,
    classify,
    parse_cgroup,
    parse_mountinfo,
    procs_files,
    unescape,
)

ID = "fe0e87fddd05387ab6ba40660859f6a4e461a241177c9f6d579dde6ce1c8ea12"
UPPER = "/var/lib/docker/overlay2/e5b8ecf09f91/diff"

# What /proc/PID/mountinfo says, on the host, of a plain `docker run` container (Docker 27,
# cgroup v1, runc): its standard set.
STANDARD = f"""\
75 51 0:40 / / rw,relatime master:2 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X:/var/lib/docker/overlay2/l/Y,upperdir={UPPER},workdir=/var/lib/docker/overlay2/e5b8ecf09f91/work
76 75 0:43 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
77 75 0:44 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
78 77 0:45 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
79 75 0:46 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
80 79 0:47 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=755
81 80 0:29 /docker/{ID} /sys/fs/cgroup/cpu ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu
88 80 0:36 /docker/{ID} /sys/fs/cgroup/pids ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,pids
89 80 0:37 /docker/{ID} /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,name=systemd
90 77 0:42 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
91 77 0:48 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
92 75 254:0 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw,discard
93 75 254:0 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw,discard
94 75 254:0 /var/lib/docker/containers/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw,discard
52 76 0:43 /bus /proc/bus ro,nosuid,nodev,noexec,relatime - proc proc rw
55 76 0:43 /sys /proc/sys ro,nosuid,nodev,noexec,relatime - proc proc rw
56 76 0:49 / /proc/acpi ro,relatime - tmpfs tmpfs ro
57 76 0:44 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
59 79 0:50 / /sys/firmware ro,relatime - tmpfs tmpfs ro
"""


def attrs(**host_config: Any) -> dict[str, Any]:
    return {
        "Id": ID,
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": UPPER}},
        "State": {"Pid": 4242},
        "HostConfig": {
            "MaskedPaths": [
                *("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware")
            ],
            "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"],
            **host_config,
        },
        "Mounts": [],
    }


def undeclared(text: str, inspect: dict[str, Any], host: tuple[str, ...] = ()) -> list[str]:
    return [
        f"{e.mount_point} {e.fstype}"
        for e, why in classify(parse_mountinfo(text.encode()), inspect, host)
        if why is None
    ]


# --- mountinfo -----------------------------------------------------------------------------------


def test_a_line_parses_into_its_fields() -> None:
    line = (
        b"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue"
    )
    [entry] = parse_mountinfo(line)
    assert (entry.mount_id, entry.parent_id, entry.device) == (36, 35, "98:0")
    assert (entry.root, entry.mount_point) == ("/mnt1", "/mnt2")
    assert entry.options == ("rw", "noatime")
    assert entry.optional == ("master:1", "shared:7")
    assert (entry.fstype, entry.source) == ("ext3", "/dev/root")
    assert entry.super_options == ("rw", "errors=continue")
    assert not entry.read_only


def test_a_line_without_optional_fields_parses() -> None:
    [entry] = parse_mountinfo(b"76 75 0:43 / /proc ro,nosuid - proc proc rw\n")
    assert (entry.optional, entry.fstype, entry.read_only) == ((), "proc", True)


@pytest.mark.parametrize(
    "escaped, plain",
    [
        (rb"/data\040set", "/data set"),
        (rb"/a\011tab", "/a\ttab"),
        (rb"/line\012break", "/line\nbreak"),
        (rb"/back\134slash", "/back\\slash"),
        (rb"/\134040", "/\\040"),  # an escaped backslash, then digits: not a second escape
        (b"/caf\\303\\251", "/café"),
        (b"/\\377raw", "/\udcffraw"),  # not UTF-8: kept as a surrogate
    ],
)
def test_octal_escapes_are_undone(escaped: bytes, plain: str) -> None:
    assert unescape(escaped) == plain
    line = b"40 30 0:50 " + escaped + b" " + escaped + b" rw - tmpfs my\\040src rw"
    [entry] = parse_mountinfo(line)
    assert (entry.root, entry.mount_point, entry.source) == (plain, plain, "my src")


@pytest.mark.parametrize(
    "line, message",
    [
        (b"36 35 98:0 /mnt1 /mnt2 rw", "no '-' separator"),
        (b"36 35 98:0 /mnt1 /mnt2 rw - ext3", "too few"),
        (b"x 35 98:0 / / rw - ext3 /dev/root rw", "not numbers"),
        (b"36 35 980 / / rw - ext3 /dev/root rw", "major:minor"),
        (b"36 35 98:0 / mnt rw - ext3 /dev/root rw", "major:minor"),
        (b"36 35 98:0  / rw - ext3 /dev/root rw", "major:minor"),
        (b"- - - - - - - - - -", "not numbers"),
    ],
)
def test_a_hostile_line_is_an_error_naming_it(line: bytes, message: str) -> None:
    with pytest.raises(MountinfoError, match=message) as raised:
        parse_mountinfo(b"76 75 0:43 / /proc rw - proc proc rw\n" + line + b"\n")
    assert "line 2" in str(raised.value)


def test_a_root_that_is_no_path_parses() -> None:
    [entry] = parse_mountinfo(b"23 1 0:4 net:[4026532] /run/netns/x rw - nsfs nsfs rw\n")
    assert (entry.root, entry.fstype) == ("net:[4026532]", "nsfs")


def test_blank_lines_are_skipped() -> None:
    assert len(parse_mountinfo(b"\n76 75 0:43 / /proc rw - proc proc rw\n\n")) == 1


# --- cgroups -------------------------------------------------------------------------------------

V1 = f"""\
9:name=systemd:/docker/{ID}
8:pids:/docker/{ID}
4:memory:/docker/{ID}
2:cpu,cpuacct:/docker/{ID}
0::/docker/{ID}
"""
V2 = f"0::/system.slice/docker-{ID}.scope\n"


def test_cgroup_v1_lines_parse_with_their_controllers() -> None:
    lines = parse_cgroup(V1.encode())
    assert lines[0] == ("9", ("name=systemd",), f"/docker/{ID}")
    assert lines[3] == ("2", ("cpu", "cpuacct"), f"/docker/{ID}")
    assert lines[4] == ("0", (), f"/docker/{ID}")


def test_cgroup_v1_members_are_listed_from_pids_then_memory_then_cpu_then_unified() -> None:
    assert procs_files(parse_cgroup(V1.encode()), unified=False, root="/cg") == [
        f"/cg/pids/docker/{ID}/cgroup.procs",
        f"/cg/memory/docker/{ID}/cgroup.procs",
        f"/cg/cpu/docker/{ID}/cgroup.procs",
        f"/cg/unified/docker/{ID}/cgroup.procs",
    ]


def test_cgroup_v2_members_are_listed_from_the_unified_hierarchy() -> None:
    assert procs_files(parse_cgroup(V2.encode()), unified=True, root="/cg") == [
        f"/cg/system.slice/docker-{ID}.scope/cgroup.procs"
    ]


def test_cgroup_lines_not_in_the_format_are_left_out() -> None:
    text = b"garbage\n4:memory\nx:pids:/a\n5:pids:relative\n8:pids:/ok\n"
    assert parse_cgroup(text) == [("8", ("pids",), "/ok")]


# --- declared or made inside ---------------------------------------------------------------------


def test_dockers_standard_set_is_all_declared() -> None:
    assert undeclared(STANDARD, attrs()) == []


def test_a_tmpfs_mounted_inside_over_a_package_is_not_declared() -> None:
    made = "120 75 0:99 / /opt/venv/lib/python3.11/site-packages/idna rw - tmpfs tmpfs rw\n"
    assert undeclared(STANDARD + made, attrs()) == [
        "/opt/venv/lib/python3.11/site-packages/idna tmpfs"
    ]


def test_a_mount_stacked_over_a_declared_one_is_not_declared() -> None:
    stacked = "121 94 0:99 / /etc/hosts rw - tmpfs tmpfs rw\n"
    assert undeclared(STANDARD + stacked, attrs()) == ["/etc/hosts tmpfs"]


def test_a_root_that_is_not_the_containers_overlay_is_not_declared() -> None:
    other = STANDARD.replace(f"upperdir={UPPER}", "upperdir=/elsewhere/diff")
    assert undeclared(other, attrs()) == ["/ overlay"]


def test_the_daemons_mounts_and_tmpfs_are_declared_a_tmpfs_only_as_a_tmpfs() -> None:
    lines = (
        "130 75 254:0 /srv/data /data rw - ext4 /dev/vda rw\n"
        "131 75 0:60 / /scratch rw - tmpfs tmpfs rw\n"
        "132 75 254:0 /srv/x /cache rw - ext4 /dev/vda rw\n"
    )
    inspect = attrs(Tmpfs={"/scratch": "", "/cache": ""})
    inspect["Mounts"] = [{"Type": "bind", "Source": "/srv/data", "Destination": "/data"}]
    assert undeclared(STANDARD + lines, inspect) == ["/cache ext4"]


def test_masked_and_read_only_paths_come_from_the_host_config() -> None:
    assert undeclared(STANDARD, attrs(MaskedPaths=[], ReadonlyPaths=[])) == [
        "/proc/bus proc",
        "/proc/sys proc",
        "/proc/acpi tmpfs",
        "/proc/keys tmpfs",
        "/sys/firmware tmpfs",
    ]


def test_init_console_and_devices_are_declared_when_asked_for() -> None:
    lines = (
        "140 75 254:0 /usr/bin/docker-init /sbin/docker-init ro - ext4 /dev/vda rw\n"
        "141 77 0:45 /0 /dev/console rw - devpts devpts rw\n"
        "142 77 0:5 /fuse /dev/fuse rw - devtmpfs udev rw\n"
    )
    assert undeclared(STANDARD + lines, attrs()) == [
        "/sbin/docker-init ext4",
        "/dev/fuse devtmpfs",
    ]
    asked = attrs(Init=True, Devices=[{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fuse"}])
    assert undeclared(STANDARD + lines, asked) == []


GPU = """\
150 75 254:0 /usr/bin/nvidia-smi /usr/bin/nvidia-smi ro,nosuid,nodev,relatime - ext4 /dev/vda rw
151 75 254:0 /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05 /usr/lib/x86_64-linux-gnu/libcuda.so.580.95.05 ro,nosuid,nodev,relatime - ext4 /dev/vda rw
152 75 254:0 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05 /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.580.95.05 ro,nosuid,nodev,relatime - ext4 /dev/vda rw
153 75 254:0 /usr/lib/firmware/nvidia/580.95.05/gsp_ga10x.bin /lib/firmware/nvidia/580.95.05/gsp_ga10x.bin ro,nosuid,nodev,relatime - ext4 /dev/vda rw
154 77 0:5 /nvidia0 /dev/nvidia0 rw,nosuid,noexec,relatime - devtmpfs udev rw
155 77 0:5 /nvidiactl /dev/nvidiactl rw,nosuid,noexec,relatime - devtmpfs udev rw
156 76 0:70 / /proc/driver/nvidia rw,nosuid,nodev,noexec,relatime - tmpfs tmpfs rw,mode=555
157 75 0:25 /nvidia-persistenced/socket /run/nvidia-persistenced/socket rw,nosuid,nodev,noexec - tmpfs tmpfs rw
158 75 254:0 /usr/lib/x86_64-linux-gnu/vdpau/libvdpau_nvidia.so.580.95.05 /usr/lib/x86_64-linux-gnu/vdpau/libvdpau_nvidia.so.580.95.05 ro,nosuid,nodev,relatime - ext4 /dev/vda rw
159 75 254:0 /usr/lib/xorg/modules/drivers/nvidia_drv.so /usr/lib/xorg/modules/drivers/nvidia_drv.so ro,nosuid,nodev,relatime - ext4 /dev/vda rw
160 75 0:25 /nvidia-mps /tmp/nvidia-mps rw,nosuid,nodev - tmpfs tmpfs rw
161 75 254:0 /usr/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json ro,nosuid,nodev,relatime - ext4 /dev/vda rw
"""


def test_the_nvidia_toolkits_injections_are_declared_for_a_gpu_container_only() -> None:
    gpus = attrs(DeviceRequests=[{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}])
    assert undeclared(STANDARD + GPU, gpus) == []
    assert len(undeclared(STANDARD + GPU, attrs())) == 12
    assert undeclared(STANDARD + GPU, attrs(Runtime="nvidia")) == []


def test_a_writable_library_mounted_in_a_gpu_container_is_not_declared() -> None:
    """The toolkit binds driver files read-only: a read-write one is someone else's."""
    rw = "160 75 0:99 / /usr/lib/x86_64-linux-gnu/libcuda.so.1 rw - tmpfs tmpfs rw\n"
    gpus = attrs(DeviceRequests=[{"Driver": "nvidia", "Count": -1}])
    assert undeclared(STANDARD + rw, gpus) == ["/usr/lib/x86_64-linux-gnu/libcuda.so.1 tmpfs"]


def test_a_recursive_binds_submounts_on_the_host_are_declared() -> None:
    lines = (
        "170 75 0:5 / /host-dev rw - devtmpfs udev rw\n"
        "171 170 0:45 / /host-dev/pts rw - devpts devpts rw\n"
        "172 170 0:99 / /host-dev/made-here rw - tmpfs tmpfs rw\n"
    )
    inspect = attrs()
    inspect["Mounts"] = [{"Type": "bind", "Source": "/dev", "Destination": "/host-dev"}]
    assert undeclared(STANDARD + lines, inspect, ("/dev", "/dev/pts")) == [
        "/host-dev/made-here tmpfs"
    ]


# --- reading a process's view (the edge) ---------------------------------------------------------


@pytest.fixture
def sandbox(root_required: None) -> Any:
    """A process of its own mount namespace (``unshare``), standing for a container's init."""
    child = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    mine = os.readlink("/proc/self/ns/mnt")
    while os.readlink(f"/proc/{child.pid}/ns/mnt") == mine:
        time.sleep(0.01)
    yield child
    child.kill()
    child.wait()


def test_a_process_that_is_not_the_containers_gives_an_incomplete_view(sandbox: Any) -> None:
    """Its cgroup does not name the container: a remote daemon's pid that happens to exist
    here, say. Nothing is read from it."""
    inspect = {**attrs(), "State": {"Pid": sandbox.pid}}
    view = kernel.read_view(inspect, "container x")
    assert view.incomplete == f"pid {sandbox.pid} is in no cgroup of the container's"
    assert view.digest() is None


def test_the_view_of_a_cgroups_processes_names_mounts_and_foreign_roots(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    chrooted = subprocess.Popen(
        [
            "nsenter",
            "-t",
            str(sandbox.pid),
            "-m",
            sys.executable,
            "-c",
            "import os, time; os.chroot('/tmp'); time.sleep(600)",
        ]
    )
    try:
        while os.readlink(f"/proc/{chrooted.pid}/root") != "/tmp":
            time.sleep(0.01)
        gone = 2**22 + 17  # a pid that exited while lockd read: skipped
        members = ([sandbox.pid, gone, chrooted.pid], None)
        monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: members)
        inspect = {**attrs(), "State": {"Pid": sandbox.pid}}
        view = kernel.read_view(inspect, "container x")
        assert [p.pid for p in view.processes] == [sandbox.pid, chrooted.pid]
        assert view.incomplete is None
        reasons = {p.pid: why for p, why in view.foreign}
        assert reasons[chrooted.pid] == "its root is /tmp (chroot)"
        # the sandbox's / is the host's, not the container's overlay: pivot_root's kind
        assert "not the container's" in reasons[sandbox.pid]
        [mounts] = view.mounts.values()
        assert mounts[0][0].mount_point == "/"
        model = kernel.evidence(view)
        assert (model.processes, model.namespaces) == (2, 1)
        assert {f.pid for f in model.foreign_roots} == {sandbox.pid, chrooted.pid}
    finally:
        chrooted.kill()
        chrooted.wait()


def test_a_member_in_the_hosts_namespace_is_an_exec_in_transit_and_left_out(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`runc init` joins the container's cgroup before its mount namespace: a `docker exec`
    starting (lockd's own probe) must not show the host's mount table as the container's."""
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: ([pid, os.getpid()], None))
    inspect = {**attrs(), "State": {"Pid": sandbox.pid}}
    view = kernel.read_view(inspect, "container x")
    assert [p.pid for p in view.processes] == [sandbox.pid]
    assert len(view.mounts) == 1


def test_an_init_that_vanished_is_a_target_error_naming_the_container(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    inspect = {**attrs(), "State": {"Pid": dead.pid}}
    inspect["GraphDriver"]["Data"]["UpperDir"] = str(tmp_path)  # its files are on this host
    with pytest.raises(TargetError, match="container web-1 stopped while lockd read"):
        kernel.read_view(inspect, "container web-1")
    inspect["GraphDriver"]["Data"]["UpperDir"] = "/nonexistent/upper"  # another host's
    view = kernel.read_view(inspect, "container web-1")
    assert view.incomplete is not None and "not on this host" in view.incomplete


def test_a_malformed_mountinfo_is_a_target_error_naming_the_container(
    sandbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: ([pid], None))
    real = kernel._read

    def read(path: str, limit: int = kernel.MAX_MOUNTINFO_BYTES) -> bytes:
        return b"1 2 garbage\n" if path.endswith("/mountinfo") else real(path, limit)

    monkeypatch.setattr(kernel, "_read", read)
    inspect = {**attrs(), "State": {"Pid": sandbox.pid}}
    with pytest.raises(TargetError, match="container web-1: cannot read its mounts"):
        kernel.read_view(inspect, "container web-1")
