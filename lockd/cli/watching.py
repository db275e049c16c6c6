"""The watch command: keep every container of this host verified (lockd.watch)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lockd.cli.shared import (
    IdentityOpt,
    IdentityRegexpOpt,
    IssuerOpt,
    PythonOpt,
    ServerOpt,
    TrustedRootOpt,
    console,
)


def watch(
    server: ServerOpt = None,
    interval: Annotated[
        str, typer.Option(help="how often every container is looked at again: 60s, 5m, 1h")
    ] = "60s",
    label_selector: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="only containers with this label: key=value or key (repeat: all)"),
    ] = None,
    policy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="a policy file or the name of a shipped policy (default: strict)"),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="one pass over every container, then exit")
    ] = False,
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="this host's name in the fleet view (default: the hostname)"),
    ] = None,
    spool: Annotated[
        Path, typer.Option(help="where batches wait for the service and manifests are cached")
    ] = Path("/var/lib/lockd/watch"),
    key: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="check manifests against this public key here (repeat for several)"),
    ] = None,
    metrics_addr: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="serve Prometheus metrics on HOST:PORT, e.g. 127.0.0.1:9464"),
    ] = None,
    probe_timeout: Annotated[
        float, typer.Option(help="seconds one container's probe may take")
    ] = 60.0,
    concurrency: Annotated[int, typer.Option(help="containers probed at the same time")] = 4,
    python: PythonOpt = None,
    certificate_identity: IdentityOpt = None,
    certificate_identity_regexp: IdentityRegexpOpt = None,
    certificate_oidc_issuer: IssuerOpt = None,
    trusted_root: TrustedRootOpt = None,
) -> None:
    """Keep every running container of this host verified against the manifest the service
    (token: LOCKD_TOKEN) holds for its image, and report to it (docs/watch.md). With --key or
    a keyless identity, each manifest's signature is checked here, as verify does; without,
    the service's word is taken. With --once: exit 0 when every container passes, 1 otherwise."""
    import logging
    import socket

    from lockd.errors import InputError
    from lockd.trust.keyless import identity_from_flags
    from lockd.watch import options as watch_options
    from lockd.watch.run import run_once
    from lockd.watch.run import watch as run_watch

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    identity = identity_from_flags(
        certificate_identity, certificate_identity_regexp, certificate_oidc_issuer
    )
    if trusted_root is not None and identity is None:
        raise InputError(
            "--trusted-root is for keyless signatures: give --certificate-identity (or "
            "--certificate-identity-regexp) and --certificate-oidc-issuer with it"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lockd watch: %(message)s")
    options = watch_options.WatchOptions(
        server=server,
        host=watch_options.check_host(host if host is not None else socket.gethostname()),
        spool=spool,
        interval_s=watch_options.parse_interval(interval),
        selectors=watch_options.parse_selectors(label_selector or []),
        policy=policy,
        keys=tuple(key or ()),
        identities=() if identity is None else (identity,),
        trusted_root=trusted_root,
        metrics_addr=None if metrics_addr is None else watch_options.parse_address(metrics_addr),
        probe_timeout_s=probe_timeout,
        concurrency=concurrency,
        python=python,
    )
    if not once:
        run_watch(options)
        return
    summary, delivered, why = run_once(options)
    for name, verdict in sorted(summary.containers.items()):
        detail = summary.details.get(name, "")
        sys.stdout.write(f"{name}\t{verdict}\t{detail}\n".replace("\t\n", "\n"))
    if not summary.containers:
        sys.stdout.write("no running container matches\n")
    if not delivered:
        from rich.markup import escape

        console(stderr=True).print(
            f"[yellow]warning[/]: the report waits in {escape(str(spool))} (delivered by the "
            f"next run): {escape(str(why))}"
        )
    raise typer.Exit(0 if all(v == "pass" for v in summary.containers.values()) else 1)
