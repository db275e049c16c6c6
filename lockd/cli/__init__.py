"""The lockd command line: one thin function per command (parse, call the core, render).

Exit codes: 0 verified, 1 not verified, 2 usage error or unreadable input,
3 the target could not be inspected.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from collections.abc import Sequence
    from concurrent.futures import Future

    from rich.console import Console

    from lockd.evidence.targets.base import Target
    from lockd.model.manifest import Manifest, Observation
    from lockd.trust.statement import Subject

app = typer.Typer(
    help="Record Python/CUDA environments into signed manifests and verify targets against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # docstrings are wrapped at 100 columns: markdown reflows them to the terminal's width
    rich_markup_mode="markdown",
)

TargetArg = Annotated[
    str,
    typer.Argument(
        help="a container name or ID, else an image reference; "
        "`container:X`, `image:X` and `local` force the kind",
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
    typer.Option("--python", help="the interpreter to probe (default: python3, then python)"),
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


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _open_target(ref: str, python: str | None) -> Target:
    from lockd.evidence.targets.select import open_target

    return open_target(ref, python=python)


@app.command()
def keygen(
    output_key_prefix: Annotated[
        str, typer.Option("--output-key-prefix", help="writes PREFIX.key and PREFIX.pub")
    ] = "lockd",
    force: Annotated[bool, typer.Option(help="replace existing key files")] = False,
) -> None:
    """Make an ECDSA P-256 key pair in cosign's formats (encrypted PREFIX.key, PREFIX.pub)."""
    from lockd.trust import keys

    password = keys.read_password(confirm=True, purpose=f"{output_key_prefix}.key")
    private, public = keys.write_keypair(Path(output_key_prefix), password, force=force)
    pub = keys.load_public_key(public)
    _console().print(f"wrote {private} and {public} (keyid {keys.keyid(pub)})")


@app.command()
def record(
    target: TargetArg,
    key: Annotated[Path, typer.Option(help="the private key (cosign format) to sign with")],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="the envelope to write (default: <target>.dsse.json)"),
    ] = None,
    python: PythonOpt = None,
    force: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
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
    from lockd.record import (
        append_gpu_result,
        bind_lock,
        build_manifest,
        load_lock,
        observe,
        require_coherent,
        sign_manifest,
    )
    from lockd.trust import keys

    if append is not None and not gpu:
        raise InputError(f"--append {append}: appends GPU results; add --gpu")
    if append is not None and lock is not None:
        raise InputError(f"--append {append}: the manifest keeps its own lock; drop --lock")
    in_place = append is not None and output is None
    out = output or append or Path(_safe_name(target) + ".dsse.json")
    if not in_place:
        refuse_existing(out, force=force)
    locked = None if lock is None else load_lock(lock, allow_unhashed=allow_unhashed)
    private = keys.load_private_key(key, keys.read_password(purpose=str(key)))
    observation = observe(_open_target(target, python), gpu=gpu, deep=deep, cache=not no_cache)
    if append is not None:
        manifest = append_gpu_result(append, private, observation)
        bound = None
    else:
        bound = None if locked is None else bind_lock(observation, locked)
        if not allow_incoherent:
            require_coherent(observation)
        manifest = build_manifest(observation, lock=bound)
    recorded = sign_manifest(manifest, private)
    write_atomic(out, recorded.envelope.to_json(), force=force or in_place)
    console = _console()
    if observation.gpu_suite is not None:
        from lockd.judgement.gpucompare import summary

        console.print(summary(observation.gpu_suite))
        if append is not None:
            console.print(f"the manifest now holds {len(manifest.gpu_suites)} GPU result(s)")
    elif gpu:
        console.print("[yellow]warning[/]: the GPU suite did not run (no Python in the target)")
    for s in recorded.subjects:
        console.print(f"subject {s.name} sha256:{s.digest['sha256']}")
    if observation.probe is None:
        console.print(f"[yellow]warning[/]: no probe report: {observation.probe_error}")
    if bound is not None:
        console.print(f"lock {lock}: the target agrees with its {len(bound.pins)} pins")
    if observation.integrity is not None:
        found = observation.integrity
        console.print(
            f"integrity: {found.files} files of {found.distributions} distributions match "
            "their RECORD" + (f" ({found.cached} from the layer cache)" if found.cached else "")
        )
    console.print(f"wrote {out} (signed by keyid {recorded.keyid})")


