"""Commands on images in their registries: attach, fetch, gate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from lockd.cli.shared import ServerOpt, console


def attach(
    image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY@sha256:<hex>")],
    envelope: Annotated[Path, typer.Argument(help="a signed manifest (DSSE envelope)")],
) -> None:
    """Store a signed manifest next to IMAGE in its registry: an OCI 1.1 referrer, and cosign's
    sha256-<hex>.att tag for registries without the referrers API."""
    from lockd.fileio import read_capped
    from lockd.trust.registry import attach as attach_envelope
    from lockd.verify import load_envelope

    load_envelope(envelope)  # a malformed file fails here, naming it
    data = read_capped(envelope, limit=5 * 1024 * 1024, what="manifest")
    summary = attach_envelope(image, data)
    console().print(
        f"{envelope}: attached to {summary['image']} as {summary['envelope']} (referrer "
        f"{summary['referrer']}, tags {', '.join(summary['tags'])})"
    )


def fetch(
    image: Annotated[str, typer.Argument(help="REGISTRY/REPOSITORY@sha256:<hex>")],
    output: Annotated[
        Path, typer.Option("--output", help="the folder to write the envelopes into")
    ] = Path("."),
) -> None:
    """Fetch the signed manifests stored next to IMAGE in its registry: one file each,
    <envelope sha256>.dsse.json; exit 1 when there are none."""
    import hashlib

    from lockd.errors import InputError
    from lockd.trust.registry import fetch as fetch_envelopes

    found = fetch_envelopes(image)
    try:
        output.mkdir(parents=True, exist_ok=True)
        for data in found:
            path = output / f"{hashlib.sha256(data).hexdigest()}.dsse.json"
            path.write_bytes(data)
            sys.stdout.write(f"{path}\n")
    except OSError as e:
        raise InputError(f"{output}: cannot write the envelopes ({e.strerror})") from e
    if not found:
        console(stderr=True).print(f"{image}: no lockd attestations in its registry")
    raise typer.Exit(0 if found else 1)


def gate(
    image: Annotated[str, typer.Argument(help="the image pinned by digest: IMAGE@sha256:<hex>")],
    key: Annotated[list[Path], typer.Option(help="a trusted public key (repeat for several)")],
    policy: Annotated[
        str, typer.Option(help="a policy file or the name of a shipped policy")
    ] = "default",
    server: ServerOpt = None,
    registry: Annotated[
        bool, typer.Option("--registry", help="take the manifests from the image's registry")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """CI gate: exit 0 only when a manifest for IMAGE's digest, signed by a trusted --key, has
    recorded checks that pass --policy; 1 when none does; 2 for bad input or no service; 3 when
    the registry cannot be read."""
    from lockd.errors import InputError
    from lockd.gate import gate as run_gate
    from lockd.judgement.policy import load_policy
    from lockd.trust import keys

    if (server is None) == (not registry):
        raise InputError("give --server URL (or set LOCKD_SERVER), or --registry")
    chosen = load_policy(policy)
    trusted = [keys.load_public_key(k) for k in key]
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
