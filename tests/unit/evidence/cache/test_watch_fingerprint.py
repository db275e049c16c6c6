"""The ``watch`` fingerprint (lockd.evidence.cache.fingerprint): what must change before the
watch agent probes a container again."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from observations import observation, probe

from lockd.evidence import kernel
from lockd.evidence import workload as workloads
from lockd.evidence.cache import fingerprint as fingerprints
from lockd.evidence.cache.fingerprint import (
    host_key,
    ignorable,
    kernel_digest,
    mount_digest,
    watch,
    watched_mounts,
)
from lockd.evidence.cache.guard import tree_digest
from lockd.evidence.hashing import combine
from lockd.judgement.policy import default_policy


def make_tree(root: Path) -> None:
    (root / "opt/venv/lib/site-packages/pkg").mkdir(parents=True)
    (root / "opt/venv/lib/site-packages/pkg/__init__.py").write_text("x = 1\n")
    (root / "etc").mkdir()
    (root / "etc/hosts").write_text("127.0.0.1 localhost\n")
    os.symlink("/nowhere", root / "etc/link")


def test_an_unchanged_tree_keeps_its_digest(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = tree_digest(str(tmp_path))
    assert first is not None
    assert tree_digest(str(tmp_path)) == first


def test_every_kind_of_change_changes_the_digest(tmp_path: Path) -> None:
    make_tree(tmp_path)
    seen = {tree_digest(str(tmp_path))}
    target = tmp_path / "opt/venv/lib/site-packages/pkg/__init__.py"

    def changed() -> bool:
        digest = tree_digest(str(tmp_path))
        new = digest not in seen
        seen.add(digest)
        return new

    (tmp_path / "opt/venv/lib/site-packages/new.pth").write_text("")
    assert changed()  # a file added
    target.write_text("x = 2\n")  # same size: mtime/ctime tell
    os.utime(target, ns=(1, 1))
    assert changed()
    target.chmod(0o600)
    assert changed()  # mode
    (tmp_path / "etc/hosts").unlink()
    assert changed()  # a file deleted
    (tmp_path / "etc/link").unlink()
    os.symlink("/elsewhere/x", tmp_path / "etc/link")
    assert changed()  # a link pointed elsewhere (new inode, size)


def test_no_digest_for_what_cannot_be_walked(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert tree_digest(str(tmp_path / "missing")) is None
    assert tree_digest(str(tmp_path / "etc/hosts")) is None  # a file, not a directory
    assert tree_digest(str(tmp_path), limit=3) is None  # too many entries: probe instead
    assert tree_digest(str(tmp_path), limit=100) is not None


def test_combine_is_unknown_when_any_part_is() -> None:
    assert combine(["a", "b"]) == combine(["a", "b"])
    assert combine(["a", "b"]) != combine(["ab", ""])
    assert combine(["a", None]) is None


def test_watched_mounts_are_those_that_can_hide_what_the_probe_sees() -> None:
    policy = default_policy()
    mounts = [
        ("/data", "/srv/data", "bind", True),
        ("/opt/venv/lib/python3.11/site-packages", "/srv/pkgs", "volume", False),
        ("/models", "/srv/models", "bind", False),
        ("/usr/local/cuda", "/srv/cuda", "bind", False),
    ]
    # by the policy alone (before any probe): site-packages and CUDA
    assert [m[0] for m in watched_mounts(mounts, None, policy)] == [
        "/opt/venv/lib/python3.11/site-packages",
        "/usr/local/cuda",
    ]
    # the probe found Python on sys.path under /data: that mount counts too
    python = probe().python
    observed = observation(
        report=probe(python=python.model_copy(update={"path": [*python.path, "/data/lib"]}))
    )
    assert [m[0] for m in watched_mounts(mounts, observed, policy)] == [
        "/data",
        "/opt/venv/lib/python3.11/site-packages",
        "/usr/local/cuda",
    ]


def test_mounts_that_are_not_paths_here_have_no_digest(tmp_path: Path) -> None:
    make_tree(tmp_path)
    assert mount_digest("tmpfs", "") is None
    assert mount_digest("tmpfs", str(tmp_path)) is None
    assert mount_digest("bind", str(tmp_path)) == tree_digest(str(tmp_path))
    assert mount_digest("volume", str(tmp_path / "gone")) is None
    assert mount_digest("bind", "relative/path") is None


def test_the_host_key_is_the_driver_version_line(tmp_path: Path) -> None:
    version = tmp_path / "version"
    version.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04\n")
    assert host_key(version).endswith("580.159.04\n")
    assert host_key(tmp_path / "none") == "no driver"


def test_writes_the_policy_ignores_do_not_make_a_container_due(tmp_path: Path) -> None:
    make_tree(tmp_path)
    (tmp_path / "var/log").mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    skip = ignorable(default_policy(), observation())
    before = tree_digest(str(tmp_path), skip=skip)
    (tmp_path / "var/log/app.log").write_text("started\n")
    (tmp_path / "tmp/scratch").write_text("x")
    (tmp_path / "opt/venv/lib/site-packages/pkg/__pycache__").mkdir()
    (tmp_path / "opt/venv/lib/site-packages/pkg/__pycache__/m.cpython-311.pyc").write_bytes(b"")
    assert tree_digest(str(tmp_path), skip=skip) == before
    (tmp_path / "opt/venv/lib/site-packages/evil.pth").write_text("import os")
    assert tree_digest(str(tmp_path), skip=skip) != before


def test_an_ignored_place_on_sys_path_still_counts(tmp_path: Path) -> None:
    python = probe().python
    on_tmp = observation(
        report=probe(python=python.model_copy(update={"path": [*python.path, "/tmp/lib"]}))
    )
    skip = ignorable(default_policy(), on_tmp)
    assert skip("/tmp/scratch", False)
    assert not skip("/tmp", True)  # above a sys.path entry
    assert not skip("/tmp/lib", True)
    assert not skip("/tmp/lib/pkg.py", False)
    assert skip("/var/log/app.log", False)
    assert not skip("/opt/venv/lib/python3.11/site-packages/x.py", False)


def test_a_file_bind_mounted_is_guarded_by_its_stat(tmp_path: Path) -> None:
    source = tmp_path / "ld.so.preload"
    source.write_text("")
    before = mount_digest("bind", str(source))
    assert before is not None
    source.write_text("/evil.so\n")
    assert mount_digest("bind", str(source)) != before
    source.chmod(0o600)
    assert mount_digest("bind", str(source)) not in (None, before)


def test_the_watch_fingerprint_has_every_part_and_is_unknown_when_any_part_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(tmp_path / "upper")
    (tmp_path / "upper/tmp").mkdir()
    volume = tmp_path / "site-packages"
    volume.mkdir()
    site = "/opt/venv/lib/python3.11/site-packages"
    monkeypatch.setattr(fingerprints, "kernel_digest", lambda attrs: attrs["view"])
    monkeypatch.setattr(workloads, "workload_key", lambda attrs: attrs["work"])
    mounts = [(site, str(volume), "bind", False), ("/data", str(tmp_path), "bind", True)]

    def key(
        view: str | None = "k",
        upper: str | None = str(tmp_path / "upper"),
        mounted: list[tuple[str, str, str, bool]] = mounts,
        host: str = "580.159.04",
        config: str = "c1",
        work: str | None = "w",
    ) -> str | None:
        attrs = {"view": view, "work": work}
        return watch(config, upper, attrs, mounted, host, default_policy(), observation())

    before = key()
    assert before is not None and key() == before
    (tmp_path / "upper/tmp/scratch").write_text("x")  # ignored by the policy
    (tmp_path / "data.bin").write_bytes(b"\0")  # a dataset volume: not watched
    assert key() == before
    assert key(config="c2") != before
    assert key(host="580.159.05") != before
    assert key(view="another") != before
    assert key(work="a library mapped mid-run") != before
    (volume / "evil.pth").write_text("import evil\n")
    assert key() != before
    assert key(view=None) is None
    assert key(work=None) is None
    assert key(upper=None) is None
    assert key(mounted=[(site, "", "tmpfs", True)]) is None


def test_the_kernel_key_follows_mounts_made_in_the_namespace_not_processes_coming_and_going(
    root_required: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent's own probe (a ``docker exec`` in init's namespace and root) must not make the
    container due again; a mount made inside must."""
    init = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sleep", "600"])
    mine = os.readlink("/proc/self/ns/mnt")
    others: list[subprocess.Popen[bytes]] = []
    try:
        while os.readlink(f"/proc/{init.pid}/ns/mnt") == mine:
            time.sleep(0.01)
        members = [init.pid]
        monkeypatch.setattr(kernel, "_member_pids", lambda pid, cid: (list(members), None))
        attrs = {"Id": "c" * 64, "State": {"Pid": init.pid}}
        before = kernel_digest(attrs)
        assert before is not None
        probe = subprocess.Popen(["nsenter", "-t", str(init.pid), "-m", "sleep", "600"])
        others.append(probe)
        while os.readlink(f"/proc/{probe.pid}/ns/mnt") == mine:
            time.sleep(0.01)
        members.append(probe.pid)
        assert kernel_digest(attrs) == before
        mounted = subprocess.run(
            ["nsenter", "-t", str(init.pid), "-m", "mount", "-t", "tmpfs", "tmpfs", "/mnt"],
            check=False,
        )
        assert mounted.returncode == 0
        assert kernel_digest(attrs) not in (None, before)
    finally:
        for process in [init, *others]:
            process.kill()
            process.wait()


def test_no_kernel_key_for_processes_the_host_cannot_attribute() -> None:
    """pid 1 of this host is in no cgroup of a container called c...c: nothing to trust."""
    assert kernel_digest({"Id": "c" * 64, "State": {"Pid": 1}}) is None
