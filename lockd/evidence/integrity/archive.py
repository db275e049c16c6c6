"""Reading a target's files through the Docker daemon's archive API (what ``docker cp`` uses): a
tar stream hashed as it arrives, where lockd cannot read the daemon's storage."""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from lockd.evidence.integrity.hosttree import Source, TooLargeError
from lockd.evidence.integrity.records import (
    CHUNK,
    MAX_LINK_HOPS,
    MAX_RECORD_BYTES,
    FileState,
    digest_text,
    is_under,
    target_path,
)
from lockd.model.host import IntegritySource

if TYPE_CHECKING:
    pass


# --- reading through the Docker API (tar streams) ---------------------------------------------

Fetch = Callable[[str], "tuple[Iterable[bytes], dict[str, Any]] | None"]
"""``fetch(path)``: the daemon's tar stream of ``path`` and its stat; None when nothing is
there."""


class _ChunkReader(io.RawIOBase):
    """A binary file over an iterator of chunks (the SDK's archive stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


@dataclass
class _Node:
    kind: Literal["dir", "file", "link", "other"]
    digest: str | None = None  # sha256, RECORD notation
    size: int | None = None
    link: str | None = None
    content: bytes | None = None  # only the small files lockd reads (RECORD, METADATA)
    children: list[str] = field(default_factory=list)


class ArchiveSource(Source):
    """A target's files streamed through the Docker daemon's archive API, hashed (sha256) as
    they arrive with one 1 MiB buffer. ``prepare`` streams each location once; a path outside
    them (a script in ``bin/``) is fetched on its own when asked for."""

    kind: IntegritySource = "api"
    evidence: Literal["host", "inside"] = "host"

    def __init__(
        self,
        fetch: Fetch,
        description: str,
        closer: AbstractContextManager[Any] | None = None,
    ) -> None:
        self._fetch = fetch
        self.description = description
        self._closer = closer
        self._nodes: dict[str, _Node] = {}
        self._roots: list[str] = []
        self._fetched: set[str] = set()
        self._lock = threading.Lock()
        self._buffer = bytearray(CHUNK)

    def _stream(self, path: str, keep: Callable[[str], bool]) -> bool:
        """Index the tree at ``path``; False when there is nothing there."""
        fetched = self._fetch(path)
        if fetched is None:
            return False
        parent = posixpath.dirname(path.rstrip("/")) or "/"
        view = memoryview(self._buffer)
        try:
            with tarfile.open(fileobj=_ChunkReader(fetched[0]), mode="r|", bufsize=CHUNK) as tar:
                for member in tar:
                    where = target_path(parent, member.name)
                    self._nodes[where] = self._member(tar, member, parent, keep(where), view)
                    up = self._nodes.get(posixpath.dirname(where))
                    if up is not None and where != "/":
                        up.children.append(posixpath.basename(where))
        finally:
            view.release()
        return True

    def _member(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: str, keep: bool, view: Any
    ) -> _Node:
        if member.isdir():
            return _Node("dir")
        if member.issym():
            return _Node("link", link=member.linkname)
        if member.islnk():  # a hard link to a member streamed before it
            first = self._nodes.get(target_path(parent, member.linkname))
            if first is not None and first.kind == "file":
                return _Node("file", digest=first.digest, size=first.size, content=first.content)
            return _Node("other")
        handle = tar.extractfile(member) if member.isreg() else None
        if handle is None:
            return _Node("other")
        digest = hashlib.sha256()
        kept = bytearray() if keep and member.size <= MAX_RECORD_BYTES else None
        size = 0
        while count := handle.readinto(view):  # type: ignore[attr-defined]
            digest.update(view[:count])
            if kept is not None:
                kept += view[:count]
            size += count
        if self.on_bytes is not None:
            self.on_bytes(size)
        return _Node(
            "file",
            digest=digest_text("sha256", digest.digest()),
            size=size,
            content=None if kept is None else bytes(kept),
        )

    @staticmethod
    def _small(path: str) -> bool:
        directory, _, name = path.rpartition("/")
        return name in ("RECORD", "METADATA", "PKG-INFO") and directory.lower().endswith(
            (".dist-info", ".egg-info")
        )

    def prepare(self, locations: Sequence[str]) -> None:
        for location in sorted(set(locations)):
            if not any(is_under(location, root) for root in self._roots) and self._stream(
                location, self._small
            ):
                self._roots.append(location)

    def _node(self, path: str, hops: int = 0) -> _Node | None:
        """The node at ``path``, links on the way followed (the last one too)."""
        if hops > MAX_LINK_HOPS:
            return _Node("other")
        if not any(is_under(path, root) for root in self._roots):
            with self._lock:
                if path not in self._fetched:
                    self._fetched.add(path)
                    self._stream(path, lambda p: p == path)
        node = self._nodes.get(path)
        if node is None:
            parts = path.split("/")
            for depth in range(len(parts) - 1, 1, -1):  # a link to a directory on the way?
                above = self._nodes.get("/".join(parts[:depth]))
                if above is not None and above.kind == "link" and above.link is not None:
                    base = target_path(posixpath.dirname("/".join(parts[:depth])), above.link)
                    return self._node(base + "/" + "/".join(parts[depth:]), hops + 1)
            return None
        if node.kind == "link" and node.link is not None:
            return self._node(target_path(posixpath.dirname(path), node.link), hops + 1)
        return node

    def list_dir(self, path: str) -> list[str] | None:
        node = self._node(path)
        return None if node is None or node.kind != "dir" else sorted(node.children)

    def read(self, path: str, limit: int, *, head: bool = False) -> bytes | None:
        node = self._node(path)
        if node is None:
            return None
        if node.kind != "file":
            raise OSError("not a regular file")
        if node.size is not None and node.size > limit and not head:
            raise TooLargeError(path)
        if node.content is None:
            raise OSError("not kept from the archive stream")
        return node.content[:limit]

    def hash(self, path: str, algorithm: str, buffer: bytearray) -> FileState:
        node = self._node(path)
        if node is None:
            return FileState("missing")
        if node.kind != "file":
            what = "a directory" if node.kind == "dir" else "not a regular file"
            return FileState("other", message=f"is {what}, not the file listed")
        if algorithm == "sha256":
            return FileState("file", digest=node.digest, size=node.size)
        with self._lock:  # another algorithm: stream this one file again
            fetched = self._fetch(path)
            if fetched is None:
                return FileState("missing")
            digest = hashlib.new(algorithm)
            size = 0
            with tarfile.open(fileobj=_ChunkReader(fetched[0]), mode="r|") as tar:
                for member in tar:
                    handle = tar.extractfile(member) if member.isreg() else None
                    while handle is not None and (chunk := handle.read(CHUNK)):
                        digest.update(chunk)
                        size += len(chunk)
        return FileState("file", digest=digest_text(algorithm, digest.digest()), size=size)

    def files(self, directory: str) -> Iterator[str]:
        top = self._nodes.get(directory.rstrip("/"))
        if top is None or top.kind != "dir":
            return
        stack = [(directory.rstrip("/"), top)]
        while stack:
            path, node = stack.pop()
            for name in node.children:
                child = f"{path}/{name}"
                found = self._nodes[child]
                if found.kind == "dir":
                    stack.append((child, found))
                else:
                    yield child

    def close(self) -> None:
        if self._closer is not None:
            closer, self._closer = self._closer, None
            closer.__exit__(None, None, None)