def _safe_name(ref: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in ref)
    return cleaned.strip("._") or "manifest"


@app.command()
def verify(
    target: TargetArg,
    key: Annotated[list[Path], typer.Option(help="a trusted public key (repeat for several)")],
    manifest: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="the signed manifest (DSSE envelope); else fetched from --server"),
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
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe") as pool:
        # The probe mostly waits on the container: start it before lockd's own imports
        # (main() may have started it already, before Typer converted the arguments).
        early = None
        if not deep and _files_given([manifest, *key]):
            early = _EARLY.pop((target, python, gpu), None) or pool.submit(
                _observe_early, target, python, gpu, cache=not no_cache
            )
        _verify(
            target,
            manifest,
            key,
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


def _files_given(paths: Sequence[object]) -> bool:
    """Whether ``paths`` (a manifest or None, keys) name files: a mistyped one is an error at
    once, and an observation started early would hold up the exit (its thread is waited for)."""
    return all(p is None or (isinstance(p, str | Path) and os.path.isfile(p)) for p in paths)


def _observe_early(
    ref: str, python: str | None, gpu: bool, *, cache: bool = True
) -> tuple[Target, Observation]:
    from lockd.verify import reach_and_observe

    return reach_and_observe(lambda: _open_target(ref, python), gpu, cache=cache)


_EARLY: dict[tuple[str, str | None, bool], Future[tuple[Target, Observation]]] = {}
"""`lockd verify`'s observation, started by main() before Typer converted the arguments."""


def _start_early(command: typer.core.TyperGroup, args: list[str]) -> None:
    """Start `lockd verify TARGET --manifest M` observing TARGET now: Typer's conversion of the
    arguments costs ~0.2 s of CPU (it imports pydantic, builds adapters) that the probe can
    run in. Click's own parser reads the arguments, so `verify` takes this start as exactly
    the one it would make; anything unusual (no --manifest or --key, or no such file, --deep,
    --no-cache, --help, a usage error) starts nothing here."""
    from concurrent.futures import ThreadPoolExecutor

    if not args or args[0] != "verify":
        return
    try:
        sub = command.commands["verify"]
        parsed, rest, _ = sub.make_parser(typer.Context(sub, info_name="verify")).parse_args(
            args[1:]
        )
    except Exception:  # the real parse reports it
        return
    target, python = parsed.get("target"), parsed.get("python")
    manifest, keys = parsed.get("manifest"), parsed.get("key")
    wanted = (
        manifest
        and keys
        and isinstance(keys, list)
        and _files_given([manifest, *keys])
        and not parsed.keys() & {"deep", "registry", "help", "no_cache"}
    )
    if rest or not wanted or not isinstance(target, str) or not isinstance(python, str | None):
        return
    gpu = bool(parsed.get("gpu"))
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe")
    _EARLY[(target, python, gpu)] = pool.submit(_observe_early, target, python, gpu)
    pool.shutdown(wait=False)


def _verify(
    target: str,
    manifest: Path | None,
    key: list[Path],
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
    from lockd.trust import keys
    from lockd.verify import reach_and_observe, verify_target

    chosen = load_policy(policy)
    trusted = [keys.load_public_key(k) for k in key]
    if manifest is None:
        from lockd.client import Client, verify_remote

        client = None if server is None else Client.from_env(server)
        ignore = chosen.filesystem.patterns() if deep else None
        _, observation = (
            early.result()
            if early is not None
            else reach_and_observe(lambda: _open_target(target, python), gpu, ignore, cache=cache)
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
            lambda: _open_target(target, python),
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
        print_report(report, _console())
    raise typer.Exit(0 if report.verified else 1)


@app.command()
def observe(target: TargetArg, python: PythonOpt = None) -> None:
    """Print what a probe sees in TARGET, as JSON (unsigned: what record would sign)."""
    observation = _open_target(target, python).observe()
    sys.stdout.write(observation.model_dump_json(indent=2, exclude_none=True) + "\n")


def _read_manifest(path: Path) -> tuple[list[Subject], Manifest, list[str]]:
    """A manifest from an envelope (signature not checked) or a bare Statement file."""
    from lockd.fileio import read_capped
    from lockd.trust.statement import parse_statement
    from lockd.verify import MAX_ENVELOPE_BYTES, load_envelope

    data = read_capped(path, limit=MAX_ENVELOPE_BYTES, what="manifest")
    if b'"payloadType"' in data:
        envelope = load_envelope(path)
        subjects, manifest = parse_statement(envelope.payload_bytes(), str(path))
        return subjects, manifest, [s.keyid or "(no keyid)" for s in envelope.signatures]
    subjects, manifest = parse_statement(data, str(path))
    return subjects, manifest, []


@app.command()
def show(file: Annotated[Path, typer.Argument(help="a manifest envelope or Statement")]) -> None:
    """Show a manifest for people (the signature is not checked: use verify for that)."""
    from lockd.cli.render import print_manifest

    subjects, manifest, signers = _read_manifest(file)
    print_manifest(subjects, manifest, signers, _console())


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="the first manifest")],
    b: Annotated[Path, typer.Argument(help="the second manifest")],
    json: Annotated[bool, typer.Option("--json", help="print the differences as JSON")] = False,
) -> None:
    """What differs between two recorded environments (distributions, the CUDA stack, the
    driver, GPU tests whose results moved); exit 0 when nothing does, 1 otherwise."""
    from lockd.judgement.diffing import diff_manifests, render_text, report_json

    subjects_a, first, _ = _read_manifest(a)
    subjects_b, second, _ = _read_manifest(b)
    report = diff_manifests(
        first,
        second,
        a_label=str(a),
        b_label=str(b),
        a_subjects=subjects_a,
        b_subjects=subjects_b,
    )
    sys.stdout.write(report_json(report) + "\n" if json else render_text(report))
    raise typer.Exit(0 if report.same else 1)


