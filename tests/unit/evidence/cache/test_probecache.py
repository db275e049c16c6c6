"""The probe cache without Docker: the ``exact`` fingerprint of what a probe can see
(lockd.evidence.cache.fingerprint), read from real directories standing for a container's upper
directory and its mounts' host side, and from the kernel's view of a real process of its own
mount namespace standing for its init (never through its root); the cache files kept and
trusted."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lockd.evidence import kernel
from lockd.evidence.cache import fingerprint as fingerprints
from lockd.evidence.cache import probe as probecache
from lockd.evidence.cache.fingerprint import exact
from lockd.evidence.cache.probe import FORMAT, CachedProbe, load, store

PROBE = [["/opt/venv/bin/python", "-I", "-c", "print('probe')"]]
CONTAINER = "c" * 64
OTHER = "d" * 64
NOW = "2026-01-02T03:04:05+00:00"


@pytest.fixture
def init_pid(root_required: None) -> Iterator[int]:
    """A process of its own mount namespace whose /dev is a fresh tmpfs (holding ``ready``),
    standing for a container's init: the host's /dev changes under other tests (PostgreSQL's
    /dev/shm segments), this one only when a test writes to it."""
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
    ready = Path(f"/proc/{child.pid}/root/dev/ready")
    while not ready.exists():
        assert child.poll() is None, "unshare failed (this test needs root)"
        time.sleep(0.01)
    yield child.pid
    child.kill()
    child.wait()


@pytest.fixture
def attrs(tmp_path: Path, init_pid: int, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """An inspect answer: overlay2 with an upper directory of one file, a running init. The
    container's cgroup holds ``members`` (init, and what a test adds)."""
    members = [init_pid]
    monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: (list(members), None))
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/motd").write_text("hello\n")
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    return {
        "Id": CONTAINER,
        "Image": "sha256:" + "a" * 64,
        "GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": str(upper)}},
        "State": {"Pid": init_pid, "StartedAt": "2026-01-02T03:04:05.123456789Z"},
        "Config": {"Env": ["PATH=/usr/bin"], "User": "", "WorkingDir": "/"},
        "HostConfig": {"IpcMode": "private", "Tmpfs": None},
        "Mounts": [],
        "HostsPath": str(hosts),
        "members": members,  # for the tests: not the daemon's
    }


PLACES = ["/opt/venv", "/opt/venv/lib/python3.11/site-packages", "/usr/lib/python3.11"]


def key(attrs: dict[str, Any], argvs: list[list[str]] = PROBE, found: list[str] = PLACES) -> str:
    got = exact(attrs, argvs, found)
    assert got is not None
    return got


def changed(attrs: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A copy of ``attrs`` with the value at ``path`` replaced."""
    other = copy.deepcopy(attrs)
    other["members"] = attrs["members"]
    where = other
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return other


def in_namespace(pid: int, *command: str) -> subprocess.Popen[bytes]:
    """Run ``command`` in the mount namespace of ``pid`` (nsenter)."""
    return subprocess.Popen(["nsenter", "-t", str(pid), "-m", *command])


# --- fingerprint ---------------------------------------------------------------------------------


def test_the_same_container_has_the_same_fingerprint(attrs: dict[str, Any]) -> None:
    first = key(attrs)
    assert len(first) == 64
    assert key(copy.deepcopy(attrs)) == first


def test_a_new_file_in_the_upper_directory_changes_the_fingerprint(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    before = key(attrs)
    (tmp_path / "upper/etc/new").write_text("")
    assert key(attrs) != before


def test_a_file_rewritten_with_its_mtime_set_back_changes_the_fingerprint(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    motd = tmp_path / "upper/etc/motd"
    was = motd.stat()
    before = key(attrs)
    time.sleep(0.05)  # past the coarse clock of file times
    motd.write_text("HELLO\n")
    os.utime(motd, ns=(was.st_atime_ns, was.st_mtime_ns))
    now = motd.stat()
    assert (now.st_size, now.st_mtime_ns, now.st_ino) == (was.st_size, was.st_mtime_ns, was.st_ino)
    assert now.st_ctime_ns != was.st_ctime_ns
    assert key(attrs) != before


def test_nothing_is_read_through_the_inits_root(attrs: dict[str, Any], init_pid: int) -> None:
    """/proc/PID/root is the container's choice (a chroot'd init points it at a decoy): the
    fingerprint reads nothing there. A write to its /dev, a tmpfs over no place the report
    rests on, changes nothing a probe reports."""
    before = key(attrs)
    Path(f"/proc/{init_pid}/root/dev/shm-file").write_text("x")
    assert key(attrs) == before


def test_a_mount_made_in_the_containers_namespace_changes_the_fingerprint(
    attrs: dict[str, Any], init_pid: int
) -> None:
    before = key(attrs)
    made = in_namespace(init_pid, "mount", "-t", "tmpfs", "tmpfs", "/mnt")
    assert made.wait() == 0
    assert key(attrs) != before


def test_a_process_with_another_root_changes_the_fingerprint(
    attrs: dict[str, Any], init_pid: int
) -> None:
    before = key(attrs)
    chrooted = in_namespace(
        init_pid, sys.executable, "-c", "import os, time; os.chroot('/tmp'); time.sleep(600)"
    )
    try:
        while os.readlink(f"/proc/{chrooted.pid}/root") != "/tmp":
            time.sleep(0.01)
        attrs["members"].append(chrooted.pid)
        assert key(attrs) != before
    finally:
        chrooted.kill()
        chrooted.wait()


def test_a_process_that_comes_and_goes_in_inits_namespace_and_root_changes_nothing(
    attrs: dict[str, Any], init_pid: int
) -> None:
    """What lockd's own ``docker exec`` probe is: it must not change the fingerprint."""
    before = key(attrs)
    probe = in_namespace(init_pid, "sleep", "600")
    try:
        while os.readlink(f"/proc/{probe.pid}/ns/mnt") != os.readlink(f"/proc/{init_pid}/ns/mnt"):
            time.sleep(0.01)
        attrs["members"].append(probe.pid)
        assert key(attrs) == before
    finally:
        probe.kill()
        probe.wait()
    assert key(attrs) == before  # gone: skipped


