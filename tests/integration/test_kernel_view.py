"""The kernel's view (lockd.evidence.kernel) and caches a container cannot freeze (issue #15 parts 4, 5),
against the real daemon: each test is a container that tries to defeat a reuse rule or to hide
a mount, and `lockd verify` must still answer NOT VERIFIED (exit 1) with the right check and a
finding naming the path or mount. Plain containers, restarted ones, Docker's own mounts: clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_deep import SITE, check, findings, sh
from test_integrity_reuse import Deep, recorded, reused
from test_probe_reuse import Lockd, Verifier, failing
from test_probe_reuse import reused as probe_reused

CHROOT_INIT = (
    "import os, time\n"
    "os.makedirs('/decoy/opt/venv', exist_ok=True)\n"
    "os.makedirs('/decoy/dev', exist_ok=True)\n"
    "os.chroot('/decoy')\n"
    "os.chdir('/')\n"
    "time.sleep(10**6)\n"
)
"""PID 1 of the first attack: chroot() into a decoy directory (with the /dev and mount points
a walk through /proc/PID/root looked for: lockd before this change then kept and took again
its --deep result, exit 0 after the edit), then wait."""


def chrooted(pid: int) -> bool:
    try:
        return bool(pid) and os.readlink(f"/proc/{pid}/root") == "/decoy"
    except OSError:
        return False


def kernel_mounts(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f["path"], f["observed"].split()[0])
        for f in check(report, "filesystem")["findings"]
        if f["kind"] == "mount"
    ]


@pytest.fixture
def volume(docker_client: Any) -> Iterator[str]:
    """A fresh named volume (removed at teardown)."""
    name = f"lockd-test-{uuid.uuid4().hex[:10]}"
    docker_client.volumes.create(name, labels={"lockd.test": "1"})
    yield name
    # torn down before run_container's containers: remove the ones that hold it first
    for container in docker_client.containers.list(all=True, filters={"volume": name}):
        with contextlib.suppress(Exception):
            container.remove(force=True)
    with contextlib.suppress(Exception):
        docker_client.volumes.get(name).remove(force=True)


@pytest.fixture
def verifier(
    docker_client: Any, lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path
) -> Callable[[Any], Verifier]:
    """``verifier(container)``: recorded, then verified with its own probe cache."""
    return lambda container: Verifier(container, lockd, docker_client, keypair, tmp_path)


@pytest.fixture
def deep_of(lockd: Lockd, keypair: tuple[Path, Path], tmp_path: Path) -> Callable[[Any], Deep]:
    """``deep_of(container)``: recorded with --deep, then verified with --deep."""
    return lambda container: recorded(Deep(lockd, keypair, container, tmp_path))


# --- no false positives --------------------------------------------------------------------------


def test_a_plain_container_verifies_clean_and_says_what_the_kernel_showed(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    """Docker's own mounts (/etc/hosts, /dev/mqueue, /dev/pts, /sys/fs/cgroup, the /proc
    masks) are declared: nothing is found, isolation passes."""
    container = run_container(app_image)
    v = verifier(container)
    code, report, _ = v.json()
    assert (code, failing(report)) == (0, [])
    assert kernel_mounts(report) == []
    assert check(report, "isolation")["status"] == "pass"


def test_a_restarted_container_still_verifies_clean(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    container = run_container(app_image)
    v = verifier(container)
    assert v.json()[0] == 0
    container.restart(timeout=1)
    for _ in range(2):  # (the second may take the first's report: the same content)
        code, report, _ = v.json("--no-cache")
        assert (code, failing(report), kernel_mounts(report)) == (0, [], [])
        assert check(report, "isolation")["status"] == "pass"
        code, report, _ = v.json()
        assert (code, failing(report)) == (0, [])


def test_a_container_with_sys_admin_is_said_in_the_report(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    container = run_container(app_image, cap_add=["SYS_ADMIN"])
    code, report, _ = verifier(container).json()
    assert (code, failing(report)) == (0, [])
    isolation = check(report, "isolation")
    assert isolation["status"] == "warn"
    assert [(f["kind"], f["name"]) for f in isolation["findings"]] == [("capability", "SYS_ADMIN")]


# --- 1. chroot freezes the cache -----------------------------------------------------------------


def test_a_chrooted_init_cannot_freeze_the_integrity_result(
    app_image: str,
    run_container: Callable[..., Any],
    deep_of: Callable[[Any], Deep],
    volume: str,
) -> None:
    """PID 1 calls chroot() into a decoy; the venv lives on a volume; a file its RECORD lists
    is then edited. `verify --deep` hashes again (exit 1, `modified`), never reusing the result
    kept before the edit; the chroot is host evidence in the report."""
    container = run_container(
        app_image,
        command=["python3", "-c", CHROOT_INIT],
        volumes={volume: {"bind": "/opt/venv", "mode": "rw"}},
    )
    deadline = time.monotonic() + 30
    while not chrooted(container.attrs["State"]["Pid"]):
        container.reload()
        assert time.monotonic() < deadline, "the init never called chroot()"
        time.sleep(0.1)
    d = deep_of(container)
    code, first = d.verify()
    assert code == 0, first
    isolation = check(first, "isolation")
    assert isolation["status"] == "warn"
    pid = container.attrs["State"]["Pid"]
    foreign = ("foreign-root", "/decoy", f"pid {pid}")
    assert foreign in [(f["kind"], f.get("path"), f.get("observed")) for f in isolation["findings"]]
    d.verify()

    sh(container, f"echo 'x = 1' >> {SITE}/six.py")
    code, report = d.verify()
    assert (code, reused(report)) == (1, False)
    assert "integrity" in failing(report)
    assert findings(report) == [("modified", f"{SITE}/six.py")]


def test_a_volume_edited_on_its_host_side_is_hashed_again(
    app_image: str,
    run_container: Callable[..., Any],
    deep_of: Callable[[Any], Deep],
    volume: str,
    docker_client: Any,
) -> None:
    """The same volume, no chroot: the kept result is taken while nothing changed, and not
    after its host side changed (read from the volume's Source, not through the container)."""
    container = run_container(app_image, volumes={volume: {"bind": "/opt/venv", "mode": "rw"}})
    d = deep_of(container)
    assert d.verify()[0] == 0
    time.sleep(1.1)  # past the settling time of what the container wrote at start
    d.verify()
    code, report = d.verify()
    assert (code, reused(report)) == (0, True)

    source = Path(docker_client.volumes.get(volume).attrs["Mountpoint"])
    six = source / "lib/python3.11/site-packages/six.py"
    six.write_text(six.read_text() + "x = 1\n")
    code, report = d.verify()
    assert (code, reused(report)) == (1, False)
    assert findings(report) == [("modified", f"{SITE}/six.py")]


# --- 2. a mount made inside the container --------------------------------------------------------


def test_a_tmpfs_mounted_inside_over_a_package_fails_filesystem_and_is_not_reused(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    container = run_container(app_image, cap_add=["SYS_ADMIN"])
    v = verifier(container)
    v.json()
    code, report, execs = v.json()
    assert (code, execs, probe_reused(report) is not None) == (0, 0, True)

    sh(container, f"mount -t tmpfs tmpfs {SITE}/idna && echo 'evil = 1' > {SITE}/idna/__init__.py")
    code, report, execs = v.json()
    assert (code, probe_reused(report)) == (1, None)
    assert execs >= 1
    assert "filesystem" in failing(report)
    assert (f"{SITE}/idna", "tmpfs") in kernel_mounts(report)
    [finding] = [f for f in check(report, "filesystem")["findings"] if f["kind"] == "mount"]
    assert "mounted inside the container" in finding["message"]


def test_a_mount_point_with_a_space_a_tab_a_newline_and_a_backslash_is_named_exactly(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    """The kernel escapes them in mountinfo (\\040 \\011 \\012 \\134): the finding names
    the real path."""
    container = run_container(app_image, cap_add=["SYS_ADMIN"])
    v = verifier(container)
    assert v.json()[0] == 0
    name = "/srv/a b\tc\nd\\e"
    code, output = container.exec_run(
        ["sh", "-c", 'mkdir -p "$1" && mount -t tmpfs x "$1"', "-", name]
    )
    assert code == 0, output.decode()
    code, report, _ = v.json()
    assert code == 1
    assert kernel_mounts(report) == [(name, "tmpfs")]


def test_a_mount_in_a_private_namespace_of_a_child_process_is_found(
    app_image: str, run_container: Callable[..., Any], verifier: Callable[[Any], Verifier]
) -> None:
    """Mount namespaces can differ between a container's processes: every one is read."""
    container = run_container(app_image, cap_add=["SYS_ADMIN"])
    v = verifier(container)
    assert v.json()[0] == 0
    hidden = "mount -t tmpfs tmpfs /opt/venv/bin && exec sleep 600"
    container.exec_run(["unshare", "-m", "sh", "-c", hidden], detach=True)
    time.sleep(1)
    code, report, _ = v.json()
    assert code == 1
    assert [p for p, fstype in kernel_mounts(report) if fstype == "tmpfs"] == ["/opt/venv/bin"]


# --- 5. a change on a bind mount's host side, a write during the probe ---------------------------


def test_a_bind_mount_over_a_place_is_walked_and_a_dataset_volume_is_not(
    app_image: str,
    run_container: Callable[..., Any],
    verifier: Callable[[Any], Verifier],
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    data = tmp_path / "data"
    lib.mkdir()
    data.mkdir()
    container = run_container(
        app_image,
        volumes={
            str(lib): {"bind": "/opt/venv/share/lib", "mode": "rw"},  # under sys.prefix
            str(data): {"bind": "/data", "mode": "rw"},  # under no place the report rests on
        },
    )
    v = verifier(container)
    v.json()
    time.sleep(1.1)
    # Warm up until a report is taken again. Not keeping one is always safe (the next
    # verification probes), and on a machine loaded by other jobs a verification now and then
    # keeps nothing (seen in full runs beside other sessions, not reproduced alone): up to
    # three tries, so that the rules below are what this test holds.
    assert any(probe_reused(v.json()[1]) is not None for _ in range(3))

    (data / "shard-0001.bin").write_bytes(b"\0" * 16)
    code, report, execs = v.json()
    assert (code, execs, probe_reused(report) is not None) == (0, 0, True)

    (lib / "evil.so").write_bytes(b"\0")
    code, report, execs = v.json()
    assert (code, probe_reused(report)) == (0, None)
    assert execs >= 1


def test_a_write_during_the_probe_keeps_nothing(
    app_image: str,
    run_container: Callable[..., Any],
    verifier: Callable[[Any], Verifier],
    tmp_path: Path,
) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    container = run_container(
        app_image, volumes={str(lib): {"bind": "/opt/venv/share/lib", "mode": "rw"}}
    )
    v = verifier(container)
    stop = threading.Event()

    def write() -> None:
        n = 0
        while not stop.is_set():
            (lib / "f").write_text(str(n))
            n += 1
            time.sleep(0.05)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        for _ in range(2):
            code, report, execs = v.json()
            assert (code, probe_reused(report)) == (0, None)
            assert execs >= 1
        assert not v.cache_file.exists()
    finally:
        stop.set()
        writer.join()
    time.sleep(1.1)
    v.json()
    kept = json.loads(v.cache_file.read_text())
    assert "/opt/venv" in kept["places"]
    assert probe_reused(v.json()[1]) is not None


def test_the_integrity_cache_keeps_the_places_it_rests_on(
    app_image: str, run_container: Callable[..., Any], deep_of: Callable[[Any], Deep]
) -> None:
    d = deep_of(run_container(app_image))
    d.verify()
    kept = json.loads(zlib.decompress(d.cache_file.read_bytes()))
    assert SITE in kept["places"]
