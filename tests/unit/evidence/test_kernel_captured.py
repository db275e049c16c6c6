"""lockd.evidence.kernel's parsers on what a real GPU machine's kernel printed (tests/assets/kernel)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lockd.evidence.kernel import parse_cgroup, parse_mountinfo

KERNEL = Path(__file__).resolve().parents[2] / "assets" / "kernel"


def test_a_gpu_machines_mountinfo_parses_whole() -> None:
    entries = parse_mountinfo((KERNEL / "h100-vm-mountinfo.txt").read_bytes())
    assert len(entries) == 11
    by_point = {e.mount_point: e for e in entries}
    driver = by_point["/usr/local/nvidia"]
    assert (driver.fstype, driver.source, driver.read_only) == ("squashfs", "/dev/vdb", True)
    assert "nosuid" in driver.options
    assert by_point["/"].fstype == "ext4"
    assert by_point["/sys/fs/cgroup"].fstype == "cgroup2"
    assert "nsdelegate" in by_point["/sys/fs/cgroup"].super_options
    stacked = Counter(e.mount_point for e in entries)
    assert stacked["/dev/pts"] == 2 and stacked["/dev/shm"] == 2
    parents = {e.mount_id for e in entries} | {1}
    assert all(e.parent_id in parents for e in entries)


def test_a_gpu_machines_cgroup_is_v2() -> None:
    lines = parse_cgroup((KERNEL / "h100-vm-cgroup.txt").read_bytes())
    assert lines == [("0", (), "/process_api/022827e431b807500d9083d107683abf")]
