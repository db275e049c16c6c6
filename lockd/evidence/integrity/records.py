"""RECORD files (PEP 376, the wheel spec), read: their rows, the directories a distribution
owns, and how one listed file compares with what lockd found (pure)."""

from __future__ import annotations

import base64
import csv
import io
import posixpath
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Literal

from lockd.model.report import Finding

if TYPE_CHECKING:
    pass


CHUNK = 1024 * 1024
"""Bytes read (and hashed) at a time."""

MAX_RECORD_BYTES = 64 * 1024 * 1024
"""A larger RECORD is a finding, not read (torch's is about 2 MB)."""

MAX_METADATA_HEAD = 64 * 1024
"""Bytes of a METADATA file read for its Name header."""

MAX_FINDINGS = 1000
"""Findings kept in an Integrity; the rest are counted in ``omitted``."""

HASHES: dict[str, int] = {"sha256": 32, "sha384": 48, "sha512": 64}
"""The RECORD hash algorithms lockd checks, with their digest sizes (the wheel spec forbids
md5 and sha1)."""

MAX_LINK_HOPS = 40
_DIGEST = re.compile(
    "|".join(f"{name}=[A-Za-z0-9_-]{{{-(-size * 4 // 3)}}}" for name, size in HASHES.items())
)
"""A RECORD digest: urlsafe base64 without padding, as long as the algorithm's digest."""
MAP_MIN = 1024 * 1024  # smaller files are read: a map costs more than the copy it saves
_TEXT_LIMIT = 4096


def digest_text(algorithm: str, raw: bytes) -> str:
    """A digest as RECORD writes it: ``sha256=<urlsafe base64 without padding>``."""
    return f"{algorithm}=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def clip_text(text: str) -> str:
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 3] + "..."


def is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# --- RECORD (pure) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordRow:
    """One file a RECORD lists: its target-absolute path, its digest as RECORD writes it (or
    None), its size (or None), and the line of the RECORD it starts on."""

    path: str
    digest: str | None
    size: int | None
    line: int

    @cached_property  # asked for each row several times; kept in the instance's __dict__
    def algorithm(self) -> str | None:
        return None if self.digest is None else self.digest.partition("=")[0]


def _row_problem(fields: list[str]) -> str | None:
    """Why a RECORD row is malformed, or None."""
    if len(fields) != 3:
        return f"expected 3 fields (path,hash,size), found {len(fields)}"
    path, digest, size = fields
    if not path:
        return "the path is empty"
    if not path.isascii():
        if "\x00" in path:
            return "the path contains a NUL character"
        if any("\udc80" <= c <= "\udcff" for c in path):
            return "the path is not UTF-8"
    elif "\x00" in path:
        return "the path contains a NUL character"
    if digest and _DIGEST.fullmatch(digest) is None:
        algorithm, separator, value = digest.partition("=")
        if not separator:
            return f"hash {digest[:80]!r} is not ALGORITHM=DIGEST"
        if algorithm not in HASHES:
            return (
                f"unsupported hash algorithm {algorithm[:40]!r} (lockd checks "
                f"{', '.join(HASHES)}; the wheel spec forbids md5 and sha1)"
            )
        return f"{value[:80]!r} is not a {algorithm} digest in urlsafe base64"
    if size and not (size.isascii() and size.isdigit()):
        return f"size {size[:40]!r} is not a whole number of bytes"
    return None


def target_path(location: str, path: str) -> str:
    """A RECORD path as a target-absolute path: RECORD paths are relative to the location and
    may climb out of it (``../../../bin/torchrun``); ``..`` stops at the root."""
    if not path.startswith("/") and "//" not in path and "/." not in "/" + path:
        return f"{location.rstrip('/')}/{path}"  # the usual row, normal already
    joined = path if path.startswith("/") else posixpath.join(location, path)
    return "/" + posixpath.normpath(joined).lstrip("/")


