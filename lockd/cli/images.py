"""Commands on images in their registries: attach, fetch, gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lockd.cli.shared import (
    IdentityOpt,
    IdentityRegexpOpt,
    IssuerOpt,
    ServerOpt,
    TrustedRootOpt,
    console,
    trust_from,
)


def attach(
    image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY@sha256:<hex>")],
    envelope: Annotated[
        Path, typer.Argument(help="a signed manifest (DSSE envelope or Sigstore bundle)")
    ],
    bundle: Annotated[
        bool,
        typer.Option(
            "--bundle",
            help="also store it as a Sigstore bundle (a referrer of the bundle media type; an "
            "envelope is made a key-based bundle); a keyless manifest needs it",
        ),
    ] = False,
) -> None:
    """Store a signed manifest next to IMAGE in its registry: its DSSE envelope as an OCI 1.1
    referrer, and in cosign's sha256-<hex>.att tag for registries without the referrers API;
    with --bundle the Sigstore bundle too."""
    from lockd.fileio import read_capped
    from lockd.trust.registry import attach as attach_envelope
    from lockd.trust.registry import attach_bundle
    from lockd.trust.signed import envelope_of
    from lockd.trust.sigstore_bundle import SigstoreBundle, key_bundle
    from lockd.verify import load_envelope

    signed = load_envelope(envelope)  # a malformed file fails here, naming it
    data = read_capped(envelope, limit=5 * 1024 * 1024, what="manifest")
    dsse = envelope_of(signed)
    summary = attach_envelope(image, data if signed is dsse else dsse.to_json())
    console().print(
        f"{envelope}: attached to {summary['image']} as {summary['envelope']} (referrer "
        f"{summary['referrer']}, tags {', '.join(summary['tags'])})"
    )
    if bundle:
        if isinstance(signed, SigstoreBundle):
            written = signed.raw
        else:
            written = key_bundle(dsse, dsse.signatures[0].keyid or "")
        stored = attach_bundle(image, written)
        console().print(
            f"{envelope}: attached as a Sigstore bundle {stored['bundle']} (referrer "
            f"{stored['referrer']}, tag {stored['tags'][0]})"
        )


def fetch(
    image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY@sha256:<hex>")],
    output: Annotated[
        Path, typer.Option("--output", help="the folder to write the envelopes into")
    ] = Path("."),
) -> None:
    """Fetch the signed manifests stored next to IMAGE in its registry: one file each,
    <sha256>.dsse.json for an envelope, <sha256>.sigstore.json for a Sigstore bundle; exit 1
    when there are none."""
    import hashlib

    from lockd.errors import InputError, ManifestError
    from lockd.trust.dsse import Envelope
    from lockd.trust.registry import fetch as fetch_envelopes
    from lockd.trust.signed import parse_signed

    found = fetch_envelopes(image)
    try:
        output.mkdir(parents=True, exist_ok=True)
        for data in found:
            digest = hashlib.sha256(data).hexdigest()
            try:
                kind = "dsse" if isinstance(parse_signed(data, digest), Envelope) else "sigstore"
            except ManifestError:
                kind = "dsse"  # another tool's layer of the DSSE media type: kept as stored
            path = output / f"{digest}.{kind}.json"
            path.write_bytes(data)
            sys.stdout.write(f"{path}\n")
    except OSError as e:
        raise InputError(f"{output}: cannot write the envelopes ({e.strerror})") from e
    if not found:
        console(stderr=True).print(f"{image}: no lockd attestations in its registry")
    raise typer.Exit(0 if found else 1)


def gate(
    image: Annotated[str, typer.Argument(help="the image pinned by digest: IMAGE@sha256:<hex>")],
    key: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="a trusted public key (repeat for several)"),
    ] = None,
    policy: Annotated[
        str, typer.Option(help="a policy file or the name of a shipped policy")
    ] = "default",
    server: ServerOpt = None,
    registry: Annotated[
        bool, typer.Option("--registry", help="take the manifests from the image's registry")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
    certificate_identity: IdentityOpt = None,
    certificate_identity_regexp: IdentityRegexpOpt = None,
    certificate_oidc_issuer: IssuerOpt = None,
    trusted_root: TrustedRootOpt = None,
) -> None:
    """CI gate: exit 0 only when a manifest for IMAGE's digest, signed by a trusted --key, has
    recorded checks that pass --policy; 1 when none does; 2 for bad input or no service; 3 when
    the registry cannot be read."""
    from lockd.errors import InputError
    from lockd.gate import gate as run_gate
    from lockd.judgement.policy import load_policy

    if (server is None) == (not registry):
        raise InputError("give --server URL (or set LOCKD_SERVER), or --registry")
    chosen = load_policy(policy)
    trusted = trust_from(
        key or [],
        certificate_identity,
        certificate_identity_regexp,
        certificate_oidc_issuer,
        trusted_root,
    )
    client = None
    if server is not None and not registry:
        from lockd.client import Client

        client = Client.from_env(server)
    result = run_gate(image, trusted, chosen, policy, client=client)
    if json:
        import json as json_module

        sys.stdout.write(json_module.dumps(result.as_dict(), sort_keys=True) + "\n")
    elif result.allowed:
        console().print(
            f"{image}: allowed under {policy} (manifest {result.manifest}, signed by "
            f"{', '.join(k[:16] for k in result.keyids)})"
        )
    else:
        from rich.markup import escape

        console().print(f"[bold red]{escape(image)}: not allowed[/] under {escape(policy)}")
        for reason in result.reasons:
            console().print(f"  - {escape(reason)}")
    raise typer.Exit(0 if result.allowed else 1)
