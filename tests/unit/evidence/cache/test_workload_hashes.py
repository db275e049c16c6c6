"""The workload's hash cache (lockd.evidence.cache.hashes, #17): digests of mapped files kept per
device and inode with lockd's one guard, in memory and across runs in the kept-store; never
taken for a file whose guard changed, from another boot, or from a malformed entry. The last
test reads a real process's mapping (root: /proc/PID/map_files)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from lockd.evidence.cache import hashes
from lockd.evidence.cache.hashes import HashCache, load, save
from lockd.evidence.workload import read_workload


def later() -> int:
    """A "now" well past RACY_NS after any file written so far (read when the test runs, not
    when the module is collected: a full run starts tests minutes after collecting them)."""
    return time.time_ns() + 10 * 10**9


LIBZ = "/usr/lib/x86_64-linux-gnu/libz.so.1"


def entry(tmp_path: Path) -> dict[str, object]:
    data = (tmp_path / hashes.ENTRY).read_bytes()
    document: dict[str, object] = json.loads(zlib.decompress(data))
    return document


def test_digests_are_kept_across_runs_and_taken_while_the_guard_holds(tmp_path: Path) -> None:
    library = tmp_path / "lib.so"
    library.write_bytes(b"\x7fELF" + b"\0" * 60)
    st = os.stat(library)
    cache = HashCache()
    assert cache.put(st, "a" * 64, "lib.so.1", later())
    assert save(cache, tmp_path / "kept")
    assert not save(cache, tmp_path / "kept")  # nothing new since: not written again
    kept = load(tmp_path / "kept")
    assert len(kept) == 1
    assert kept.get(os.stat(library)) == ("a" * 64, "lib.so.1")
    document = entry(tmp_path / "kept")
    assert document["format"] == hashes.FORMAT
    assert document["boot"] == hashes.boot_id() != ""
    [row] = document["files"]  # type: ignore[misc]
    assert row == [st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                   st.st_mode, "a" * 64, "lib.so.1"]  # fmt: skip


def test_a_file_changed_just_before_it_was_hashed_is_not_kept(tmp_path: Path) -> None:
    library = tmp_path / "lib.so"
    library.write_bytes(b"x")
    cache = HashCache()
    assert not cache.put(os.stat(library), "a" * 64, None, time.time_ns())
    assert len(cache) == 0
    assert not save(cache, tmp_path / "kept")


def test_digests_of_another_boot_are_not_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a reboot, an overlay or tmpfs mount's device number and inode numbers are handed
    out again: a kept digest could name another file with the same numbers."""
    library = tmp_path / "lib.so"
    library.write_bytes(b"x")
    cache = HashCache()
    cache.put(os.stat(library), "a" * 64, None, later())
    assert save(cache, tmp_path / "kept")
    monkeypatch.setattr(hashes, "boot_id", lambda: "another-boot")
    assert len(load(tmp_path / "kept")) == 0
    monkeypatch.setattr(hashes, "boot_id", lambda: "")
    assert len(load(tmp_path / "kept")) == 0
    assert not save(cache, tmp_path / "unknown-boot")


@pytest.mark.parametrize(
    "row",
    [
        [1, 2, 3, 4, 5, 6, "a" * 63, None],  # not a sha256
        [1, 2, 3, 4, 5, 6, "g" * 64, None],
        [1, 2, 3, 4, 5, "6", "a" * 64, None],  # a number that is not one
        [1, 2, 3, 4, -5, 6, "a" * 64, None],
        [1, 2, 3, 4, 5, True, "a" * 64, None],
        [1, 2, 3, 4, 5, 6, "a" * 64, 7],  # a soname that is not text
        [1, 2, 3, 4, 5, 6, "a" * 64],  # too short
        {"device": 1},
    ],
)
def test_a_malformed_row_is_never_taken(tmp_path: Path, row: object) -> None:
    good = [1, 2, 3, 4, 5, 6, "b" * 64, None]
    store = hashes._store(tmp_path)
    assert store.save(hashes.ENTRY, {"boot": hashes.boot_id(), "files": [row, good]})
    kept = load(tmp_path)
    assert len(kept) == 1
    [(guard, sha256, _)] = kept.items()
    assert (guard[0], guard[1].inode, sha256) == (1, 5, "b" * 64)


def test_the_entries_used_last_are_kept_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hashes, "MAX_KEPT", 2)
    files = []
    for n in range(3):
        path = tmp_path / f"lib{n}.so"
        path.write_bytes(b"x" * n)
        files.append(os.stat(path))
    first = HashCache()
    for n, st in enumerate(files):
        first.put(st, f"{n:064x}", None, later())
    assert save(first, tmp_path / "kept")
    assert len(load(tmp_path / "kept")) == 2
    second = load(tmp_path / "kept")
    third = tmp_path / "lib3.so"
    third.write_bytes(b"y")
    second.put(os.stat(third), "f" * 64, None, later())  # used by this run: kept before the rest
    assert save(second, tmp_path / "kept")
    assert load(tmp_path / "kept").get(os.stat(third)) == ("f" * 64, None)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


LOAD = """
import ctypes, sys, time
library = ctypes.CDLL(sys.argv[1])
print('ready', flush=True)
time.sleep(120)
"""


def test_a_library_rewritten_in_place_with_its_size_and_mtime_kept_is_read_again(
    root_required: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process maps a library; its digest is kept across runs; the library is rewritten in
    place (same inode) with other bytes of the same size and its mtime put back: the next run's
    kept digests do not vouch for it (its ctime moved), it is read again through the mapping."""
    copy = tmp_path / "libcopy.so.1"
    shutil.copyfile(os.path.realpath(LIBZ), copy)
    loaded = sha256(copy)
    child = subprocess.Popen(
        [sys.executable, "-c", LOAD, str(copy)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        now = later()
        monkeypatch.setattr(time, "time_ns", lambda: now)  # every file is old enough to keep
        first = load(tmp_path / "kept")
        found = read_workload([child.pid], hashes=first)
        [mapped] = [f for f in found.files if f.path == str(copy)]
        assert mapped.sha256 == loaded
        assert save(first, tmp_path / "kept")
        warm = read_workload([child.pid], hashes=load(tmp_path / "kept"))
        assert (warm.hashed, warm.reused) == (0, len(warm.files))

        before = copy.stat()
        data = bytearray(copy.read_bytes())
        data[-1] ^= 0xFF
        with copy.open("r+b") as handle:
            handle.write(bytes(data))
        os.utime(copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        after = copy.stat()
        assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )
        again = read_workload([child.pid], hashes=load(tmp_path / "kept"))
        [mapped] = [f for f in again.files if f.path == str(copy)]
        assert mapped.sha256 == sha256(copy) != loaded
        assert (again.hashed, again.reused) == (1, len(again.files) - 1)
    finally:
        child.kill()
        child.wait()
