"""The probe cache's ``sibling`` fingerprint (lockd.evidence.cache.fingerprint) without Docker:
what identical containers of one image share, read from real upper directories (content, not
inodes or times), with real processes of their own mount namespace standing for two
containers' init processes (whose /dev is never read: it is reached only through their root,
the container's choice). The shape of the kernel's view (lockd.evidence.kernel) is a stand-in
here; tests/unit/evidence/test_kernel.py covers it."""

from __future__ import annotations

import copy
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lockd.evidence import kernel
from lockd.evidence.cache import fingerprint as fingerprints
from lockd.evidence.cache.fingerprint import exact

PROBE = [["/opt/venv/bin/python", "-I", "-c", "print('probe')"]]


@pytest.fixture
def sandbox(root_required: None) -> Iterator[Callable[[], int]]:
    """``sandbox()``: the pid of a new process of its own mount namespace whose /dev is a fresh
    tmpfs holding ``ready`` (the same content in each), standing for a container's init."""
    started: list[subprocess.Popen[bytes]] = []

    def _start() -> int:
        child = subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs tmpfs /dev && touch /dev/ready && exec sleep 600",
            ]
        )
        started.append(child)
        ready = Path(f"/proc/{child.pid}/root/dev/ready")
        while not ready.exists():
            assert child.poll() is None, "unshare failed (this test needs root)"
            time.sleep(0.01)
        return child.pid

    yield _start
    for child in started:
        child.kill()
        child.wait()


def populate(upper: Path) -> Path:
    """An upper directory of a few entries: a directory, files, a symbolic link."""
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("hello\n")
    (upper / "etc/app.conf").write_bytes(b"threads = 4\n")
    (upper / "tmp").mkdir()
    (upper / "etc/localtime").symlink_to("/usr/share/zoneinfo/UTC")
    return upper


def attrs_of(
    container_id: str, upper: Path, pid: int, hostname: str, started: str
) -> dict[str, Any]:
    """An inspect answer: overlay2 with ``upper``, a running init ``pid``."""
    return {
        "Id": container_id,
        "Image": "sha256:" + "a" * 64,
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(upper)}},
        "State": {"Pid": pid, "StartedAt": started},
        "Config": {
            "Hostname": hostname,
            "Domainname": f"{hostname}.example",
            "Labels": {"replica": hostname},
            "Env": ["PATH=/usr/bin"],
            "User": "",
            "WorkingDir": "/",
        },
        "HostConfig": {"IpcMode": "private", "Tmpfs": None, "Devices": []},
        "Mounts": [],
        "HostsPath": str(upper.parent / f"hosts-{hostname}"),
    }


PLACES = ["/opt/venv"]


@pytest.fixture
def pair(
    tmp_path: Path, sandbox: Callable[[], int], monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Two identical containers of one image: other ids, hostnames, labels, start times and init
    processes; upper directories of the same content made apart (other inodes, other times).
    Each one's cgroup holds its init; the shape of its kernel view is ``attrs["shape"]``."""
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: ([pid], None))
    monkeypatch.setattr(fingerprints, "kernel_shape", lambda attrs: attrs.get("shape", "one"))
    first = populate(tmp_path / "a")
    time.sleep(0.05)  # past the coarse clock of file times
    second = populate(tmp_path / "b")
    for path in [second, *second.rglob("*")]:
        os.utime(path, (1_000_000, 1_000_000), follow_symlinks=False)
    return (
        attrs_of("a" * 64, first, sandbox(), "alpha", "2026-01-02T03:04:05.1Z"),
        attrs_of("b" * 64, second, sandbox(), "beta-host", "2026-01-02T03:09:00.2Z"),
    )


def sibling(attrs: dict[str, Any], argvs: list[list[str]] = PROBE) -> str:
    found = fingerprints.sibling(attrs, argvs)
    assert found is not None and len(found) == 64
    return found


