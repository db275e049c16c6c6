"""What the commands share: the options several take, the console, opening a target and reading
a manifest file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from lockd.evidence.targets.base import Target
    from lockd.model.manifest import Manifest
    from lockd.trust.signed import Trust
    from lockd.trust.statement import Subject

TargetArg = Annotated[
    str,
    typer.Argument(
        help="a container name or ID, else an image reference; "
        "`container:X`, `image:X` and `local` force the kind; `process:PID` is a Python "
        "process on this host",
        show_default=False,
    ),
]
ServerOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--server",
        envvar="LOCKD_SERVER",
        help="a lockd service's URL (token from LOCKD_TOKEN)",
        show_envvar=False,
    ),
]
PythonOpt = Annotated[
    Optional[str],  # noqa: UP045 (typer reads the annotation at run time on Python 3.10)
    typer.Option(
        "--python",
        help="the interpreter to probe (default: python3, then python; for process:PID, the "
        "one its command line names)",
    ),
]


DeepOpt = Annotated[
    bool,
    typer.Option(
        "--deep",
        help="hash every installed file against its distribution's RECORD (the integrity "
        "check), and import the PyTorch family inside the target (the coherence check); "
        "record refuses to sign when any disagrees",
    ),
]


NoCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="take nothing from lockd's caches: with --deep, hash every file again (not the "
        "digests of the image's read-only layers from the layer cache); verify also runs a "
        "container's probe again (not its report from the probe cache)",
    ),
]


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def open_target(ref: str, python: str | None) -> Target:
    from lockd.evidence.targets.select import open_target

    return open_target(ref, python=python)


def read_manifest(path: Path) -> tuple[list[Subject], Manifest, list[str]]:
    """A manifest from an envelope or a Sigstore bundle (signature not checked) or a bare
    Statement file."""
    from lockd.fileio import read_capped
    from lockd.trust.signed import envelope_of
    from lockd.trust.statement import parse_statement
    from lockd.verify import MAX_ENVELOPE_BYTES, load_envelope

    data = read_capped(path, limit=MAX_ENVELOPE_BYTES, what="manifest")
    if b'"payloadType"' in data:
        envelope = envelope_of(load_envelope(path))
        subjects, manifest = parse_statement(envelope.payload_bytes(), str(path))
        return subjects, manifest, [s.keyid or "(no keyid)" for s in envelope.signatures]
    subjects, manifest = parse_statement(data, str(path))
    return subjects, manifest, []


# Keyless signers (lockd.trust.keyless), by cosign's flag names.
IdentityOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--certificate-identity",
        help="trust a keyless signature by this identity (the certificate's SAN, exactly)",
    ),
]
IdentityRegexpOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--certificate-identity-regexp",
        help="trust a keyless signature whose identity matches this regular expression (whole)",
    ),
]
IssuerOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--certificate-oidc-issuer",
        help="the OIDC issuer of the keyless identity, exactly",
    ),
]
TrustedRootOpt = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--trusted-root",
        help="a Sigstore trusted_root.json for keyless signatures (default: the public-good "
        "root shipped in the sigstore package)",
    ),
]


def trust_from(
    key: list[Path],
    identity: str | None,
    identity_regexp: str | None,
    issuer: str | None,
    trusted_root: Path | None,
) -> Trust:
    """What verify and gate trust: the --key files and the keyless identity, if any.

    Raises:
        KeyFileError: a key file cannot be read.
        InputError: a half-given identity, or an unreadable --trusted-root.
    """
    from lockd.trust.keyless import identity_from_flags
    from lockd.trust.signed import load_trust

    chosen = identity_from_flags(identity, identity_regexp, issuer)
    return load_trust(key, () if chosen is None else (chosen,), trusted_root)
