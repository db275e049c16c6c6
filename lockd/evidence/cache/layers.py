"""The layer cache of ``--deep``: digests of files in an image's read-only overlay layers.

A file that a running container shows from one of its image's lower layers is the layer's own,
and a layer's content never changes once the daemon extracted it: the daemon names each layer
by its chain ID (``RootFS.Layers`` of the image, chained), stores it in one directory (the
overlay2 ``LowerDir`` entries, top first) and never writes to it again. So lockd keeps each
such file's digest, keyed by (chain ID, path inside the layer), and takes it from the cache
the next time, on any container of an image that shares the layer, as long as the file's size,
mtime, ctime, inode number and mode are still those it hashed (a cheap guard: extracting the layer
again gives new inodes and ctimes).

Which layer provides a file follows overlayfs (``resolve_dir``, ``provider``: pure): the
container's writable upper directory first (never cached: hashed on every run), then the lower
layers top to bottom; a whiteout hides the path below it, an opaque directory hides the lower
layers' copies of the directory (what each is: lockd.evidence.overlay).

Security model: the evidence is the host's (the daemon's layer store, read as root), as for
hashing the files themselves. Root on the host can alter a file in a lower directory and put
back its size and mtime; the guard (lockd.evidence.cache.guard: ctime and inode among them)
catches that short of resetting the clock, and ``--no-cache`` hashes every file again.

One JSON file per layer in the kept-store ``cache_dir()`` (lockd.evidence.cache.store: trusted
only when this user owns it and nobody else can write it, written atomically), at most
``MAX_FILES`` files (the least recently used go first), each at most ``MAX_FILE_BYTES``; a file
that does not parse is ignored and written again.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lockd.evidence.cache.guard import StatGuard
from lockd.evidence.cache.store import Store
from lockd.evidence.overlay import is_opaque, is_whiteout
from lockd.fileio import cache_root

__all__ = [
    "FORMAT",
    "MAX_ENTRIES",
    "MAX_FILES",
    "MAX_FILE_BYTES",
    "DigestCache",
    "Entry",
    "LayerView",
    "cache_dir",
    "chain_ids",
    "container_layer_keys",
    "provider",
    "resolve_dir",
    "step_dir",
]

FORMAT = "lockd-deep-cache/2"  # 2: the mode joins the guard
MAX_FILES = 256
"""Layer files kept in the cache directory."""
MAX_FILE_BYTES = 64 * 1024 * 1024
"""A larger layer file is ignored (and written again)."""
MAX_ENTRIES = 400_000
"""Entries kept per layer (torch's largest layer has about 20 000)."""

_DIFF_ID = re.compile("sha256:[0-9a-f]{64}")

Entry = Literal["missing", "whiteout", "dir", "opaque", "file", "other"]
"""What one layer holds at a path: nothing, a whiteout (deleted here), a directory (``opaque``:
hiding the lower layers' copies), a regular file, anything else (a link, a device...)."""


# --- which layer provides a path (pure) -----------------------------------------------------------


def step_dir(visible: Sequence[int], rel: str, entry: Callable[[int, str], Entry]) -> list[int]:
    """The layers whose copy of the directory ``rel`` the merged view shows, given those of
    its parent (``visible``, top first); [] when it is no directory there. ``entry(layer,
    rel)``: what that layer holds at ``rel``."""
    found: list[int] = []
    for layer in visible:
        kind = entry(layer, rel)
        if kind == "missing":
            continue
        if kind in ("dir", "opaque"):
            found.append(layer)
            if kind == "dir":
                continue
        break  # opaque, a whiteout, or a non-directory: nothing lower shows
    return found


def resolve_dir(count: int, parts: Sequence[str], entry: Callable[[int, str], Entry]) -> list[int]:
    """The layers (indices, top first, of ``count``) whose copy of the directory ``parts``
    (its components below the root) the merged view shows; [] when it is no directory there."""
    visible = list(range(count))
    for depth in range(1, len(parts) + 1):
        visible = step_dir(visible, "/".join(parts[:depth]), entry)
        if not visible:
            return []
    return visible


def provider(
    visible: Sequence[int], rel: str, entry: Callable[[int, str], Entry]
) -> tuple[int, Entry] | None:
    """The layer that provides ``rel`` in a directory whose visible copies are ``visible``,
    with what it holds there; None when no layer shows anything (a whiteout: deleted)."""
    for layer in visible:
        kind = entry(layer, rel)
        if kind == "missing":
            continue
        if kind == "whiteout":
            return None
        return layer, kind
    return None


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain IDs of an image's layers from their diff IDs (both bottom first), as the OCI
    image spec defines them: ChainID(L0) = DiffID(L0), ChainID(Ln) = sha256(ChainID(Ln-1) +
    " " + DiffID(Ln))."""
    chains: list[str] = []
    for diff in diff_ids:
        if chains:
            chained = hashlib.sha256(f"{chains[-1]} {diff}".encode()).hexdigest()
            chains.append(f"sha256:{chained}")
        else:
            chains.append(diff)
    return chains


def container_layer_keys(
    lower_dirs: Sequence[str], image_attrs: dict[str, Any]
) -> list[str | None] | None:
    """For each of a container's overlay2 lower directories (top first), the chain ID of the
    image layer it is, None for one that is no layer of the image (the ``-init`` layer Docker
    adds); None when the image's inspect answer does not fit its overlay2 directories."""
    driver = image_attrs.get("GraphDriver") or {}
    layers = (image_attrs.get("RootFS") or {}).get("Layers") or []
    if driver.get("Name") != "overlay2" or not layers:
        return None
    data = driver.get("Data") or {}
    dirs = [str(data["UpperDir"])] if data.get("UpperDir") else []
    dirs += [p for p in str(data.get("LowerDir") or "").split(":") if p]
    if len(dirs) != len(layers) or not all(
        isinstance(d, str) and _DIFF_ID.fullmatch(d) for d in layers
    ):
        return None
    keys = dict(zip(dirs, reversed(chain_ids(layers)), strict=True))
    return [keys.get(d) for d in lower_dirs]


# --- the layers on this host ----------------------------------------------------------------------


class LayerView:
    """A container's overlay layers on this host, top first: its upper directory (key None:
    never cached), then its lower directories (their chain IDs, None where unknown: never
    cached, still read straight from the layer).

    Which layer provides a file is decided from each directory's listing, read once per layer.
    Only the upper directory changes while lockd reads (the container writes there: a copy-up,
    a whiteout, an opaque directory); what it held is remembered per directory, and
    ``changed_since`` says where it no longer holds that."""

    def __init__(self, layers: Sequence[tuple[str, str | None]]) -> None:
        self.layers = [(os.path.realpath(path), key) for path, key in layers]
        self._dirs: dict[str, list[int]] = {"": list(range(len(self.layers)))}
        self._listings: dict[tuple[int, str], dict[str, bool]] = {}
        self._upper: dict[str, _UpperState] = {}
        self._lock = threading.Lock()

    def _entry(self, layer: int, rel: str) -> Entry:
        return _entry_at(f"{self.layers[layer][0]}/{rel}")

    def _visible(self, rel_dir: str) -> list[int]:
        found = self._dirs.get(rel_dir)
        if found is None:
            parent = self._visible(rel_dir.rpartition("/")[0])
            upper = _upper_state(self.layers[0][0], rel_dir)  # read once, decided on

            def entry(layer: int, rel: str) -> Entry:
                return upper.kind if layer == 0 else self._entry(layer, rel)

            found = step_dir(parent, rel_dir, entry) if parent else []
            with self._lock:  # the decision and the snapshot it rests on, kept together
                if rel_dir in self._dirs:  # another thread decided first: its pair stands
                    return self._dirs[rel_dir]
                self._dirs[rel_dir] = found
                self._upper[rel_dir] = upper
        return found

    def _listing(self, layer: int, rel_dir: str) -> dict[str, bool]:
        """{name: whether it is a regular file} of one layer's copy of a directory."""
        if layer == 0 and rel_dir in self._upper:  # the upper directory as lockd decided on it
            return self._upper[rel_dir].listing
        key = (layer, rel_dir)
        found = self._listings.get(key)
        if found is None:
            found = _names(self._layer_path(layer, rel_dir))
            with self._lock:
                self._listings[key] = found
        return found

    def locate(self, rel_dir: str, name: str) -> tuple[str | None, str] | None:
        """(chain ID or None, host path) of the regular file ``name`` in the canonical
        directory ``rel_dir`` when a lower layer provides it; None otherwise (the upper
        directory has it, or it is no regular file, or nothing: read it the usual way)."""
        for layer in self._visible(rel_dir):
            listing = self._listing(layer, rel_dir)
            if name not in listing:
                continue
            if layer == 0 or not listing[name]:
                return None  # the upper layer's (or a whiteout, a link, a directory...)
            path, key = self.layers[layer]
            return key, f"{path}/{rel_dir}/{name}" if rel_dir else f"{path}/{name}"
        return None

    def lower_copies(self, rel_dir: str) -> list[str]:
        """Host paths of the lower layers' copies of the directory ``rel_dir`` that the merged
        view shows (top first)."""
        return [self._layer_path(layer, rel_dir) for layer in self._visible(rel_dir) if layer]

    def lower_dirs_listed(self) -> list[str]:
        """Host paths of the lower-layer directories whose listings lockd read."""
        with self._lock:
            listed = list(self._listings)
        return [self._layer_path(layer, rel_dir) for layer, rel_dir in listed if layer]

    def _layer_path(self, layer: int, rel_dir: str) -> str:
        base = self.layers[layer][0]
        return f"{base}/{rel_dir}" if rel_dir else base

    def changed_since(self) -> Callable[[str, str], bool] | None:
        """Read the upper directory again where lockd looked: ``changed(rel_dir, name)`` says
        whether the merged view's ``name`` in ``rel_dir`` may no longer be what a lower layer
        provided when lockd located it (the container wrote there, or over a directory on
        the way); None when the upper directory changed nowhere lockd looked."""
        upper = self.layers[0][0]
        with self._lock:
            before = dict(self._upper)
        moved_dirs: set[str] = set()
        new_names: dict[str, frozenset[str]] = {}
        for rel_dir, then in before.items():
            now = _upper_state(upper, rel_dir)
            if now.kind != then.kind and now.kind not in ("missing", "dir"):
                moved_dirs.add(rel_dir)  # a whiteout, an opaque directory or a file: hides all
            elif now.listing.keys() != then.listing.keys():  # a plain directory: its names
                new_names[rel_dir] = frozenset(now.listing.keys() - then.listing.keys())
        if not moved_dirs and not new_names:
            return None

        def changed(rel_dir: str, name: str) -> bool:
            parts = rel_dir.split("/") if rel_dir else []
            if any("/".join(parts[:depth]) in moved_dirs for depth in range(len(parts) + 1)):
                return True
            return name in new_names.get(rel_dir, frozenset())

        return changed


@dataclass(frozen=True)
class _UpperState:
    """What the upper directory holds at a directory's path: its kind, and its listing (as
    ``_names``) when it is a directory there."""

    kind: Entry
    listing: dict[str, bool]


def _upper_state(upper: str, rel_dir: str) -> _UpperState:
    path = f"{upper}/{rel_dir}" if rel_dir else upper
    kind = _entry_at(path)
    return _UpperState(kind, _names(path) if kind in ("dir", "opaque") else {})


def _entry_at(path: str) -> Entry:
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    except OSError:
        return "other"
    if stat.S_ISDIR(st.st_mode):
        return "opaque" if is_opaque(path) else "dir"
    if is_whiteout(st):
        return "whiteout"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


def _names(path: str) -> dict[str, bool]:
    """{name: whether it is a regular file} of a directory (its entries' types, no stat);
    empty when it cannot be listed."""
    try:
        with os.scandir(path) as entries:
            return {entry.name: entry.is_file(follow_symlinks=False) for entry in entries}
    except OSError:
        return {}


# --- the digests on disk --------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where lockd keeps the layer cache: ``deep`` under the cache root."""
    return cache_root() / "deep"


class DigestCache:
    """Digests of lower-layer files, one file per layer in ``directory``: loaded on first use,
    written back by ``save()`` where something changed. Thread-safe. ``hits``: digests taken
    from it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.hits = 0
        self._layers: dict[str, dict[str, tuple[StatGuard, str]]] = {}
        self._dirty: set[str] = set()
        self._lock = threading.Lock()

    def _store(self) -> Store:
        return Store(self.directory, FORMAT, MAX_FILE_BYTES, MAX_FILES)

    @staticmethod
    def _name(key: str) -> str:
        return key.replace(":", "-") + ".json"

    def _load(self, key: str) -> dict[str, tuple[StatGuard, str]]:
        """The layer's entries as stored; {} when there are none, or the file cannot be used
        (it is then written again on save)."""
        store = self._store()
        name = self._name(key)
        document = store.load(name, {"layer": key})
        if document is None:
            if os.path.lexists(store.directory / name):
                self._dirty.add(key)  # another format, or unusable: written again
            return {}
        try:
            entries: dict[str, tuple[StatGuard, str]] = {}
            for rel, (size, mtime, ctime, inode, mode, digest) in document["files"].items():
                guard = StatGuard(size, mtime, ctime, inode, mode)
                if not all(type(n) is int for n in guard) or not isinstance(digest, str):
                    raise ValueError("a malformed entry")
                entries[rel] = guard, digest
            return entries
        except (ValueError, TypeError, KeyError, AttributeError):
            self._dirty.add(key)  # ignored: written again
            return {}

    def _entries(self, key: str) -> dict[str, tuple[StatGuard, str]]:
        entries = self._layers.get(key)
        if entries is None:
            with self._lock:
                entries = self._layers.get(key)
                if entries is None:
                    entries = self._layers[key] = self._load(key)
        return entries

    def get(self, key: str, rel: str, algorithm: str, st: os.stat_result) -> str | None:
        """The digest (RECORD notation) of layer ``key``'s file ``rel`` when it is cached for
        ``algorithm`` and the file (``st``: its lstat now) is the one hashed."""
        found = self._entries(key).get(rel)
        if (
            found is None
            or found[0] != StatGuard.of(st)
            or not found[1].startswith(algorithm + "=")
        ):
            return None
        with self._lock:
            self.hits += 1
        return found[1]

    def put(self, key: str, rel: str, digest: str, st: os.stat_result) -> None:
        """Keep ``digest`` for layer ``key``'s file ``rel`` (``st``: its lstat when hashed)."""
        entries = self._entries(key)
        with self._lock:
            if len(entries) < MAX_ENTRIES or rel in entries:
                entries[rel] = StatGuard.of(st), digest
                self._dirty.add(key)

    def save(self) -> None:
        """Write back the layers that changed (atomically), then drop the least recently used
        files beyond MAX_FILES. Failing to write is not an error: the cache is an
        optimisation."""
        with self._lock:
            dirty = sorted(self._dirty)
            self._dirty.clear()
        if not dirty:
            return
        store = self._store()
        for key in dirty:
            files = {rel: [*guard, digest] for rel, (guard, digest) in self._layers[key].items()}
            store.save(self._name(key), {"layer": key, "files": files}, trim=False)
        store.trim()
