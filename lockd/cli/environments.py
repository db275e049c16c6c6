"""Commands on environments: keygen, record, verify, observe."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from lockd.cli.early import EarlyStart, observe_early
from lockd.cli.shared import (
    DeepOpt,
    IdentityOpt,
    IdentityRegexpOpt,
    IssuerOpt,
    NoCacheOpt,
    PythonOpt,
    ServerOpt,
    TargetArg,
    TrustedRootOpt,
    console,
    open_target,
    trust_from,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Future

    from lockd.evidence.targets.base import Target
    from lockd.model.manifest import Observation


def keygen(
    output_key_prefix: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--output-key-prefix",
            help="writes PREFIX.key and PREFIX.pub (default lockd), or with --log-key PREFIX.key "
            "and PREFIX.vkey (default lockd-log)",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace existing key files")] = False,
    log_key: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            "--log-key",
            metavar="NAME",
            help="make the audit log's checkpoint key instead (Ed25519, signed-note format) "
            "named NAME, e.g. lockd.example.com/audit: for LOCKD_LOG_KEY",
        ),
    ] = None,
) -> None:
    """Make an ECDSA P-256 key pair in cosign's formats (encrypted PREFIX.key, PREFIX.pub), or
    with --log-key NAME the service's audit-log key (PREFIX.key, secret, for LOCKD_LOG_KEY;
    PREFIX.vkey, the verifier key to give everyone who checks the log)."""
    from lockd.trust import keys

    if log_key is not None:
        _log_keygen(log_key, Path(output_key_prefix or "lockd-log"), force)
        return
    output_key_prefix = output_key_prefix or "lockd"
    password = keys.read_password(confirm=True, purpose=f"{output_key_prefix}.key")
    private, public = keys.write_keypair(Path(output_key_prefix), password, force=force)
    pub = keys.load_public_key(public)
    console().print(f"wrote {private} and {public} (keyid {keys.keyid(pub)})")


def _log_keygen(name: str, prefix: Path, force: bool) -> None:
    from lockd.trust.checkpoint import LogSigner
    from lockd.trust.logkey import write_log_key

    signer = LogSigner.generate(name)
    key, vkey = write_log_key(prefix, signer, force=force)
    console(stderr=True).print(
        f"wrote {key} (the log's signing key: keep it secret, set LOCKD_LOG_KEY={key}) and "
        f"{vkey} (give it to verifiers: lockd audit verify --log-key {vkey})"
    )
    sys.stdout.write(f"{signer.verifier()}\n")


def record(
    target: TargetArg,
    key: Annotated[Path, typer.Option(help="the private key (cosign format) to sign with")],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--output",
            "-o",
            help="the envelope to write (default: <target>.dsse.json, with --bundle "
            "<target>.sigstore.json)",
        ),
    ] = None,
    python: PythonOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
    bundle: Annotated[
        bool,
        typer.Option(
            "--bundle",
            help="write a Sigstore bundle v0.3 (key-based: the envelope with the key's keyid "
            "as its public-key hint) instead of the bare envelope",
        ),
    ] = False,
    lock: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="a hashed requirements.txt the target must agree with (else refused)"),
    ] = None,
    allow_unhashed: Annotated[
        bool, typer.Option(help="accept a --lock whose pins carry no --hash")
    ] = False,
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu", help="run the GPU validation suite in the target and sign its results"
        ),
    ] = False,
    append: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--append",
            metavar="MANIFEST",
            help="with --gpu: add this GPU's results to MANIFEST (same subject) and re-sign it "
            "(written back to MANIFEST unless --output is given)",
        ),
    ] = None,
    deep: DeepOpt = False,
    no_cache: NoCacheOpt = False,
    allow_incoherent: Annotated[
        bool,
        typer.Option(
            help="sign a PyTorch family that does not fit its torch (verify's coherence check "
            "then fails)"
        ),
    ] = False,
) -> None:
    """Observe TARGET and write its signed manifest (a DSSE envelope)."""
    from lockd.errors import InputError
    from lockd.fileio import refuse_existing, write_atomic
    from lockd.record import load_lock
    from lockd.record import record as record_target
    from lockd.trust import keys

    if append is not None and not gpu:
        raise InputError(f"--append {append}: appends GPU results; add --gpu")
    if append is not None and lock is not None:
        raise InputError(f"--append {append}: the manifest keeps its own lock; drop --lock")
    in_place = append is not None and output is None
    suffix = ".sigstore.json" if bundle else ".dsse.json"
    out = output or append or Path(safe_name(target) + suffix)
    if not in_place:
        refuse_existing(out, force=force)
    locked = None if lock is None else load_lock(lock, allow_unhashed=allow_unhashed)
    private = keys.load_private_key(key, keys.read_password(purpose=str(key)))
    done = record_target(
        open_target(target, python),
        private,
        lock=locked,
        append=append,
        gpu=gpu,
        deep=deep,
        cache=not no_cache,
        allow_incoherent=allow_incoherent,
    )
    observation, manifest, recorded, bound = (
        done.observation,
        done.manifest,
        done.recorded,
        done.lock,
    )
    if bundle:
        from lockd.trust.sigstore_bundle import key_bundle

        written = key_bundle(recorded.envelope, recorded.keyid)
    else:
        written = recorded.envelope.to_json()
    write_atomic(out, written, force=force or in_place)
    screen = console()
    if observation.gpu_suite is not None:
        from lockd.judgement.gpucompare import summary

        screen.print(summary(observation.gpu_suite))
        if append is not None:
            screen.print(f"the manifest now holds {len(manifest.gpu_suites)} GPU result(s)")
    elif gpu:
        screen.print("[yellow]warning[/]: the GPU suite did not run (no Python in the target)")
    for s in recorded.subjects:
        screen.print(f"subject {s.name} sha256:{s.digest['sha256']}")
    if observation.probe is None:
        screen.print(f"[yellow]warning[/]: no probe report: {observation.probe_error}")
    if bound is not None:
        screen.print(f"lock {lock}: the target agrees with its {len(bound.pins)} pins")
    if observation.integrity is not None:
        found = observation.integrity
        screen.print(
            f"integrity: {found.files} files of {found.distributions} distributions match "
            "their RECORD" + (f" ({found.cached} from the layer cache)" if found.cached else "")
        )
    screen.print(f"wrote {out} (signed by keyid {recorded.keyid})")


def safe_name(ref: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in ref)
    return cleaned.strip("._") or "manifest"


def verify(
    ctx: typer.Context,
    target: TargetArg,
    key: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="a trusted public key (repeat for several)"),
    ] = None,
    manifest: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            help="the signed manifest (DSSE envelope or Sigstore bundle); else fetched from "
            "--server"
        ),
    ] = None,
    policy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="a policy file or the name of a shipped policy (default: strict)"),
    ] = None,
    python: PythonOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    gpu: Annotated[
        bool,
        typer.Option("--gpu", help="run the GPU validation suite and compare its results"),
    ] = False,
    server: ServerOpt = None,
    deep: DeepOpt = False,
    no_cache: NoCacheOpt = False,
    registry: Annotated[
        bool,
        typer.Option(
            "--registry",
            help="take the manifest from the registry of TARGET's image (what lockd attach "
            "stored there): the newest signed by a --key that names the image; with --server, "
            "only when the service holds none",
        ),
    ] = False,
    certificate_identity: IdentityOpt = None,
    certificate_identity_regexp: IdentityRegexpOpt = None,
    certificate_oidc_issuer: IssuerOpt = None,
    trusted_root: TrustedRootOpt = None,
) -> None:
    """Verify TARGET against a signed manifest; exit 0 when verified, 1 when not. With --server
    (token: LOCKD_TOKEN) the manifest for TARGET's image comes from a lockd service (its
    signature is still checked here, against --key) and the report is pushed there; with
    --registry, from its image's registry."""
    from concurrent.futures import ThreadPoolExecutor

    from lockd.errors import InputError

    if manifest is not None and registry:
        raise InputError("give --manifest FILE or --registry, not both")
    if manifest is None and server is None and not registry:
        raise InputError(
            "give --manifest FILE, --server URL to fetch it from a lockd service, or --registry "
            "to take it from the image's registry"
        )
    key = key or []
    if not key and certificate_identity is None and certificate_identity_regexp is None:
        raise InputError(
            "give --key PUB, or a keyless signer's --certificate-identity (or "
            "--certificate-identity-regexp) and --certificate-oidc-issuer"
        )
    trust = (key, certificate_identity, certificate_identity_regexp, certificate_oidc_issuer)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe") as pool:
        # The probe mostly waits on the container: start it before lockd's own imports, unless
        # main() started it already, before Typer converted the arguments (lockd.cli.early).
        early = None
        if not deep and files_given([manifest, *key, trusted_root]):
            started = ctx.find_object(EarlyStart)
            early = (
                started.observation
                if started is not None and started.request.serves(target, python, gpu)
                else pool.submit(observe_early, target, python, gpu, cache=not no_cache)
            )
        _verify(
            target,
            manifest,
            (*trust, trusted_root),
            policy,
            python,
            json,
            gpu,
            deep,
            server,
            registry,
            early,
            cache=not no_cache,
        )


