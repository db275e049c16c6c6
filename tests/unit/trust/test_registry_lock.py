"""The lock ``attach`` serializes a repository's writers with: in lockd's own cache directory,
never following a symbolic link, refused when another user owns it or may write where it is
(it used to be /tmp/lockd-attach-*.lock, opened with open("a"))."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lockd.errors import InputError
from lockd.trust.registry import host_lock, lock_path, parse_ref

REF = parse_ref("reg.example:5000/team/app@sha256:" + "a" * 64)
NOBODY = 65534


@pytest.fixture
def lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LOCKD_CACHE_DIR", str(tmp_path / "cache"))
    path = lock_path(REF)
    assert path.parent == tmp_path / "cache" / "locks"
    return path


def refusal(path: Path, why: str) -> str:
    return (
        f"{path}: the lock for attaching to reg.example:5000/team/app is not used: {why}; it "
        "must be this user's alone (remove it, or set LOCKD_CACHE_DIR to a directory of yours)"
    )


def test_the_lock_is_a_private_file_in_a_private_directory(lock: Path) -> None:
    with host_lock(REF):
        st = os.lstat(lock)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(os.lstat(lock.parent).st_mode) == 0o700
    with host_lock(REF):  # taken again once released
        pass


def test_a_symlinked_lock_is_refused_and_its_target_untouched(lock: Path, tmp_path: Path) -> None:
    lock.parent.mkdir(mode=0o700, parents=True)
    victim = tmp_path / "victim"
    lock.symlink_to(victim)
    with pytest.raises(InputError) as e, host_lock(REF):
        pass
    assert str(e.value) == refusal(lock, "a symbolic link")
    assert e.value.exit_code == 2
    assert not victim.exists()
    victim.write_text("precious")
    with pytest.raises(InputError), host_lock(REF):
        pass
    assert victim.read_text() == "precious"


@pytest.mark.usefixtures("root_required")  # chown
def test_a_lock_file_another_user_owns_is_refused(lock: Path) -> None:
    lock.parent.mkdir(mode=0o700, parents=True)
    lock.touch(mode=0o600)
    os.chown(lock, NOBODY, NOBODY)
    with pytest.raises(InputError) as e, host_lock(REF):
        pass
    assert str(e.value) == refusal(lock, "another user's, or writable by others")
    assert e.value.exit_code == 2


def test_a_world_writable_lock_directory_is_refused(lock: Path) -> None:
    lock.parent.mkdir(parents=True)
    lock.parent.chmod(0o777)
    with pytest.raises(InputError) as e, host_lock(REF):
        pass
    assert str(e.value) == refusal(lock, f"{lock.parent} is writable by others (mode 0777)")
    assert not lock.exists()


def test_a_lock_directory_that_is_a_symlink_is_refused(lock: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    lock.parent.parent.mkdir(mode=0o700)
    lock.parent.symlink_to(elsewhere)
    with pytest.raises(InputError) as e, host_lock(REF):
        pass
    assert str(e.value) == refusal(lock, f"{lock.parent} is a symbolic link")
    assert list(elsewhere.iterdir()) == []