def test_a_namespace_only_a_chrooted_process_shows_has_no_fingerprint(
    attrs: dict[str, Any], init_pid: int
) -> None:
    """A chroot'd process's mountinfo leaves out what lies outside its root: with no process
    of the namespace showing it whole, nothing is reused."""
    other = subprocess.Popen(
        [
            "unshare",
            "--mount",
            sys.executable,
            "-c",
            "import os, time; os.chroot('/tmp'); time.sleep(600)",
        ]
    )
    try:
        while os.readlink(f"/proc/{other.pid}/root") != "/tmp":
            time.sleep(0.01)
        attrs["members"].append(other.pid)
        assert exact(attrs, PROBE, PLACES) is None
    finally:
        other.kill()
        other.wait()


def test_a_rewritten_hosts_file_changes_the_fingerprint(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    before = key(attrs)
    (tmp_path / "hosts").write_text("10.0.0.1 evil\n")
    assert key(attrs) != before


@pytest.mark.parametrize(
    "path, value",
    [
        (("Config", "Env"), ["PATH=/usr/bin", "LD_PRELOAD=/x.so"]),
        (("Image",), "sha256:" + "b" * 64),
        (("State", "StartedAt"), "2026-01-02T03:04:06.000000000Z"),
        (("HostConfig", "IpcMode"), "host"),
    ],
)
def test_a_changed_setting_changes_the_fingerprint(
    attrs: dict[str, Any], path: tuple[str, ...], value: object
) -> None:
    assert key(changed(attrs, path, value)) != key(attrs)


def test_another_probe_command_or_other_places_change_the_fingerprint(
    attrs: dict[str, Any],
) -> None:
    other = [["/usr/bin/python3", "-I", "-c", "print('probe')"]]
    assert key(attrs, other) != key(attrs)
    assert key(attrs, [*PROBE, *other]) != key(attrs)
    assert key(attrs, PROBE, [*PLACES, "/srv/lib"]) != key(attrs)


def volume(attrs: dict[str, Any], tmp_path: Path, destination: str) -> Path:
    source = tmp_path / "volume"
    source.mkdir()
    attrs["Mounts"] = [{"Type": "bind", "Source": str(source), "Destination": destination}]
    return source


@pytest.mark.parametrize(
    "destination", ["/opt/venv/lib/python3.11/site-packages", "/opt", "/opt/venv/extra"]
)
def test_a_change_on_the_host_side_of_a_mount_over_a_place_changes_the_fingerprint(
    attrs: dict[str, Any], tmp_path: Path, destination: str
) -> None:
    source = volume(attrs, tmp_path, destination)
    before = key(attrs)
    assert before != key(changed(attrs, ("Mounts",), []))
    (source / "data.bin").write_bytes(b"\0")
    assert key(attrs) != before


def test_the_order_the_daemon_lists_mounts_in_changes_nothing(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    """Docker builds inspect's Mounts from a Go map: their order differs between calls."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    mounts = [
        {"Type": "bind", "Source": str(tmp_path / "a"), "Destination": "/opt/venv/share/a"},
        {"Type": "bind", "Source": str(tmp_path / "b"), "Destination": "/data"},
    ]
    attrs["Mounts"] = mounts
    assert key(changed(attrs, ("Mounts",), mounts[::-1])) == key(attrs)


def test_a_file_bind_mounted_over_a_place_is_guarded_by_its_stat(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    source = tmp_path / "ld.so.preload"
    source.write_text("")
    attrs["Mounts"] = [{"Type": "bind", "Source": str(source), "Destination": "/etc/ld.so.preload"}]
    loader = probecache.places(None)  # the dynamic loader's files, whatever Python reports
    before = key(attrs, PROBE, loader)
    source.write_text("/evil.so\n")
    assert key(attrs, PROBE, loader) != before


def test_a_dataset_volume_over_no_place_is_not_walked(
    attrs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = volume(attrs, tmp_path, "/data")
    walked: list[str] = []
    monkeypatch.setattr(
        fingerprints, "entry_digest", lambda p, limit, newest=None: walked.append(p) or "x"
    )
    before = key(attrs)
    (source / "shard-0001").write_bytes(b"\0")
    assert key(attrs) == before
    assert str(source) not in walked


@pytest.mark.parametrize(
    "mounts, tmpfs",
    [
        ([], {"/opt/venv/lib/python3.11/site-packages": "rw"}),
        ([{"Type": "tmpfs", "Destination": "/opt/venv", "Source": ""}], None),
        ([{"Type": "volume", "Destination": "/opt", "Source": "/nonexistent/lockd-volume"}], None),
    ],
    ids=["tmpfs", "mount-type-tmpfs", "unreadable-volume"],
)
def test_a_mount_over_a_place_the_host_cannot_read_has_no_fingerprint(
    attrs: dict[str, Any], mounts: list[dict[str, str]], tmpfs: dict[str, str] | None
) -> None:
    attrs["Mounts"], attrs["HostConfig"]["Tmpfs"] = mounts, tmpfs
    assert exact(attrs, PROBE, PLACES) is None
    assert exact(attrs, PROBE, ["/srv"]) is not None  # over no place: not read


def test_a_place_under_the_runtimes_dev_has_no_fingerprint(attrs: dict[str, Any]) -> None:
    assert exact(attrs, PROBE, [*PLACES, "/dev/shm/site"]) is None


@pytest.mark.parametrize(
    "path, value",
    [
        (("GraphDriver", "Name"), "btrfs"),
        (("GraphDriver", "Data", "UpperDir"), ""),
        (("GraphDriver", "Data", "UpperDir"), "/nonexistent/lockd-upper"),
        (("State", "Pid"), 0),
    ],
)
def test_what_the_host_cannot_read_has_no_fingerprint(
    attrs: dict[str, Any], path: tuple[str, ...], value: object
) -> None:
    assert exact(changed(attrs, path, value), PROBE, PLACES) is None


def test_processes_the_host_cannot_list_have_no_fingerprint(
    attrs: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        kernel, "_member_pids", lambda pid, cid: ([pid], "cannot list the processes")
    )
    assert exact(attrs, PROBE, PLACES) is None


def test_more_entries_than_max_entries_have_no_fingerprint(
    attrs: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the limit holds for each tree: upper holds etc, etc/motd, etc/a, etc/b
    (tmp_path / "upper/etc/a").write_text("")
    (tmp_path / "upper/etc/b").write_text("")
    monkeypatch.setattr(fingerprints, "MAX_ENTRIES", 4)
    assert exact(attrs, PROBE, PLACES) is not None
    (tmp_path / "upper/etc/c").write_text("")
    assert exact(attrs, PROBE, PLACES) is None


# --- kept while nothing changed ------------------------------------------------------------------


def test_an_answer_is_kept_only_when_nothing_changed_while_lockd_worked(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    source = volume(attrs, tmp_path, "/opt/venv/lib/python3.11/site-packages")
    (source / "six.py").write_text("")
    time.sleep(fingerprints.SETTLE_NS / 1e9 + 0.05)
    before = probecache.keys(attrs, PROBE)
    after = probecache.keys(attrs, PROBE)
    [(name, own)] = probecache.still_standing(CONTAINER, before, after, attrs, PLACES)
    assert (name, own) == (CONTAINER, key(attrs))

    (source / "six.py").write_text("x")  # a write on the mount's host side while it ran
    after = probecache.keys(attrs, PROBE)
    assert probecache.still_standing(CONTAINER, before, after, attrs, PLACES) == []

    (tmp_path / "upper/etc/new").write_text("")  # and one in the upper directory
    time.sleep(fingerprints.SETTLE_NS / 1e9 + 0.05)
    before = probecache.keys(attrs, PROBE)
    (tmp_path / "upper/etc/newer").write_text("")
    after = probecache.keys(attrs, PROBE)
    assert probecache.still_standing(CONTAINER, before, after, attrs, PLACES) == []


def test_a_kept_report_is_found_under_the_places_it_rests_on(
    attrs: dict[str, Any], tmp_path: Path
) -> None:
    source = volume(attrs, tmp_path, "/opt/venv/lib/python3.11/site-packages")
    directory = tmp_path / "probe"

    def load(name: str, key_for: probecache.KeyFor) -> CachedProbe | None:
        return probecache.load(name, key_for, directory=directory)

    store(CONTAINER, key(attrs), b"{}", "python3", PLACES, directory=directory)
    found, _ = probecache.first_kept(CONTAINER, attrs, PROBE, load)
    assert found is not None and found.stdout == b"{}"
    (source / "evil.pth").write_text("import evil\n")
    found, _ = probecache.first_kept(CONTAINER, attrs, PROBE, load)
    assert found is None


# --- the files -----------------------------------------------------------------------------------


def stored(directory: Path, container: str = CONTAINER, stdout: bytes = b'{"probe": 1}') -> Path:
    store(
        container,
        "k1",
        stdout,
        "/opt/venv/bin/python",
        directory=directory,
        now=dt.datetime.fromisoformat(NOW),
    )
    return directory / f"{container}.json"


def test_a_stored_report_loads_under_its_key_only(tmp_path: Path) -> None:
    path = stored(tmp_path / "probe")
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert load(CONTAINER, "k1", directory=tmp_path / "probe") == CachedProbe(
        b'{"probe": 1}', "/opt/venv/bin/python", NOW
    )
    assert load(CONTAINER, "k2", directory=tmp_path / "probe") is None
    assert load(OTHER, "k1", directory=tmp_path / "probe") is None


@pytest.mark.parametrize("container", ["c" * 63, "C" * 64, "../" + "c" * 61, ""])
def test_a_malformed_container_id_is_neither_stored_nor_loaded(
    tmp_path: Path, container: str
) -> None:
    stored(tmp_path / "probe", container)
    assert not (tmp_path / "probe").exists()
    assert load(container, "k1", directory=tmp_path / "probe") is None


def test_a_report_that_is_not_utf8_is_not_stored(tmp_path: Path) -> None:
    stored(tmp_path / "probe", stdout=b'{"probe": "\xff"}')
    assert not (tmp_path / "probe").exists()


@pytest.mark.usefixtures("root_required")  # chown
def test_a_file_others_can_write_or_own_is_not_trusted(tmp_path: Path) -> None:
    path = stored(tmp_path)
    path.chmod(0o666)
    assert load(CONTAINER, "k1", directory=tmp_path) is None
    path.chmod(0o600)
    assert load(CONTAINER, "k1", directory=tmp_path) is not None
    os.chown(path, 65534, 65534)
    assert load(CONTAINER, "k1", directory=tmp_path) is None


MISSING = object()


@pytest.mark.parametrize(
    "field, value",
    [
        ("format", "lockd-probe-cache/0"),
        ("container", OTHER),
        ("stdout", 5),
        ("stdout", MISSING),
        ("python", None),
        ("observed_at", ["2026"]),
    ],
)
def test_a_document_not_in_the_format_is_not_loaded(
    tmp_path: Path, field: str, value: object
) -> None:
    path = stored(tmp_path)
    document = json.loads(path.read_bytes())
    assert document["format"] == FORMAT and load(CONTAINER, "k1", directory=tmp_path)
    if value is MISSING:
        del document[field]
    else:
        document[field] = value
    path.write_text(json.dumps(document))
    assert load(CONTAINER, "k1", directory=tmp_path) is None


@pytest.mark.parametrize("data", [b"{not json", b"\xff\xfe", b"[1, 2]", b'"text"', b"[" * 100_000])
def test_a_file_that_is_no_document_is_not_loaded(tmp_path: Path, data: bytes) -> None:
    stored(tmp_path).write_bytes(data)
    assert load(CONTAINER, "k1", directory=tmp_path) is None


def test_beyond_max_files_the_least_recently_used_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probecache, "MAX_FILES", 2)
    first, second = stored(tmp_path, "1" * 64), stored(tmp_path, "2" * 64)
    os.utime(first, (1000, 1000))
    os.utime(second, (2000, 2000))
    assert load("1" * 64, "k1", directory=tmp_path) is not None  # used: now the most recent
    third = stored(tmp_path, "3" * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, third.name])