def changed(attrs: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A copy of ``attrs`` with the value at ``path`` replaced."""
    other = copy.deepcopy(attrs)
    where = other
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return other


def upper(attrs: dict[str, Any]) -> Path:
    return Path(attrs["GraphDriver"]["Data"]["UpperDir"])


# --- the same for identical containers -----------------------------------------------------------


def test_identical_containers_share_the_sibling_fingerprint_not_their_own(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    assert (upper(a) / "etc/motd").stat().st_ino != (upper(b) / "etc/motd").stat().st_ino
    assert (upper(a) / "etc/motd").stat().st_mtime_ns != (upper(b) / "etc/motd").stat().st_mtime_ns
    assert a["State"] != b["State"]
    assert sibling(a) == sibling(b)
    assert sibling(a) == sibling(copy.deepcopy(a))
    own_a, own_b = exact(a, PROBE, PLACES), exact(b, PROBE, PLACES)
    assert own_a is not None and own_b is not None and own_a != own_b
    assert sibling(a) != own_a


def test_a_files_times_alone_do_not_change_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, _ = pair
    before = sibling(a)
    os.utime(upper(a) / "etc/motd", (5, 5))
    (upper(a) / "etc/motd").write_text("hello\n")  # the same bytes again: a new ctime
    assert sibling(a) == before


# --- different content, different settings -------------------------------------------------------


def test_one_byte_of_a_file_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    (upper(b) / "etc/app.conf").write_bytes(b"threads = 5\n")
    assert sibling(a) != sibling(b)


def test_a_files_mode_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    (upper(b) / "etc/motd").chmod(0o755)
    assert sibling(a) != sibling(b)


def test_a_files_owner_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    os.chown(upper(b) / "etc/motd", 65534, 65534)
    assert sibling(a) != sibling(b)


def test_a_links_target_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    link = upper(b) / "etc/localtime"
    link.unlink()
    link.symlink_to("/usr/share/zoneinfo/UTD")  # as long as the first
    assert sibling(a) != sibling(b)


def test_an_extra_empty_file_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    (upper(b) / "tmp/f").write_bytes(b"")
    assert sibling(a) != sibling(b)


def test_nothing_is_read_through_a_containers_root(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """/proc/PID/root is the container's choice (a chroot'd init points it at a decoy): its
    /dev, a tmpfs over no place a probe's report rests on, is not compared."""
    a, b = pair
    Path(f"/proc/{b['State']['Pid']}/root/dev/shm-file").write_text("x")
    assert sibling(a) == sibling(b)


def test_another_shape_of_the_kernels_view_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    assert sibling({**b, "shape": "two"}) != sibling(a)
    assert fingerprints.sibling({**b, "shape": None}, PROBE) is None


@pytest.mark.parametrize(
    "path, value",
    [
        (("Config", "Env"), ["PATH=/usr/bin", "X=1"]),
        (("Config", "User"), "1000"),
        (("Image",), "sha256:" + "b" * 64),
        (("HostConfig", "Devices"), [{"PathOnHost": "/dev/null", "PathInContainer": "/dev/x"}]),
        (("HostConfig", "IpcMode"), "host"),
    ],
)
def test_a_changed_setting_changes_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]], path: tuple[str, ...], value: object
) -> None:
    a, b = pair
    assert sibling(changed(b, path, value)) != sibling(a)


def test_other_inputs_change_the_sibling_fingerprint(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    other = [["/usr/bin/python3", "-I", "-c", "print('probe')"]]
    assert sibling(b, other) != sibling(a)
    assert sibling(b, [*PROBE, *other]) != sibling(a)


def test_a_fifo_is_never_opened_only_its_mode_counts(
    pair: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    a, b = pair
    os.mkfifo(upper(b) / "tmp/pipe")  # opened for reading, it would block: no writer
    found: list[str | None] = []
    worker = threading.Thread(target=lambda: found.append(fingerprints.sibling(b, PROBE)))
    worker.daemon = True
    worker.start()
    worker.join(60)  # a guard against a hang, not a measure of time
    assert not worker.is_alive(), "the sibling fingerprint blocked on a FIFO"
    [with_fifo] = found
    assert isinstance(with_fifo, str)
    assert with_fifo != sibling(a)
    (upper(b) / "tmp/pipe").unlink()
    assert sibling(b) == sibling(a)


# --- none ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, value",
    [
        (("Mounts",), [{"Type": "volume", "Destination": "/data"}]),
        (("HostConfig", "Tmpfs"), {"/scratch": "rw"}),
        (("GraphDriver", "Name"), "btrfs"),
        (("GraphDriver", "Data", "UpperDir"), ""),
        (("GraphDriver", "Data", "UpperDir"), "/nonexistent/lockd-upper"),
        (("GraphDriver", "Data", "UpperDir"), "/etc/hostname"),
        (("State", "Pid"), 0),
    ],
    ids=["mounts", "tmpfs", "driver", "no-upper", "missing-upper", "upper-a-file", "no-pid"],
)
def test_a_container_whose_content_cannot_be_compared_has_none(
    pair: tuple[dict[str, Any], dict[str, Any]], path: tuple[str, ...], value: object
) -> None:
    a, _ = pair
    assert fingerprints.sibling(changed(a, path, value), PROBE) is None


def test_more_content_than_max_content_bytes_has_none(
    pair: tuple[dict[str, Any], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = pair
    total = len(b"hello\n") + len(b"threads = 4\n")
    monkeypatch.setattr(fingerprints, "MAX_CONTENT_BYTES", total)
    assert fingerprints.sibling(a, PROBE) is not None
    (upper(a) / "tmp/f").write_bytes(b"x")
    assert fingerprints.sibling(a, PROBE) is None


def test_more_entries_than_max_entries_have_none(
    pair: tuple[dict[str, Any], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = pair
    # the upper directory holds etc, tmp, etc/motd, etc/app.conf, etc/localtime
    monkeypatch.setattr(fingerprints, "MAX_ENTRIES", 5)
    assert fingerprints.sibling(a, PROBE) is not None
    (upper(a) / "tmp/f").write_text("")
    assert fingerprints.sibling(a, PROBE) is None
