"""changes_from_overlay on a made-up upper directory and image layer (no Docker): content read,
volatile places not walked, the cap. Whiteouts and opaque directories need root (mknod, trusted
xattrs): the integration tests cover them on the real daemon."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from builders import ld_cache

from lockd.evidence.targets.changes import changes_from_overlay
from lockd.judgement.policy import DEFAULT_VOLATILE, volatile_places

SITE = "opt/venv/lib/python3.11/site-packages"


def tree(tmp_path: Path) -> tuple[Path, Path]:
    upper, lower = tmp_path / "upper", tmp_path / "lower"
    (lower / SITE).mkdir(parents=True)
    (lower / SITE / "six.py").write_text("original\n")
    (upper / SITE / "__pycache__").mkdir(parents=True)
    (upper / SITE / "six.py").write_text("edited\n")
    (upper / SITE / "evil.pth").write_text("import os\n")
    os.chmod(upper / SITE / "evil.pth", 0o4755)
    (upper / SITE / "__pycache__" / "six.cpython-311.pyc").write_bytes(b"\0")
    os.symlink("/tmp/x.so", upper / SITE / "link.so")
    (upper / "tmp" / "many").mkdir(parents=True)
    for i in range(50):
        (upper / "tmp" / "many" / str(i)).touch()
    (upper / "etc").mkdir()
    (upper / "etc" / "ld.so.cache").write_bytes(ld_cache(["/usr/lib/x86_64-linux-gnu/libz.so.1"]))
    return upper, lower


def test_content_is_read_and_volatile_places_are_not_walked(tmp_path: Path) -> None:
    upper, lower = tree(tmp_path)
    volatile = volatile_places(DEFAULT_VOLATILE, {})
    found = {c.path: c for c in changes_from_overlay(str(upper), [str(lower)], volatile)}
    assert sorted(found) == [
        "/etc/ld.so.cache",
        f"/{SITE}/evil.pth",
        f"/{SITE}/link.so",
        f"/{SITE}/six.py",
    ]
    six = found[f"/{SITE}/six.py"]
    uid, gid = os.getuid(), os.getgid()
    assert (six.kind, six.type, six.size, six.uid, six.gid) == ("changed", "file", 7, uid, gid)
    assert six.sha256 == hashlib.sha256(b"edited\n").hexdigest()
    assert (found[f"/{SITE}/evil.pth"].kind, found[f"/{SITE}/evil.pth"].mode) == ("added", 0o4755)
    link = found[f"/{SITE}/link.so"]
    assert (link.type, link.target, link.sha256) == ("symlink", "/tmp/x.so", None)
    assert found["/etc/ld.so.cache"].cache_dirs == ["/usr/lib/x86_64-linux-gnu"]
    everything = changes_from_overlay(str(upper), [str(lower)])
    assert len(everything) == 4 + 1 + 50  # without volatile places: bytecode and /tmp too


def test_the_walk_stops_one_past_the_limit(tmp_path: Path) -> None:
    upper, lower = tree(tmp_path)
    found = changes_from_overlay(str(upper), [str(lower)], None, limit=10)
    assert len(found) == 11


def test_a_containers_walk_reads_bytecode_so_a_stricter_policy_can_judge_it(tmp_path: Path) -> None:
    from lockd.evidence.targets.changes import default_volatile, walk_skipped
    from lockd.judgement.policy import BYTECODE_PLACE

    assert BYTECODE_PLACE in DEFAULT_VOLATILE
    assert BYTECODE_PLACE not in walk_skipped()
    upper, lower = tree(tmp_path)
    found = {c.path for c in changes_from_overlay(str(upper), [str(lower)], default_volatile({}))}
    assert f"/{SITE}/__pycache__/six.cpython-311.pyc" in found
    assert not any(path.startswith("/tmp/") for path in found)
