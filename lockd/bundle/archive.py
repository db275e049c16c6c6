"""Reading an untrusted ``.tar.gz`` with every size bounded before anything is allocated.

Python's tarfile reads a PAX extended header or a GNU long name whole, whatever size its header
declares: a 1 MB gzip file declaring a 1 GiB PAX header made ``lockd audit verify`` hold 1.1 GB.
This reader parses the 512-byte ustar headers itself and checks each declared size against its
limit first: an extended header (PAX ``x``/``g``, GNU ``L``/``K``) against
:attr:`Limits.extended`, a member against what the archive may still hold, the gzip stream
against :attr:`Limits.stream` as it inflates, the entries against :attr:`Limits.members`.

Two kinds of refusal:

- the archive cannot be read safely (not gzip, truncated, a bad header checksum, a malformed
  field, a header or member past its limit, too many entries): :class:`~lockd.errors.InputError`
  (exit 2), nothing of it is used;
- a member is unsafe (absolute path, ``..``, a link, folder, device or sparse file, too large,
  a duplicate): it is skipped unread and named in the refusals, and the bundle fails its check.

Only regular files are returned, as bytes; nothing is written to disk.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from lockd.errors import InputError

__all__ = ["Limits", "read_tar_gz"]

BLOCK = 512
_MIB = 1024 * 1024
_CHUNK = 256 * 1024  # compressed bytes read at a time, and the most inflated at a time

# ustar typeflags that carry no data of their own, with how a refusal names them
_NO_DATA = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a folder",
    b"6": "a FIFO",
}
_REGULAR = (b"0", b"\0", b"7")  # '7': contiguous file, a regular file to every reader
_EXTENDED = {
    b"x": "PAX extended header",
    b"g": "PAX global header",
    b"L": "GNU long name header",
    b"K": "GNU long link header",
}
_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX (lockd writes it), GNU
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Limits:
    """What one archive may hold; each is checked before the bytes it concerns are read."""

    compressed: int = 256 * _MIB  # the .tar.gz file itself
    stream: int = 320 * _MIB  # the tar stream once inflated, headers and skipped members included
    member: int = 64 * _MIB  # one file; a larger one is refused unread (skipped)
    total: int = 256 * _MIB  # all files kept
    members: int = 10_000  # entries, a PAX global header included
    extended: int = 64 * 1024  # one PAX header's records, one GNU long name or link
    sparse_blocks: int = 16  # an old GNU sparse file's extension headers
    name: int = 4096  # bytes of one member's name (PATH_MAX); a longer one is refused
    refusals: int = 100  # unsafe members named; past them the archive is refused whole


class _Inflated:
    """The inflated bytes of a gzip file (concatenated members included), read on demand and
    never more than ``limit`` in all."""

    def __init__(self, f: BinaryIO, source: Path, limits: Limits) -> None:
        self._f = f
        self._source = source
        self._limits = limits
        self._inflater = zlib.decompressobj(wbits=31)
        self._pending = b""  # compressed bytes not yet given to the inflater
        self._read_in = 0
        self._out = b""  # inflated bytes not yet handed out: from _pos on (at most _CHUNK)
        self._pos = 0
        self.offset = 0  # inflated bytes handed out so far

    def _more(self, want: int) -> bytes:
        """Up to ``want`` more inflated bytes; b'' at the clean end of the last gzip member."""
        while True:
            if self._inflater.eof:
                rest = self._inflater.unused_data or self._read_compressed()
                if not rest:
                    return b""
                self._inflater = zlib.decompressobj(wbits=31)  # a concatenated member
                self._pending = rest
            data = self._pending or self._read_compressed()
            try:  # with no input left, one more call drains what the inflater still holds
                out = self._inflater.decompress(data, min(want, _CHUNK))
            except zlib.error as e:
                raise InputError(
                    f"{self._source}: not a gzip-compressed tar archive ({e}); give a bundle "
                    "written by lockd audit export"
                ) from e
            self._pending = self._inflater.unconsumed_tail
            if out:
                return out
            if not data and not self._read_in:
                raise InputError(
                    f"{self._source}: not a gzip-compressed tar archive (an empty file); give a "
                    "bundle written by lockd audit export"
                )
            if not data and not self._inflater.eof:
                raise InputError(
                    f"{self._source}: the gzip stream ends early (truncated); give a whole "
                    "bundle written by lockd audit export"
                )

    def _read_compressed(self) -> bytes:
        data = self._f.read(_CHUNK)
        self._read_in += len(data)
        if self._read_in > self._limits.compressed:
            raise InputError(
                f"{self._source}: larger than {_size(self._limits.compressed)}, too large to "
                "be a bundle file"
            )
        return data

    def read(self, n: int, what: str) -> bytes:
        """Exactly ``n`` bytes (``n`` was checked against the limits by the caller)."""
        if self.offset + n > self._limits.stream:
            raise InputError(
                f"{self._source}: more than {_size(self._limits.stream)} once inflated; "
                "refused unread"
            )
        parts: list[bytes] = []
        need = n
        while need:
            if self._pos == len(self._out):
                self._out, self._pos = self._more(_CHUNK), 0
                if not self._out:
                    raise InputError(
                        f"{self._source}: the archive ends inside {what} at byte "
                        f"{self.offset + n - need} (truncated); give a whole bundle written "
                        "by lockd audit export"
                    )
            part = self._out[self._pos : self._pos + need]
            self._pos += len(part)
            need -= len(part)
            parts.append(part)
        self.offset += n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def header(self) -> bytes | None:
        """The next 512-byte block; None at the clean end of the stream on a block boundary."""
        if self._pos == len(self._out):
            self._out, self._pos = self._more(_CHUNK), 0
            if not self._out:
                return None
        return self.read(BLOCK, "a header")

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            step = min(n, _CHUNK)
            self.read(step, what)
            n -= step


@dataclass
class _Pending:
    """Extended headers read for the next member."""

    seen: set[bytes] = field(default_factory=set)
    pax_name: tuple[str | None, str | None] | None = None  # the name, or why it is refused
    long_name: tuple[str | None, str | None] | None = None
    size: int | None = None
    sparse: bool = False


def _size(n: int) -> str:
    return f"{n // _MIB} MiB" if n >= _MIB else f"{n // 1024} KiB"


def _number(field_bytes: bytes) -> int | None:
    """An octal field (NUL/space padded) or GNU base-256 (first byte 0x80); None if malformed
    or negative."""
    if field_bytes[:1] == b"\x80":
        return int.from_bytes(field_bytes[1:], "big")
    if field_bytes[:1] == b"\xff":
        return None  # base-256 negative
    digits = field_bytes.replace(b"\0", b" ").strip()
    if not digits:
        return 0
    if not all(48 <= c <= 55 for c in digits):
        return None
    return int(digits, 8)


def _checksum_ok(block: bytes) -> bool:
    stored = _number(block[148:156])
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    if stored == unsigned:
        return True
    # some old writers summed signed chars
    return stored == unsigned - 256 * sum(1 for c in blanked if c > 127)


def _pax_records(data: bytes) -> list[tuple[bytes, bytes]] | None:
    """``"%d %s=%s\\n"`` records filling ``data`` (trailing NULs allowed); None if malformed."""
    records = []
    pos = 0
    end = len(data.rstrip(b"\0"))
    while pos < end:
        space = data.find(b" ", pos, pos + 20)
        digits = data[pos:space]
        if space < 0 or not digits.isdigit():
            return None
        length = int(digits)
        record = data[pos : pos + length]
        if length <= len(digits) + 1 or pos + length > len(data) or not record.endswith(b"\n"):
            return None
        key, equals, value = record[len(digits) + 1 : -1].partition(b"=")
        if not key or not equals:
            return None
        records.append((key, value))
        pos += length
    return records


_SHOWN = 100  # characters of a name a message quotes


def _shown(name: str | bytes | None) -> str:
    """A name as a message quotes it: repr, cut to its first characters."""
    if name is None or len(name) <= _SHOWN:
        return repr(name)
    return (
        f"{name[:_SHOWN]!r}… ({len(name)} {'bytes' if isinstance(name, bytes) else 'characters'})"
    )


def _name(raw: bytes, limit: int) -> tuple[str | None, str | None]:
    """The name decoded (UTF-8, no control characters, at most ``limit`` bytes), or why it is
    refused."""
    if len(raw) > limit:
        return None, f"{_shown(raw)}: a name of {len(raw)} bytes (at most {limit})"
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{_shown(raw)}: a name that is not UTF-8"
    if _CONTROL.search(name):
        return None, f"{_shown(name)}: a control character in the name"
    return name, None


def _unsafe_path(name: str) -> bool:
    parts = name.split("/")
    return name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)


def read_tar_gz(path: Path, limits: Limits = Limits()) -> tuple[dict[str, bytes], list[str]]:
    """The regular files of a ``.tar.gz`` and the members refused as unsafe (each named, with
    why).

    Raises:
        InputError: the file cannot be read, is not a gzip-compressed tar archive, is truncated
            or malformed, or declares a header or member past ``limits``.
    """
    try:
        with path.open("rb") as f:
            reader = _Reader(_Inflated(f, path, limits), path, limits)
            while reader.next():
                pass
    except FileNotFoundError as e:
        raise InputError(f"{path}: no such bundle file; check the path") from e
    except OSError as e:
        raise InputError(f"{path}: cannot read the bundle file: {e.strerror or e}") from e
    return reader.files, reader.refused


class _Reader:
    """One pass over the headers; every declared size is checked before its bytes are read."""

    def __init__(self, stream: _Inflated, source: Path, limits: Limits) -> None:
        self.stream = stream
        self.source = source
        self.limits = limits
        self.files: dict[str, bytes] = {}
        self.refused: list[str] = []
        self.kept = 0  # bytes of the files kept
        self.entries = 0
        self.pending = _Pending()
        self.at = 0  # where the current header starts in the inflated stream

    def fail(self, why: str) -> InputError:
        return InputError(f"{self.source}: {why} (tar header at byte {self.at}); refused unread")

    def count_entry(self) -> None:
        self.entries += 1
        if self.entries > self.limits.members:
            raise self.fail(f"more than {self.limits.members} entries")

    def next(self) -> bool:
        """Read one header and what follows it; False at the end of the archive."""
        self.at = self.stream.offset
        block = self.stream.header()
        if block is None and self.at == 0:
            raise InputError(
                f"{self.source}: not a gzip-compressed tar archive (no tar header); give a "
                "bundle written by lockd audit export"
            )
        if block is None or block == b"\0" * BLOCK:
            if self.pending.seen - {b"g"}:
                raise self.fail("an extended header followed by no member")
            return False
        if not _checksum_ok(block):
            raise self.fail("a bad header checksum: not a tar archive, or a damaged one")
        if block[257:265] not in _MAGICS:
            raise self.fail("not a ustar header")
        size = _number(block[124:136])
        if size is None:
            raise self.fail("a malformed size field")
        kind = block[156:157]
        if kind in _EXTENDED:
            self.extended(kind, size)
        else:
            self.member(block, kind, size)
            self.pending = _Pending()
        return True

    def extended(self, kind: bytes, size: int) -> None:
        what = _EXTENDED[kind]
        if size > self.limits.extended:
            raise self.fail(
                f"a {what} declaring {size} bytes; lockd reads at most {self.limits.extended}"
            )
        if kind == b"g":
            self.count_entry()
        elif kind in self.pending.seen:
            raise self.fail(f"a second {what} for one member")
        self.pending.seen.add(kind)
        data = self.stream.read(size, f"a {what}")
        self.stream.read(-size % BLOCK, f"a {what}")
        if kind in (b"L", b"K"):
            if kind == b"L":
                self.pending.long_name = _name(data.split(b"\0", 1)[0], self.limits.name)
            return
        records = _pax_records(data)
        if records is None:
            raise self.fail(f"a malformed {what}")
        for key, value in records:
            if kind == b"g":
                if key in (b"path", b"linkpath", b"size"):
                    raise self.fail(f"a PAX global header setting {key.decode()}")
            elif key == b"path":
                self.pending.pax_name = _name(value, self.limits.name)
            elif key == b"size":
                if not value.isdigit():
                    raise self.fail(f"a PAX size that is not a number: {value[:40]!r}")
                self.pending.size = int(value)
            elif key.startswith(b"GNU.sparse."):
                self.pending.sparse = True

    def member(self, block: bytes, kind: bytes, size: int) -> None:
        self.count_entry()
        if self.pending.size is not None:
            size = self.pending.size
        raw_name = block[0:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\0" and block[345] != 0:
            raw_name = block[345:500].split(b"\0", 1)[0] + b"/" + raw_name
        name, bad = (
            self.pending.pax_name or self.pending.long_name or _name(raw_name, self.limits.name)
        )
        if kind in _NO_DATA and size:
            raise self.fail(f"{_shown(name)}, {_NO_DATA[kind]}, declares {size} bytes of data")
        if kind == b"S":
            self.skip_sparse_map(block)
        if self.stream.offset + size > self.limits.stream:
            raise self.fail(
                f"{_shown(name)} declares {size} bytes, past the {_size(self.limits.stream)} an "
                "archive may hold"
            )
        why = bad or self.unsafe(name, kind, size)
        what = f"the data of {_shown(name)}"
        if why is not None:
            self.refused.append(why)
            if len(self.refused) > self.limits.refusals:
                raise self.fail(f"more than {self.limits.refusals} unsafe members")
            self.stream.skip(size + (-size % BLOCK), what)
            return
        assert name is not None  # a name is None only with why it is refused
        self.files[name] = self.stream.read(size, what)
        self.stream.read(-size % BLOCK, what)
        self.kept += size

    def unsafe(self, name: str | None, kind: bytes, size: int) -> str | None:
        """Why this member is refused, or None."""
        shown = _shown(name)
        if kind == b"S" or self.pending.sparse:
            return f"{shown}: not a regular file (a sparse file)"
        if kind not in _REGULAR:
            return f"{shown}: not a regular file ({_NO_DATA.get(kind, f'of type {kind!r}')})"
        if name is None or _unsafe_path(name):
            return f"{shown}: an absolute path or a '.'/'..' segment"
        if size > self.limits.member or self.kept + size > self.limits.total:
            return f"{shown}: too large ({size} bytes)"
        if name in self.files:
            return f"{shown}: appears twice"
        return None

    def skip_sparse_map(self, block: bytes) -> None:
        """An old GNU sparse header is followed by extension headers while its flag is set."""
        extended = block[482]
        count = 0
        while extended:
            count += 1
            if count > self.limits.sparse_blocks:
                raise self.fail(
                    f"a sparse map of more than {self.limits.sparse_blocks} extension headers"
                )
            extended = self.stream.read(BLOCK, "a sparse map")[504]
