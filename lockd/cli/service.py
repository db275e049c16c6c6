"""Commands that talk to a lockd service, or run one: serve, token create, push, audit verify and
export, status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lockd.cli.shared import (
    IdentityOpt,
    IdentityRegexpOpt,
    IssuerOpt,
    ServerOpt,
    TrustedRootOpt,
    console,
)

if TYPE_CHECKING:
    from lockd.client import Client
    from lockd.trust.auditlog import ChainCheck
    from lockd.trust.signed import Trust


LogKeyOpt = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="the audit log's verifier key (NAME+ID+KEY, or a file holding it, e.g. the .vkey "
        "of lockd keygen --log-key): its checkpoints must be signed by it; default: the key "
        "the service (or the bundle) names, said to be not pinned",
    ),
]


def serve(
    host: Annotated[str, typer.Option(help="the address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="the port to listen on")] = 8080,
    workers: Annotated[int, typer.Option(min=1, help="worker processes")] = 1,
    migrate: Annotated[
        bool, typer.Option(help="bring the database to the newest schema before serving")
    ] = True,
    access_log: Annotated[
        bool, typer.Option(help="log a line per request (writes are in the audit log anyway)")
    ] = False,
    tls_cert: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="serve HTTPS with this certificate (PEM chain) [LOCKD_TLS_CERT]"),
    ] = None,
    tls_key: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="the certificate's unencrypted key (PEM) [LOCKD_TLS_KEY]"),
    ] = None,
    admission_port: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            min=1,
            max=65535,
            help="answer /v1/admission on this port only, to clients with a certificate "
            "from --client-ca [LOCKD_ADMISSION_PORT]",
        ),
    ] = None,
    client_ca: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="the CA whose client certificates the admission listener requires (the "
            "Kubernetes API server's) [LOCKD_CLIENT_CA]"
        ),
    ] = None,
    insecure_admission: Annotated[
        bool,
        typer.Option(
            help="answer /v1/admission without a client certificate or token on a non-loopback "
            "address [LOCKD_INSECURE_ADMISSION]"
        ),
    ] = False,
) -> None:
    """Run the lockd service (settings from LOCKD_DATABASE_URL, LOCKD_TRUSTED_KEYS,
    LOCKD_POLICIES, LOCKD_ALLOW_ANONYMOUS_READ, LOCKD_ADMISSION_CONFIG; an option given here
    wins over its variable)."""
    import os

    from lockd.cli.extras import require_extra

    require_extra("server", "serve")
    from lockd.server.run import serve as run
    from lockd.server.settings import Settings

    # The options go through the environment: worker processes build their settings from it.
    given = {
        "LOCKD_HOST": host,
        "LOCKD_TLS_CERT": tls_cert,
        "LOCKD_TLS_KEY": tls_key,
        "LOCKD_ADMISSION_PORT": admission_port,
        "LOCKD_CLIENT_CA": client_ca,
        "LOCKD_INSECURE_ADMISSION": "1" if insecure_admission else None,
    }
    os.environ.update({name: str(value) for name, value in given.items() if value is not None})
    run(Settings.from_env(), port=port, workers=workers, migrate=migrate, access_log=access_log)


def token_create(
    name: Annotated[str, typer.Argument(help="who or what holds the token (shown in the audit)")],
    role: Annotated[str, typer.Option(help="reader, recorder (may write) or admin")] = "reader",
) -> None:
    """Make a token in LOCKD_DATABASE_URL's database and print it, this once (only its hash is
    kept)."""
    from lockd.cli.extras import require_extra

    require_extra("server", "token create")
    from lockd.server.run import create_token
    from lockd.server.settings import Settings

    token = create_token(Settings.from_env(), name, role)
    console(stderr=True).print(f"token {name!r} ({role}); it is shown only this once:")
    sys.stdout.write(token + "\n")


def push(
    envelope: Annotated[
        Path, typer.Argument(help="a signed manifest (DSSE envelope or Sigstore bundle)")
    ],
    server: ServerOpt = None,
    name: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the name to file it under (default: its first subject's)"),
    ] = None,
    label: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="key=value, e.g. experiment=42 or doi=10.5281/… (repeat)"),
    ] = None,
) -> None:
    """Store a signed manifest in a lockd service (it must verify against a key or a keyless
    identity it trusts)."""
    from lockd.client import Client
    from lockd.errors import InputError
    from lockd.fileio import read_capped
    from lockd.verify import load_envelope

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    load_envelope(envelope)  # a malformed file fails here, naming it
    data = read_capped(envelope, limit=5 * 1024 * 1024, what="manifest")
    summary, created = Client.from_env(server).push(data, name=name, labels=label or [])
    state = "stored" if created else "already stored"
    console().print(f"{envelope}: {state} as {summary['digest']} ({summary['name']})")


def audit_verify(
    ctx: typer.Context,
    bundle: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="an audit bundle (lockd audit export) to check offline"),
    ] = None,
    server: ServerOpt = None,
    checkpoint: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="with --server: a signed checkpoint saved by an earlier run (made when "
            "absent); the log must be a consistent extension of it, and the new one is saved",
        ),
    ] = None,
    log_key: LogKeyOpt = None,
    certificate_identity: IdentityOpt = None,
    certificate_identity_regexp: IdentityRegexpOpt = None,
    certificate_oidc_issuer: IssuerOpt = None,
    trusted_root: TrustedRootOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Check an audit bundle offline (BUNDLE; a keyless manifest's signer against
    --certificate-identity and --certificate-oidc-issuer), or fetch a service's whole audit log and
    re-check its hash chain here (--server); with --checkpoint FILE, also check that the log
    is a consistent extension of the checkpoint saved in FILE by an earlier run (a rewritten
    history or a replaced database fails, naming the size), then save the new one. Exit 0
    when it holds, 1 naming what failed, 2 for an unusable answer or file."""
    from dataclasses import asdict

    from lockd.client import Client, check_remote_audit
    from lockd.errors import InputError

    if bundle is not None and checkpoint is not None:
        raise InputError(
            "--checkpoint FILE checks the live log (--server URL); a bundle carries its own "
            "checkpoint: give --log-key to check it"
        )
    if bundle is not None:
        _refuse_service_flags(ctx)
        keyless = _keyless_trust(
            certificate_identity, certificate_identity_regexp, certificate_oidc_issuer, trusted_root
        )
        _verify_bundle(bundle, log_key, keyless, json)
    keyless_flags = (certificate_identity, certificate_identity_regexp, certificate_oidc_issuer)
    if any(flag is not None for flag in keyless_flags) or trusted_root is not None:
        raise InputError(
            "--certificate-identity, --certificate-oidc-issuer and --trusted-root check a "
            "bundle's keyless signature: give them with BUNDLE"
        )
    if server is None:
        raise InputError("give a bundle file, or --server URL (or set LOCKD_SERVER)")
    if log_key is not None and checkpoint is None:
        raise InputError("--log-key checks checkpoints: give --checkpoint FILE with it")
    client = Client.from_env(server)
    if checkpoint is not None:
        _follow_log(client, checkpoint, log_key, json)
    verdict = check_remote_audit(client)
    if json:
        import json as json_module

        sys.stdout.write(json_module.dumps(asdict(verdict), sort_keys=True) + "\n")
    else:
        _print_chain(verdict)
    raise typer.Exit(0 if verdict.ok else 1)