@app.command()
def compat(
    source: Annotated[
        Path, typer.Argument(help="a manifest (envelope or Statement) or a requirements.txt lock")
    ],
    driver: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--driver", help="an NVIDIA driver version, e.g. 535.104.05"),
    ] = None,
    gpu: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--gpu", help="a GPU model (H100, RTX 4090) or sm_XY; repeat for several"),
    ] = None,
    json: Annotated[bool, typer.Option("--json", help="print the assessment as JSON")] = False,
) -> None:
    """Which GPUs and drivers a torch/CUDA build runs on; with --driver/--gpu, exit 0 when it
    runs there, 1 when not."""
    from lockd.fileio import read_capped
    from lockd.judgement.compat import MAX_SOURCE_BYTES, assess, build_from_bytes, render_text

    data = read_capped(source, limit=MAX_SOURCE_BYTES, what="manifest or lock")
    result = assess(build_from_bytes(data, str(source)), driver=driver, gpus=gpu or [])
    sys.stdout.write(result.to_json() + "\n" if json else render_text(result))
    raise typer.Exit(0 if result.verdict is None or result.verdict.runs else 1)


@app.command()
def lock(
    requirements_in: Annotated[
        Path, typer.Argument(help="the requirements.in to compile", show_default=False)
    ],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="the lock (default: requirements.txt beside the .in)"),
    ] = None,
    python_version: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the target's Python as X.Y (default: this interpreter's)"),
    ] = None,
    platform: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the target's wheel platform tag, e.g. manylinux_2_28_x86_64"),
    ] = None,
    index_url: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="the package index (default: the resolver's default)"),
    ] = None,
    extra_index_url: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="another package index to search (repeat for several)"),
    ] = None,
    resolver: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="uv or pip-tools (default: uv when installed, the faster; pip-tools resolves "
            "only for this interpreter)"
        ),
    ] = None,
) -> None:
    """Compile REQUIREMENTS_IN into a pinned, hashed lock (uv or pip-tools), with the PyTorch
    family held to its torch."""
    from lockd.cli.extras import require_extra

    require_extra("lock", "lock")
    from lockd.lock import LockRequest, compile_lock

    compiled = compile_lock(
        LockRequest(
            requirements_in=requirements_in,
            output=output,
            python_version=python_version,
            platform=platform,
            index_url=index_url,
            extra_index_urls=tuple(extra_index_url or ()),
            resolver=resolver,
        )
    )
    console = _console()
    for line, why in zip(compiled.constraints, compiled.reasons, strict=True):
        console.print(f"added the constraint {line}: {why}", highlight=False)
    console.print(
        f"wrote {compiled.path}: {compiled.pins} pins for CPython {compiled.python_version} "
        f"on {compiled.platform} (resolved by {compiled.resolver})"
    )