def files_given(paths: Sequence[object]) -> bool:
    """Whether ``paths`` (a manifest or None, keys) name files: a mistyped one is an error at
    once, and an observation started early would hold up the exit (its thread is waited for)."""
    return all(p is None or (isinstance(p, str | Path) and os.path.isfile(p)) for p in paths)


def _verify(
    target: str,
    manifest: Path | None,
    trust: tuple[list[Path], str | None, str | None, str | None, Path | None],
    policy: str | None,
    python: str | None,
    json: bool,
    gpu: bool,
    deep: bool,
    server: str | None,
    registry: bool,
    early: Future[tuple[Target, Observation]] | None,
    *,
    cache: bool = True,
) -> None:
    from lockd.cli.render import print_report, report_json
    from lockd.judgement.policy import load_policy
    from lockd.verify import reach_and_observe, verify_target

    chosen = load_policy(policy)
    trusted = trust_from(*trust)
    if manifest is None:
        from lockd.client import Client, verify_remote

        client = None if server is None else Client.from_env(server)
        ignore = chosen.filesystem.patterns() if deep else None
        _, observation = (
            early.result()
            if early is not None
            else reach_and_observe(lambda: open_target(target, python), gpu, ignore, cache=cache)
        )
        if registry:
            from lockd.attestations import verify_attested

            report = verify_attested(observation, trusted, chosen, client=client)
        else:
            assert client is not None
            report = verify_remote(client, observation, trusted, chosen)
    else:
        report = verify_target(
            manifest,
            trusted,
            lambda: open_target(target, python),
            chosen,
            gpu=gpu,
            deep=deep,
            observing=early,
            cache=cache,
        )
        if server is not None:
            from lockd.client import Client

            Client.from_env(server).push_report(report)
    if json:
        sys.stdout.write(report_json(report) + "\n")
    else:
        print_report(report, console())
    raise typer.Exit(0 if report.verified else 1)


def observe(target: TargetArg, python: PythonOpt = None) -> None:
    """Print what a probe sees in TARGET, as JSON (unsigned: what record would sign)."""
    observation = open_target(target, python).observe()
    sys.stdout.write(observation.model_dump_json(indent=2, exclude_none=True) + "\n")
