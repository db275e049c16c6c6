"""Writing files so that a failure never leaves half a file behind, and reading the files lockd
keeps for itself only when they are its own."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
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


# --- files lockd keeps for itself (caches, spools, locks) -----------------------------------


def cache_root() -> Path:
    """``$LOCKD_CACHE_DIR``, else ``/var/cache/lockd`` for root, ``${XDG_CACHE_HOME:-~/.cache}
    /lockd`` for others."""
    base = os.environ.get("LOCKD_CACHE_DIR")
    if not base:
        if os.geteuid() == 0:
            base = "/var/cache/lockd"
        else:
            xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            base = os.path.join(xdg, "lockd")
    return Path(base)


def trusted(st: os.stat_result) -> bool:
    """Whether a file or directory is this user's and nobody else may write it."""
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _distrust(path: Path, *, above: bool) -> str | None:
    """Why the directory ``path`` is not trusted (``above``: the one above a cache's, which
    may also be root's, or writable by others when sticky); None when it is."""
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    owners = (os.geteuid(), 0) if above else (os.geteuid(),)
    if st.st_uid not in owners:
        return f"{path} is owned by uid {st.st_uid}"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (above and st.st_mode & stat.S_ISVTX):
        return f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def untrusted_directory(directory: Path) -> tuple[Path, str] | None:
    """Which of ``directory`` (a cache's, a spool's) and the one above it is not trusted, and
    why; None when both are. Each is ``lstat``-ed (a symbolic link is never followed) and must
    be a directory this user owns that nobody else may write; the one above may also be
    root's, or writable by others when sticky (as /tmp is)."""
    why = _distrust(directory.parent, above=True)
    if why is not None:
        return directory.parent, why
    why = _distrust(directory, above=False)
    return None if why is None else (directory, why)


class UntrustedFileError(Exception):
    """A file lockd keeps for itself is not read: ``why`` (a symbolic link, another user's...)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor of ``path`` itself, never of what a symbolic link there points to (nor a
    FIFO's writer waited for).

    Raises:
        FileNotFoundError: there is none (without O_CREAT).
        UntrustedFileError: a symbolic link, or it cannot be opened, saying why.
    """
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except FileNotFoundError:
        raise
    except OSError as e:
        why = "a symbolic link" if e.errno == errno.ELOOP else e.strerror or str(e)
        raise UntrustedFileError(why) from e


def open_own_file(path: Path, flags: int, mode: int = 0o600) -> int:
    """A descriptor of a file lockd keeps for itself, opened with ``flags`` (O_CREAT: made
    ``mode``) without following a symbolic link, and kept only when it is a regular file this
    user owns that nobody else may write. The directory is the caller's to check
    (``untrusted_directory``).

    Raises:
        FileNotFoundError: there is none (without O_CREAT).
        UntrustedFileError: it is not opened, saying why.
    """
    fd = _open_nofollow(path, flags, mode)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedFileError("not a regular file")
        if not trusted(st):
            raise UntrustedFileError("another user's, or writable by others")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_own_file(path: Path, max_bytes: int) -> bytes | None:
    """The bytes of a file lockd keeps for itself (a cache entry, a spooled batch), checked as
    ``open_own_file`` says, of at most ``max_bytes``; None when there is none.

    Raises:
        UntrustedFileError: it is not read, saying why.
    """
    try:
        fd = open_own_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UntrustedFileError(e.strerror or str(e)) from e
    if len(data) > max_bytes:
        raise UntrustedFileError(f"larger than {max_bytes} bytes")
    return data


# --- secrets (private keys) ----------------------------------------------------------------


def _held_directory(path: Path) -> bool:
    """A real directory (not a link) of this user's or root's that nobody else may write."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid in (os.geteuid(), 0)
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    )


def secret_volume_file(path: Path) -> Path | None:
    """The file a Kubernetes secret volume's ``DIR/NAME`` stands for, else None. Kubelet
    writes each version of a secret into ``DIR/..TIMESTAMP/NAME`` and links ``DIR/..data ->
    ..TIMESTAMP`` and ``DIR/NAME -> ..data/NAME``: only these two links, exactly so, between
    directories only root (or this user) may write, are followed; whoever could change them
    could change the secret itself."""
    directory = path.parent
    try:
        version = os.readlink(directory / "..data")
        if os.readlink(path) != f"..data/{path.name}":
            return None
    except OSError:
        return None
    if not version.startswith("..") or "/" in version or version in ("..", "..data"):
        return None
    if not (_held_directory(directory) and _held_directory(directory / version)):
        return None
    return directory / version / path.name


def _secret_problem(st: os.stat_result, path: Path, what: str, *, volume: bool) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return f"the {what} file is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return (
            f"the {what} file is owned by uid {st.st_uid}, not by this user (uid "
            f"{os.geteuid()}) or root: whoever owns it may have put their own {what} there"
        )
    ours = st.st_gid in (os.getegid(), *os.getgroups())
    allowed = 0o440 if volume and ours else 0o600
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~allowed:
        return (
            f"the {what} file's mode {mode:04o} lets other users read or change it: "
            f"chmod 600 {path} (this user alone may read a {what})"
        )
    return None


def read_secret_file(
    path: Path, *, limit: int, what: str, error: type[InputError] = InputError
) -> bytes:
    """A secret (a private key) from ``path``, read only when no other user can read or change
    it, as ssh holds private keys: a regular file opened without following a symbolic link,
    owned by this user or root, mode 0600 or 0400. The one exception is a Kubernetes secret
    volume (:func:`secret_volume_file`): there its two links are followed, and the file may
    also be readable by its group when that group is this process's (the pod's ``fsGroup``
    with ``defaultMode: 0440``). The content is never shown.

    Raises:
        ``error`` (an InputError) naming the path, saying why and what to do.
    """
    volume = secret_volume_file(path)
    opened = volume or path
    try:
        fd = _open_nofollow(opened, os.O_RDONLY)
    except FileNotFoundError as e:
        raise error(f"{path}: no such {what} file; check the path") from e
    except UntrustedFileError as e:
        if e.why == "a symbolic link":
            raise error(
                f"{path}: the {what} file is a symbolic link, which lockd does not follow: give "
                "the file itself (only a Kubernetes secret volume's own links are followed)"
            ) from None
        raise error(f"{path}: cannot read the {what} file: {e.why}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            problem = _secret_problem(os.fstat(f.fileno()), opened, what, volume=bool(volume))
            if problem is not None:
                raise error(f"{path}: {problem}")
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{path}: cannot read the {what} file: {e.strerror or e}") from None
    if len(data) > limit:
        raise error(f"{path}: larger than {limit // 1024} KiB, too large to be a {what} file")
    return data