@app.command()
def sbom(
    manifest: Annotated[Path, typer.Argument(help="a manifest envelope or Statement")],
    output: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--output", "-o", help="write the SBOM here (default: standard output)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
) -> None:
    """A CycloneDX 1.6 JSON SBOM of a recorded environment (the signature is not checked)."""
    from lockd.fileio import refuse_existing, write_atomic
    from lockd.sbom import sbom_json

    if output is not None:
        refuse_existing(output, force=force)
    subjects, recorded, _ = _read_manifest(manifest)
    document = sbom_json(recorded, subjects)
    if output is None:
        sys.stdout.write(document)
    else:
        write_atomic(output, document.encode("utf-8"), force=force)
        _console(stderr=True).print(f"wrote {output}")


@app.command()
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
) -> None:
    """Run the lockd service (settings from LOCKD_DATABASE_URL, LOCKD_TRUSTED_KEYS,
    LOCKD_POLICIES, LOCKD_ALLOW_ANONYMOUS_READ)."""
    from lockd.cli.extras import require_extra

    require_extra("server", "serve")
    from lockd.server.run import serve as run
    from lockd.server.settings import Settings

    run(
        Settings.from_env(),
        host=host,
        port=port,
        workers=workers,
        migrate=migrate,
        access_log=access_log,
    )


token_app = typer.Typer(help="API tokens of the lockd service.", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
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
    _console(stderr=True).print(f"token {name!r} ({role}); it is shown only this once:")
    sys.stdout.write(token + "\n")


@app.command()
def push(
    envelope: Annotated[Path, typer.Argument(help="a signed manifest (DSSE envelope)")],
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
    """Store a signed manifest in a lockd service (it must verify against a key it trusts)."""
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
    _console().print(f"{envelope}: {state} as {summary['digest']} ({summary['name']})")


audit_app = typer.Typer(help="The lockd service's audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    bundle: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="an audit bundle (lockd audit export) to check offline"),
    ] = None,
    server: ServerOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the verdict as JSON")] = False,
) -> None:
    """Check an audit bundle offline (BUNDLE), or fetch a service's whole audit log and
    re-check its hash chain here (--server); exit 0 when it holds, 1 naming what failed."""
    from dataclasses import asdict

    from lockd.client import Client, check_remote_audit
    from lockd.errors import InputError

    if bundle is not None:
        _verify_bundle(bundle, json)
    if server is None:
        raise InputError("give a bundle file, or --server URL (or set LOCKD_SERVER)")
    verdict = check_remote_audit(Client.from_env(server))
    if json:
        import json as json_module

        sys.stdout.write(json_module.dumps(asdict(verdict), sort_keys=True) + "\n")
    elif verdict.ok:
        _console().print(f"the audit chain holds: {verdict.entries} entries")
    else:
        _console().print(
            f"[bold red]the audit chain is broken[/] at entry {verdict.first_bad} "
            f"({verdict.entries} entries read): {verdict.reason}"
        )
    raise typer.Exit(0 if verdict.ok else 1)


def _verify_bundle(path: Path, json: bool) -> None:
    from lockd.bundle import render_verdict, verify_bundle

    verdict = verify_bundle(path)
    if json:
        import json as json_module

        body = {
            "ok": verdict.ok,
            "digest": verdict.digest,
            "keyids": verdict.keyids,
            "checks": [{"id": c.id, "ok": c.ok, "message": c.message} for c in verdict.checks],
        }
        sys.stdout.write(json_module.dumps(body, sort_keys=True) + "\n")
    else:
        sys.stdout.write(render_verdict(verdict, str(path)))
    raise typer.Exit(0 if verdict.ok else 1)


@audit_app.command("export")
def audit_export(
    digest: Annotated[str, typer.Argument(help="the manifest's digest, sha256:<hex>")],
    output: Annotated[Path, typer.Option("--output", "-o", help="the bundle to write (.tar.gz)")],
    server: ServerOpt = None,
    key: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="a public key to bundle instead of fetching it (repeat for several)"),
    ] = None,
    force: Annotated[bool, typer.Option(help="replace an existing output file")] = False,
) -> None:
    """Write a self-contained audit bundle of a stored manifest: the envelope, its public
    key(s), the lock, an SBOM, its verification reports and the audit entries covering them;
    check it anywhere with `lockd audit verify BUNDLE`."""
    import re

    from lockd.bundle import export_bundle
    from lockd.client import Client
    from lockd.errors import InputError
    from lockd.trust import keys

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise InputError(f"{digest!r}: give the manifest's digest as sha256:<64 hex digits>")
    extra = [keys.load_public_key(k) for k in key or []]
    done = export_bundle(Client.from_env(server), digest, output, extra_keys=extra, force=force)
    _console().print(
        f"wrote {done.path}: {done.files} files, {done.reports} report(s), signed by keyid "
        f"{', '.join(done.keyids)}; check it with: lockd audit verify {done.path}"
    )