def _refuse_service_flags(ctx: typer.Context) -> None:
    """A bundle is checked offline, alone: a --server given with it would be silently unused,
    and whoever gave it would think the service's log was checked too (LOCKD_SERVER in the
    environment is no such request; --checkpoint is refused above)."""
    from lockd.errors import InputError

    source = ctx.get_parameter_source("server")  # typer's own click: its enum, by name
    if source is not None and source.name == "COMMANDLINE":
        raise InputError(
            "--server checks a service's log, not a bundle: check the bundle alone "
            "(BUNDLE [--log-key KEY]), and the service's log in another run"
        )


def _print_chain(verdict: ChainCheck) -> None:
    if verdict.ok:
        console().print(f"the audit chain holds: {verdict.entries} entries")
    else:
        console().print(
            f"[bold red]the audit chain is broken[/] at entry {verdict.first_bad} "
            f"({verdict.entries} entries read): {verdict.reason}"
        )


def _follow_log(client: Client, path: Path, log_key: str | None, json: bool) -> None:
    """--checkpoint: the log against the saved checkpoint, and its entries against the new
    one; the new checkpoint saved when both hold."""
    from dataclasses import asdict

    from lockd.client import check_remote_audit, follow_log
    from lockd.fileio import read_capped, write_atomic
    from lockd.trust.checkpoint import MAX_NOTE_BYTES, NoteError
    from lockd.trust.logkey import load_log_verifier

    key = load_log_verifier(log_key) if log_key is not None else None
    saved = None
    if path.exists():
        saved = read_capped(path, limit=MAX_NOTE_BYTES, what="checkpoint")
    try:
        log = follow_log(client, saved, key)
    except NoteError as e:  # the saved file's (the service's are ServerErrors)
        raise NoteError(f"{path}: not a checkpoint lockd saved ({e})") from e
    chain = check_remote_audit(client, log.checkpoint)
    ok = log.ok and chain.ok
    if ok:
        write_atomic(path, log.note, force=True)
    now = log.checkpoint
    if json:
        import json as json_module

        body = {
            "ok": ok,
            "size": now.size,
            "root": now.root.hex(),
            "saved_size": None if log.saved is None else log.saved.size,
            "failed_at": log.failed_at,
            "reason": log.reason,
            "key": log.key,
            "key_pinned": log.pinned,
            "saved_to": str(path) if ok else None,
            "chain": asdict(chain),
        }
        sys.stdout.write(json_module.dumps(body, sort_keys=True) + "\n")
        raise typer.Exit(0 if ok else 1)
    out = console()
    unpinned = "" if log.pinned else " (the key the service serves: pin it with --log-key)"
    if not log.ok:
        out.print(f"[bold red]the log was rewritten[/]: {log.reason}")
    elif log.saved is None:
        out.print(
            f"the log's checkpoint verifies: {now.size} entries, signed by {log.key}{unpinned}; "
            f"no earlier checkpoint in {path} to compare with"
        )
    else:
        out.print(
            f"the log is a consistent extension of the checkpoint saved at {log.saved.size} "
            f"entries: now {now.size}, signed by {log.key}{unpinned}"
        )
    _print_chain(chain)
    if ok:
        out.print(f"saved the checkpoint of {now.size} entries to {path}")
    raise typer.Exit(0 if ok else 1)


