"""The one "unchanged" guard (lockd.evidence.cache.guard): size, mtime, ctime, inode and mode of an
entry's lstat, never following a link, compared the same way by every cache that keeps a
result: the layer cache's digests, the integrity cache's guarded files and directories, the
workload's hash cache (in memory and kept across runs), and the tree walks of the fingerprints
(a container's upper directory, a mount's host side)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lockd.evidence.cache import hashes as workload_hashes
from lockd.evidence.cache.guard import (
    StatGuard,
    entry_digest,
    guards_digest,
    paths_digest,
    tree_digest,
)
from lockd.evidence.cache.integrity import Kept
from lockd.evidence.cache.layers import DigestCache
from lockd.model.host import Integrity

GUARD = StatGuard(size=10, mtime_ns=20, ctime_ns=30, inode=40, mode=0o100644)


def test_a_guard_is_the_lstat_of_its_path(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    st = os.lstat(path)
    guard = StatGuard.at(str(path))
    assert guard == (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
    assert guard == StatGuard.of(st)
    os.symlink(path, tmp_path / "link")
    assert StatGuard.at(str(tmp_path / "link")) == StatGuard.of(os.lstat(tmp_path / "link"))
    assert StatGuard.at(str(tmp_path / "link")) != guard  # the link's own, never its target's


@pytest.mark.parametrize("path", ["/nonexistent/lockd-guard", "/a\x00b", "/\ud800"])
def test_no_guard_for_what_is_not_there_or_no_path(path: str) -> None:
    assert StatGuard.at(path) is None
    assert entry_digest(path) is None
    assert tree_digest(path) is None


@pytest.mark.parametrize("field", StatGuard._fields)
def test_every_number_of_a_guard_counts(field: str) -> None:
    other = GUARD._replace(**{field: getattr(GUARD, field) + 1})
    assert other != GUARD
    assert other.line(b"/f") != GUARD.line(b"/f")
    assert guards_digest([("/f", other)]) != guards_digest([("/f", GUARD)])


def test_the_digest_of_guards_follows_their_paths_and_order() -> None:
    pairs = [("/a", GUARD), ("/b", GUARD._replace(inode=41))]
    assert guards_digest(pairs) == guards_digest(list(pairs))
    assert guards_digest(pairs[::-1]) != guards_digest(pairs)
    assert guards_digest([("/c", GUARD), pairs[1]]) != guards_digest(pairs)
    assert guards_digest([]) != guards_digest(pairs[:1])


def test_the_digest_of_paths_is_the_digest_of_their_guards_now(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    odd = tmp_path / os.fsdecode(b"\xff.py")  # a name that is not UTF-8
    odd.write_text("x")
    paths = [str(tmp_path), str(tmp_path / "f"), str(odd)]
    guards = [(p, StatGuard.at(p)) for p in paths]
    assert all(g is not None for _, g in guards)
    assert paths_digest(paths) == guards_digest([(p, g) for p, g in guards if g is not None])
    assert paths_digest([]) == guards_digest([])
    for gone in ["/nonexistent/lockd-guard", "/a\x00b", "/\ud800"]:
        assert paths_digest([*paths, gone]) is None


def rewrite_with_mtime_set_back(path: Path) -> None:
    was = path.stat()
    time.sleep(0.05)  # past the coarse clock of file times
    path.write_bytes(b"9876543210")
    os.utime(path, ns=(was.st_atime_ns, was.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (was.st_size, was.st_mtime_ns)


def replace_with_a_copy(path: Path) -> None:
    shutil.copy2(path, path.with_name("copy"))  # same bytes and mtime, another inode
    os.replace(path.with_name("copy"), path)


def swap_for_a_link(path: Path) -> None:
    path.rename(path.with_name("moved"))
    os.symlink(path.with_name("moved"), path)


CHANGES: dict[str, Callable[[Path], None]] = {
    "rewritten, mtime set back": rewrite_with_mtime_set_back,
    "replaced by a copy": replace_with_a_copy,
    "mode": lambda path: path.chmod(0o4755),
    "appended": lambda path: path.write_bytes(b"0123456789+"),
    "swapped for a link": swap_for_a_link,
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_every_cache_sees_a_change_the_guard_sees(
    tmp_path: Path, change: Callable[[Path], None]
) -> None:
    layer = tmp_path / "layer"
    layer.mkdir()
    path = layer / "mod.py"
    path.write_bytes(b"0123456789")
    path.chmod(0o644)
    st = os.lstat(path)
    before = StatGuard.at(str(path))
    tree, entry = tree_digest(str(layer)), entry_digest(str(path))
    digests = DigestCache(tmp_path / "deep")
    digests.put("sha256:l", "mod.py", "sha256=AAAA", st)
    assert digests.get("sha256:l", "mod.py", "sha256", os.lstat(path)) == "sha256=AAAA"
    integrity = Integrity(source="overlay", evidence="host", distributions=0, files=0, bytes=0)
    kept = Kept(integrity, "now", "d", [str(path)], guards_digest([(str(path), before)]))
    assert before is not None and kept.intact()
    mapped = workload_hashes.HashCache()  # the workload's digests, kept across runs too
    assert mapped.put(st, "a" * 64, None, time.time_ns() + 10**10)
    assert workload_hashes.save(mapped, tmp_path / "workload")
    assert workload_hashes.load(tmp_path / "workload").get(os.stat(path)) == ("a" * 64, None)

    change(path)

    assert StatGuard.at(str(path)) != before
    assert tree_digest(str(layer)) != tree
    assert entry_digest(str(path)) != entry
    assert digests.get("sha256:l", "mod.py", "sha256", os.lstat(path)) is None
    assert not kept.intact()
    assert mapped.get(os.stat(path)) is None
    assert workload_hashes.load(tmp_path / "workload").get(os.stat(path)) is None


def test_a_directorys_own_times_are_not_in_a_tree_digest(tmp_path: Path) -> None:
    """They follow its entries, digested one by one: an entry ``skip`` leaves out must not
    show through them."""
    (tmp_path / "logs").mkdir()

    def skip(path: str, is_dir: bool) -> bool:
        return path.startswith("/logs/")

    before = tree_digest(str(tmp_path), skip=skip)
    time.sleep(0.05)
    (tmp_path / "logs" / "app.log").write_text("started\n")
    assert tree_digest(str(tmp_path), skip=skip) == before
    (tmp_path / "logs").chmod(0o700)
    assert tree_digest(str(tmp_path), skip=skip) != before  # its mode is


def test_an_entry_digest_is_a_files_guard_or_a_trees_digest(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    guard = StatGuard.at(str(tmp_path / "f"))
    assert guard is not None
    assert entry_digest(str(tmp_path / "f")) == guard.line(b"").hex()
    assert entry_digest(str(tmp_path)) == tree_digest(str(tmp_path))
    newest = [0]
    entry_digest(str(tmp_path / "f"), newest=newest)
    assert newest == [guard.ctime_ns]