@app.command()
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


@app.command()
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
    _console().print(
        f"{envelope}: attached to {summary['image']} as {summary['envelope']} (referrer "
        f"{summary['referrer']}, tags {', '.join(summary['tags'])})"
    )


@app.command()
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
        _console(stderr=True).print(f"{image}: no lockd attestations in its registry")
    raise typer.Exit(0 if found else 1)


@app.command()
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
        _console().print(
            f"{image}: allowed under {policy} (manifest {result.manifest}, signed by "
            f"{', '.join(k[:16] for k in result.keyids)})"
        )
    else:
        from rich.markup import escape

        _console().print(f"[bold red]{escape(image)}: not allowed[/] under {escape(policy)}")
        for reason in result.reasons:
            _console().print(f"  - {escape(reason)}")
    raise typer.Exit(0 if result.allowed else 1)


@app.command()
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
) -> None:
    """Keep every running container of this host verified against the manifest the service
    (token: LOCKD_TOKEN) holds for its image, and report to it (docs/watch.md). With --once:
    exit 0 when every container passes, 1 otherwise."""
    import logging
    import socket

    from lockd.errors import InputError
    from lockd.watch import options as watch_options
    from lockd.watch.run import run_once
    from lockd.watch.run import watch as run_watch

    if server is None:
        raise InputError("give --server URL (or set LOCKD_SERVER)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lockd watch: %(message)s")
    options = watch_options.WatchOptions(
        server=server,
        host=watch_options.check_host(host if host is not None else socket.gethostname()),
        spool=spool,
        interval_s=watch_options.parse_interval(interval),
        selectors=watch_options.parse_selectors(label_selector or []),
        policy=policy,
        keys=tuple(key or ()),
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

        _console(stderr=True).print(
            f"[yellow]warning[/]: the report waits in {escape(str(spool))} (delivered by the "
            f"next run): {escape(str(why))}"
        )
    raise typer.Exit(0 if all(v == "pass" for v in summary.containers.values()) else 1)


def main(argv: list[str] | None = None) -> None:
    """Entry point: LockdError becomes its message and exit code; anything else is a bug.

    Click runs in standalone mode, so usage errors exit 2 and typer.Exit codes pass through.
    """
    from lockd.errors import LockdError

    # pydantic scans every installed distribution for plugins at first use; lockd uses none,
    # and `lockd verify` start-up time matters (deploy pipelines run it).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    args = [a for a in args if a not in ("--verbose", "-v")]
    command = typer.main.get_command(app)
    if isinstance(command, typer.core.TyperGroup):
        _start_early(command, args)
    try:
        command.main(args=args, prog_name="lockd", standalone_mode=True)
    except LockdError as e:
        if verbose:
            raise
        from rich.markup import escape

        _console(stderr=True).print(f"[bold red]lockd: error:[/] {escape(e.diagnostics())}")
        sys.exit(e.exit_code)
