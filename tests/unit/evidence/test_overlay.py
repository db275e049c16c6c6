"""lockd.evidence.overlay: overlayfs's rules on made-up layer directories (no Docker): layers
merged top first, a whiteout hiding what lies below it, an opaque directory hiding the lower
layers' copies. Whiteouts (mknod) and the trusted xattr need root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lockd.evidence.overlay import LowerLayers, is_opaque, walk_files


def write(path: Path, text: str = "x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def layers(tmp_path: Path) -> tuple[Path, Path]:
    top, bottom = tmp_path / "top", tmp_path / "bottom"
    write(bottom / "usr/lib/a.so")
    write(bottom / "usr/lib/b.so")
    write(bottom / "etc/hosts")
    write(top / "usr/lib/c.so")
    return top, bottom


def test_layers_merge_top_first(tmp_path: Path) -> None:
    top, bottom = layers(tmp_path)
    merged = LowerLayers([str(top), str(bottom)])

    assert all(merged.contains(p) for p in ("usr/lib/a.so", "usr/lib/c.so", "etc/hosts"))
    assert not merged.contains("usr/lib/d.so")
    assert not merged.contains("etc/hosts/inside")  # a file where a directory should be
    assert merged.files_under("usr/lib") == {"usr/lib/a.so", "usr/lib/b.so", "usr/lib/c.so"}


@pytest.mark.usefixtures("root_required")
def test_a_whiteout_hides_what_lies_below(tmp_path: Path) -> None:
    top, bottom = layers(tmp_path)
    os.mknod(top / "usr/lib/a.so", 0o600 | 0o020000, os.makedev(0, 0))  # char device 0:0
    merged = LowerLayers([str(top), str(bottom)])

    assert not merged.contains("usr/lib/a.so")
    assert merged.files_under("usr/lib") == {"usr/lib/b.so", "usr/lib/c.so"}
    assert sorted(walk_files(str(top))) == [str(top / "usr/lib/c.so")]  # no whiteout listed


@pytest.mark.usefixtures("root_required")
def test_an_opaque_directory_hides_the_lower_copies(tmp_path: Path) -> None:
    top, bottom = layers(tmp_path)
    os.setxattr(top / "usr/lib", "trusted.overlay.opaque", b"y")
    merged = LowerLayers([str(top), str(bottom)])

    assert is_opaque(str(top / "usr/lib"))
    assert not is_opaque(str(top / "usr"))
    assert merged.files_under("usr/lib") == {"usr/lib/c.so"}
    assert merged.contains("etc/hosts")  # beside it, the lower layer still shows
