"""Writing files so that a failure never leaves half a file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from lockd.errors import InputError, OutputExistsError


def write_atomic(path: Path, data: bytes, *, force: bool = False, mode: int = 0o644) -> None:
    """Write `data` to `path` all at once: a temporary file in the same directory, then a rename.

    Without `force` an existing `path` is never replaced (checked atomically with a hard link).
    Raises OutputExistsError or InputError naming the path.
    """
    directory = path.parent if str(path.parent) else Path()
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise InputError(f"{path}: cannot write here: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if force:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise OutputExistsError(f"{path} exists; pass --force to replace it") from e
    except OSError as e:
        raise InputError(f"{path}: cannot write: {e.strerror}") from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def refuse_existing(path: Path, *, force: bool) -> None:
    """Fail before any work is done when the output exists and may not be replaced."""
    if path.exists() and not force:
        raise OutputExistsError(f"{path} exists; pass --force to replace it")


def read_capped(
    path: Path, *, limit: int, what: str, error: type[InputError] = InputError
) -> bytes:
    """Read a whole input file, refusing one larger than `limit` bytes.

    Raises `error` (an InputError) naming the path and saying what to check.
    """
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError as e:
        raise error(f"{path}: no such {what} file; check the path") from e
    except OSError as e:
        raise error(f"{path}: cannot read the {what} file: {e.strerror or e}") from e
    if len(data) > limit:
        size = f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit // 1024} KiB"
        raise error(f"{path}: larger than {size}, too large to be a {what} file")
    return data