def _keyless_trust(
    identity: str | None, identity_regexp: str | None, issuer: str | None, root: Path | None
) -> Trust | None:
    """The identity (and trusted root) a bundle's keyless signature is checked against."""
    from lockd.trust.keyless import identity_from_flags, load_trusted_root
    from lockd.trust.signed import Trust

    chosen = identity_from_flags(identity, identity_regexp, issuer)
    if chosen is None and root is None:
        return None
    return Trust(
        identities=() if chosen is None else (chosen,),
        trusted_root=None if root is None else load_trusted_root(root),
    )


def _verify_bundle(path: Path, log_key: str | None, keyless: Trust | None, json: bool) -> None:
    from lockd.bundle import render_verdict, verify_bundle
    from lockd.trust.logkey import load_log_verifier

    pinned = None if log_key is None else load_log_verifier(log_key)
    verdict = verify_bundle(path, pinned, keyless)
    if json:
        import json as json_module

        body = {
            "ok": verdict.ok,
            "digest": verdict.digest,
            "keyids": verdict.keyids,
            "checks": [{"id": c.id, "ok": c.ok, "message": c.message} for c in verdict.checks],
            "log_key": verdict.log_key,
            "log_key_pinned": verdict.log_key_pinned,
        }
        sys.stdout.write(json_module.dumps(body, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_verdict(verdict, str(path)))
    raise typer.Exit(0 if verdict.ok else 1)


def audit_export(
    digest: Annotated[str, typer.Argument(help="the manifest's digest, sha256:<hex>")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the bundle to write (.tar.gz)")],
    server: ServerOpt = None,
    key: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="a public key to bundle instead of fetching it (repeat for several)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
    log_key: LogKeyOpt = None,
) -> None:
    """Write a self-contained audit bundle of a stored manifest: the envelope, its public
    key(s), the lock, an SBOM, its verification reports and the audit entries covering them,
    and, from a service with a log key, its signed checkpoint and the inclusion proofs of those
    entries; check it anywhere with `lockd audit verify BUNDLE --log-key KEY`."""
    import re

    from lockd.bundle import export_bundle
    from lockd.client import Client
    from lockd.errors import InputError
    from lockd.trust import keys
    from lockd.trust.logkey import load_log_verifier

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise InputError(f"{digest!r}: give the manifest's digest as sha256:<64 hex digits>")
    extra = [keys.load_public_key(k) for k in key or []]
    pinned = None if log_key is None else load_log_verifier(log_key)
    done = export_bundle(
        Client.from_env(server), digest, output, extra_keys=extra, force=force, log_key=pinned
    )
    if done.log is None:
        log = "; no transparency-log proof (the service has no log key)"
        check = f"lockd audit verify {done.path}"
    else:
        size, vkey = done.log
        log = f"; the log's proof in its checkpoint of {size} entries, signed by {vkey}"
        check = f"lockd audit verify {done.path} --log-key {vkey}"
    if done.keyids:
        signer = f"signed by keyid {', '.join(done.keyids)}"
    else:
        signer = "a keyless signature"
        check += " --certificate-identity WHO --certificate-oidc-issuer ISSUER"
    console().print(
        f"wrote {done.path}: {done.files} files, {done.reports} report(s), {signer}{log}; "
        f"check it with: {check}"
    )


def status(
    server: ServerOpt = None,
    host: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="only this host"),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="print the fleet view as JSON")] = False,
    forget: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            metavar="HOST",
            help="remove HOST and its containers from the fleet view instead (an admin token)",
        ),
    ] = None,
) -> None:
    """The fleet the watch agents (lockd watch) report to a service: one line per running
    container; exit 0 when every container passes and no host is stale, 1 otherwise. With
    --forget HOST, remove a host (e.g. a decommissioned one) from the fleet view."""
    import re

    from lockd.client import Client
    from lockd.errors import InputError
    from lockd.model.fleet import fleet_ok, render_fleet, summary

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    for option, name in (("--host", host), ("--forget", forget)):
        if name is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,253}", name):
            raise InputError(f"{option} {name!r}: give a host name (1-253 of A-Z a-z 0-9 . _ -)")
    client = Client.from_env(server)
    if forget is not None:
        if host is not None or json:
            raise InputError("--forget HOST: give it without --host and --json")
        client.forget_host(forget)
        sys.stdout.write(
            f"forgot host {forget!r} at {client.base_url}; it is listed again if its agent "
            "reports again\n"
        )
        return
    view = client.fleet(host=host)
    if json:
        sys.stdout.write(view.model_dump_json(indent=2) + "\n")
    elif host is not None and not view.hosts:
        sys.stdout.write(f"host {host!r} has never reported to {client.base_url}\n")
    elif not view.hosts:
        sys.stdout.write(f"no host reports to {client.base_url} yet (run lockd watch on one)\n")
    else:
        sys.stdout.write(render_fleet(view) + "\n\n" + summary(view) + "\n")
    raise typer.Exit(0 if fleet_ok(view) and (host is None or view.hosts) else 1)
