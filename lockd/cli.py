"""The lockd command line: one thin function per command (parse, call the core, render).

Exit codes: 0 verified, 1 not verified, 2 usage error or unreadable input,
3 the target could not be inspected.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from lockd.model import Manifest
    from lockd.statement import Subject
    from lockd.targets.base import Target

app = typer.Typer(
    help="Record Python/CUDA environments into signed manifests and verify targets against them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TargetArg = Annotated[
    str,
    typer.Argument(
        help="a container name or ID, else an image reference; "
        "`container:X`, `image:X` and `local` force the kind",
        show_default=False,
    ),
]
PythonOpt = Annotated[
    Optional[str],  # noqa: UP045 (typer reads the annotation at run time on Python 3.10)
    typer.Option("--python", help="the interpreter to probe (default: python3, then python)"),
]


def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _open_target(ref: str, python: str | None) -> Target:
    from lockd.targets.select import open_target

    return open_target(ref, python=python)


@app.command()
def keygen(
    output_key_prefix: Annotated[
        str, typer.Option("--output-key-prefix", help="writes PREFIX.key and PREFIX.pub")
    ] = "lockd",
    force: Annotated[bool, typer.Option(help="replace existing key files")] = False,
) -> None:
    """Make an ECDSA P-256 key pair in cosign's formats (encrypted PREFIX.key, PREFIX.pub)."""
    from lockd import keys

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
) -> None:
    """Observe TARGET and write its signed manifest (a DSSE envelope)."""
    from lockd import keys
    from lockd.fileio import refuse_existing, write_atomic
    from lockd.record import bind_lock, build_manifest, load_lock, sign_manifest

    out = output or Path(_safe_name(target) + ".dsse.json")
    refuse_existing(out, force=force)
    locked = None if lock is None else load_lock(lock, allow_unhashed=allow_unhashed)
    private = keys.load_private_key(key, keys.read_password(purpose=str(key)))
    observation = _open_target(target, python).observe()
    bound = None if locked is None else bind_lock(observation, locked)
    recorded = sign_manifest(build_manifest(observation, lock=bound), private)
    write_atomic(out, recorded.envelope.to_json(), force=force)
    console = _console()
    for s in recorded.subjects:
        console.print(f"subject {s.name} sha256:{s.digest['sha256']}")
    if observation.probe is None:
        console.print(f"[yellow]warning[/]: no probe report: {observation.probe_error}")
    if bound is not None:
        console.print(f"lock {lock}: the target agrees with its {len(bound.pins)} pins")
    console.print(f"wrote {out} (signed by keyid {recorded.keyid})")


def _safe_name(ref: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in ref)
    return cleaned.strip("._") or "manifest"


@app.command()
def verify(
    target: TargetArg,
    manifest: Annotated[Path, typer.Option(help="the signed manifest (DSSE envelope)")],
    key: Annotated[list[Path], typer.Option(help="a trusted public key (repeat for several)")],
    policy: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="a policy file or the name of a shipped policy (default: strict)"),
    ] = None,
    python: PythonOpt = None,
    json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Verify TARGET against a signed manifest; exit 0 when verified, 1 when not."""
    from lockd import keys
    from lockd.policy import load_policy
    from lockd.render import print_report, report_json
    from lockd.verify import verify_target

    chosen = load_policy(policy)
    trusted = [keys.load_public_key(k) for k in key]
    report = verify_target(manifest, trusted, lambda: _open_target(target, python), chosen)
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
    from lockd.statement import parse_statement
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
    from lockd.render import print_manifest

    subjects, manifest, signers = _read_manifest(file)
    print_manifest(subjects, manifest, signers, _console())


@app.command()
def diff(
    a: Annotated[Path, typer.Argument(help="the first manifest")],
    b: Annotated[Path, typer.Argument(help="the second manifest")],
    json: Annotated[bool, typer.Option("--json", help="print the differences as JSON")] = False,
) -> None:
    """What differs between two recorded environments; exit 0 when nothing does, 1 otherwise."""
    from lockd.compare import compare
    from lockd.policy import default_policy
    from lockd.render import print_checks

    _, first, _ = _read_manifest(a)
    _, second, _ = _read_manifest(b)
    checks = compare(first, second.observation, default_policy())
    differing = [c for c in checks if c.status == "fail"]
    if json:
        body = "[" + ",".join(c.model_dump_json(exclude_none=True) for c in checks) + "]"
        sys.stdout.write(body + "\n")
    else:
        console = _console()
        print_checks(checks, f"lockd diff {a} -> {b}", console)
        console.print("no differences" if not differing else f"{len(differing)} aspect(s) differ")
    raise typer.Exit(1 if differing else 0)


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
    from lockd.compat import assess, load_build, render_text

    result = assess(load_build(source), driver=driver, gpus=gpu or [])
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
) -> None:
    """Compile REQUIREMENTS_IN into a pinned, hashed lock (pip-tools; uv for another target)."""
    from lockd.lockfile import LockRequest, compile_lock

    compiled = compile_lock(
        LockRequest(
            requirements_in=requirements_in,
            output=output,
            python_version=python_version,
            platform=platform,
            index_url=index_url,
            extra_index_urls=tuple(extra_index_url or ()),
        )
    )
    _console().print(
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


def main(argv: list[str] | None = None) -> None:
    """Entry point: LockdError becomes its message and exit code; anything else is a bug.

    Click runs in standalone mode, so usage errors exit 2 and typer.Exit codes pass through.
    """
    from lockd.errors import LockdError

    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    args = [a for a in args if a not in ("--verbose", "-v")]
    command = typer.main.get_command(app)
    try:
        command.main(args=args, prog_name="lockd", standalone_mode=True)
    except LockdError as e:
        if verbose:
            raise
        _console(stderr=True).print(f"[bold red]lockd: error:[/] {e.diagnostics()}", markup=True)
        sys.exit(e.exit_code)
