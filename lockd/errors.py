"""Every error lockd reports on purpose, each with the exit code the CLI contract gives it.

Exit codes: 0 verified, 1 not verified, 2 usage error or unreadable input,
3 the target could not be inspected. Anything that is not a LockdError is a bug.
"""

from __future__ import annotations


class LockdError(Exception):
    """Base class: a message that says where and what to do next, and an exit code."""

    exit_code = 2

    def diagnostics(self) -> str:
        return str(self)


class InputError(LockdError):
    """A file or value given to lockd cannot be read or is malformed (exit 2)."""

    exit_code = 2


class KeyFileError(InputError):
    """A key file is malformed, of an unsupported kind, or the password is wrong (exit 2)."""


class PolicyError(InputError):
    """A policy file is malformed or names an unknown key (exit 2)."""


class ManifestError(InputError):
    """A manifest or envelope file is malformed or truncated (exit 2)."""


class OutputExistsError(InputError):
    """An output file exists and --force was not given (exit 2)."""


class ServerError(InputError):
    """A lockd service could not be reached, or refused or failed a request (exit 2).

    ``status``: the HTTP status the service answered with; None when it did not answer (or
    answered something unusable).
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TargetError(LockdError):
    """The target could not be inspected: no daemon, no such container, probe timed out (exit 3)."""

    exit_code = 3


class ProbeError(TargetError):
    """The probe inside the target failed, hung, flooded its output or printed garbage (exit 3)."""


class SignatureError(LockdError):
    """An envelope did not verify against any trusted key (exit 1)."""

    exit_code = 1


class RefusedError(LockdError):
    """lockd refuses to sign an environment that disagrees with its lock or files (exit 1)."""

    exit_code = 1
