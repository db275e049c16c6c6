"""The audit log's signing key on disk: ``LOCKD_LOG_KEY``, made by ``lockd keygen --log-key
NAME``. The files are Go's sumdb/note key strings (lockd.trust.checkpoint): ``PREFIX.key`` the
signer key (secret, mode 0600, not encrypted: the service reads it unattended) and
``PREFIX.vkey`` the verifier key to give verifiers."""

from __future__ import annotations

import re
import secrets
import socket
from pathlib import Path

from lockd.errors import KeyFileError, OutputExistsError
from lockd.fileio import read_capped, read_secret_file, refuse_existing, write_atomic
from lockd.trust.checkpoint import LogSigner, LogVerifier, NoteError

MAX_KEY_FILE_BYTES = 4096  # a key string is about 100 bytes

__all__ = ["default_name", "load_log_signer", "load_log_verifier", "log_signer_at", "write_log_key"]


def _read_key_text(path: Path, what: str, *, secret: bool = False) -> str:
    """``secret``: read only when no other user may read or change it (read_secret_file)."""
    read = read_secret_file if secret else read_capped
    data = read(path, limit=MAX_KEY_FILE_BYTES, what=what, error=KeyFileError)
    try:
        return data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a {what} (it is not ASCII text)") from None


def load_log_signer(path: Path) -> LogSigner:
    """The log's signer key from ``path``, a file only this user may read (mode 0600 or 0400,
    not a symbolic link; or a Kubernetes secret volume's: see lockd.fileio.read_secret_file).

    Raises:
        KeyFileError: it cannot be read, others may read or change it, or it is not a signer
            key (naming the file).
    """
    try:
        return LogSigner.parse(_read_key_text(path, "log key", secret=True))
    except NoteError as e:
        raise KeyFileError(f"{path}: {e}") from e


def load_log_verifier(given: str) -> LogVerifier:
    """A verifier key given as its string (``NAME+ID+KEY``) or as a file holding it.

    Raises:
        KeyFileError: a file that cannot be read; NoteError: not a verifier key.
    """
    if "+" in given and not Path(given).exists():
        return LogVerifier.parse(given)
    path = Path(given)
    try:
        return LogVerifier.parse(_read_key_text(path, "log verifier key"))
    except NoteError as e:
        raise KeyFileError(f"{path}: {e}") from e


def write_log_key(prefix: Path, signer: LogSigner, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``PREFIX.key`` (the signer key, mode 0600) and ``PREFIX.vkey`` (its verifier key).

    Raises:
        OutputExistsError: either exists and ``force`` is false; InputError: cannot write.
    """
    key = prefix.with_name(prefix.name + ".key")
    vkey = prefix.with_name(prefix.name + ".vkey")
    for path in (key, vkey):
        refuse_existing(path, force=force)
    write_atomic(key, f"{signer}\n".encode(), force=force, mode=0o600)
    write_atomic(vkey, f"{signer.verifier()}\n".encode(), force=force, mode=0o644)
    return key, vkey


def default_name() -> str:
    """A name for a key the service makes itself: this host's, and a random part, so that a
    log started afresh has an origin of its own."""
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64] or "localhost"
    return f"{host}/lockd-audit/{secrets.token_hex(4)}"


def log_signer_at(path: Path) -> LogSigner:
    """The signer key kept at ``path``, made there first (mode 0600) when there is none; of
    two processes making it at once, one's key is kept and both read it.

    Raises:
        KeyFileError: it exists but cannot be read, or cannot be written.
    """
    if not path.exists():
        try:
            write_atomic(path, f"{LogSigner.generate(default_name())}\n".encode(), mode=0o600)
        except OutputExistsError:
            pass  # another process made it first: read theirs
        except OSError as e:  # pragma: no cover - write_atomic raises InputError
            raise KeyFileError(f"{path}: cannot write the log key: {e}") from e
    return load_log_signer(path)
