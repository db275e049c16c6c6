"""overlayfs's rules, as lockd reads overlay directories on this host: a whiteout (a character
device 0:0) deletes what lies below it, an opaque directory (its ``overlay.opaque`` xattr)
hides the lower layers' copies, and the lower layers merge top first (``LowerLayers``).

Nothing here knows Docker: the directories come from whoever asks (a container's overlay2
upper and lower directories, an image's layers).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from typing import Literal

__all__ = ["OPAQUE_XATTRS", "LowerLayers", "is_opaque", "is_whiteout", "lstat_entry", "walk_files"]

OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
"""The extended attributes that mark a directory opaque (``y``): overlayfs's own, and the one
an overlay mounted with ``userxattr`` (unprivileged) uses."""


def is_whiteout(st: os.stat_result) -> bool:
    """overlayfs marks a deleted entry with a character device 0:0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(path: str) -> bool:
    """overlayfs marks a directory that hides everything below it in lower layers."""
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


_Entry = Literal["missing", "whiteout", "file", "dir", "opaque"]


class LowerLayers:
    """The image's layers, top first, as overlayfs merges them (whiteouts, opaque dirs)."""

    def __init__(self, lowers: Sequence[str]) -> None:
        self.lowers = list(lowers)
        self._dirs: dict[tuple[str, str], _Entry] = {}

    def _entry(self, layer: str, rel: str, cache: bool) -> _Entry:
        key = (layer, rel)
        if cache and key in self._dirs:
            return self._dirs[key]
        path = os.path.join(layer, rel)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            entry: _Entry = "missing"
        else:
            if is_whiteout(st):
                entry = "whiteout"
            elif stat.S_ISDIR(st.st_mode):
                entry = "opaque" if is_opaque(path) else "dir"
            else:
                entry = "file"
        if cache:
            self._dirs[key] = entry
        return entry

    def contains(self, rel: str) -> bool:
        """Whether the image (all lower layers merged) has something at ``rel``."""
        parts = rel.split("/")
        for layer in self.lowers:
            hides_lower = False
            for depth in range(1, len(parts) + 1):
                last = depth == len(parts)
                entry = self._entry(layer, "/".join(parts[:depth]), cache=not last)
                if entry == "missing":
                    break
                if entry == "whiteout":
                    return False
                if last:
                    return True
                if entry == "file":  # a file where a parent directory should be
                    return False
                if entry == "opaque":
                    hides_lower = True
            if hides_lower:
                return False
        return False

    def files_under(self, rel: str) -> set[str]:
        """Every non-directory the image shows below the directory ``rel``."""
        found: set[str] = set()
        for layer in self.lowers:
            top = os.path.join(layer, rel)
            for path in walk_files(top):
                candidate = rel + "/" + os.path.relpath(path, top)
                if candidate not in found and self.contains(candidate):
                    found.add(candidate)
        return found


def lstat_entry(entry: os.DirEntry[str]) -> os.stat_result | None:
    """The entry's own stat (a link not followed); None when it is gone meanwhile."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:  # removed while we walk: a running container writes there
        return None


def walk_files(top: str) -> Iterator[str]:
    """Every non-directory, non-whiteout path below ``top`` (not following links)."""
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            st = lstat_entry(entry)
            if st is None:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
            elif not is_whiteout(st):
                yield entry.path