def _csv_rows(text: str) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """(first line, fields or None, why not) for each CSV record of ``text``."""
    reader = csv.reader(io.StringIO(text, newline=""))
    line = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield line, None, f"not valid CSV ({e})"
            line = reader.line_num + 1
            continue
        yield line, fields, None
        line = reader.line_num + 1


def parse_record(
    data: bytes, record_path: str, location: str
) -> tuple[list[RecordRow], list[Finding]]:
    """The rows of the RECORD at ``record_path`` (its paths resolved against ``location``) and
    a ``record-malformed`` finding naming the RECORD and the line for each line that is not
    ``path,hash,size``. A path listed twice with two digests is malformed; blank lines are not.
    Pure.
    """
    text = data.decode("utf-8", "surrogateescape")
    rows: list[RecordRow] = []
    findings: list[Finding] = []
    seen: dict[str, RecordRow] = {}

    def malformed(line: int, why: str) -> None:
        findings.append(
            Finding(
                kind="record-malformed",
                path=clip_text(record_path),
                message=clip_text(f"{record_path} line {line}: {why}"),
            )
        )

    for line, fields, error in _csv_rows(text):
        if fields is None:
            malformed(line, error or "not valid CSV")
            continue
        if not fields or fields == [""]:
            continue
        problem = _row_problem(fields)
        if problem is not None:
            malformed(line, problem)
            continue
        path, digest, size = fields
        row = RecordRow(
            target_path(location, path), digest or None, int(size) if size else None, line
        )
        first = seen.get(row.path)
        if first is None:
            seen[row.path] = row
            rows.append(row)
        elif row.digest is not None and first.digest is not None and row.digest != first.digest:
            malformed(line, f"{path} is listed again (first on line {first.line}), another digest")
    return rows, findings


def own_directories(rows: Iterable[RecordRow], location: str) -> set[str]:
    """A distribution's own top-level directories in ``location``: the first component of
    each listed path below it that is a directory (``torch``, ``torch-2.13.0.dist-info``); not
    the shared ``__pycache__``, nor anything outside the location (scripts in ``bin/``)."""
    prefix = location.rstrip("/") + "/"
    start = len(prefix)
    heads: set[str] = set()
    for row in rows:
        path = row.path
        if path.startswith(prefix):
            slash = path.find("/", start)
            if slash > start:
                heads.add(path[start:slash])
    heads.discard("__pycache__")
    return {prefix + head for head in heads}


def metadata_name(data: bytes) -> str | None:
    """The Name header of a METADATA / PKG-INFO file's head."""
    for raw in data.decode("utf-8", "replace").splitlines():
        if not raw.strip():
            return None
        key, separator, value = raw.partition(":")
        if separator and raw[0] not in " \t" and key.strip().lower() == "name":
            return value.strip() or None
    return None


# --- what lockd saw of one listed file ----------------------------------------------------------

StateKind = Literal["file", "missing", "other", "unreadable", "unstable"]


@dataclass(frozen=True)
class FileState:
    """A listed file as lockd found it: its digest (RECORD notation) and size, or why not."""

    kind: StateKind
    digest: str | None = None
    size: int | None = None
    message: str | None = None


def row_finding(name: str, row: RecordRow, state: FileState) -> Finding | None:
    """The finding for one listed file of distribution ``name``, or None when it matches."""
    path = clip_text(row.path)
    if state.kind == "missing":
        return Finding(kind="missing", name=name, path=path, expected=row.digest)
    if state.kind in ("unreadable", "unstable"):
        return Finding(kind=state.kind, name=name, path=path, message=state.message)
    if state.kind == "other":
        return Finding(
            kind="modified", name=name, path=path, expected=row.digest, message=state.message
        )
    resized = row.size is not None and state.size is not None and row.size != state.size
    if state.digest == row.digest and not resized:
        return None
    return Finding(
        kind="modified",
        name=name,
        path=path,
        expected=row.digest,
        observed=state.digest,
        message=f"{row.size} bytes listed, {state.size} found"
        if resized
        else "the content differs from the file the package shipped",
    )
