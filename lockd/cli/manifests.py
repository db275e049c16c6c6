"""Commands on manifests and locks: show, diff, compat, sbom, lock."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from lockd.cli.shared import console, read_manifest


def show(
    file: Annotated[Path, typer.Argument(help="a manifest envelope, Sigstore bundle or Statement")],
) -> None:
    """Show a manifest for people (the signature is not checked: use verify for that)."""
    from lockd.cli.render import print_manifest

    subjects, manifest, signers = read_manifest(file)
    print_manifest(subjects, manifest, signers, console())


def diff(
    a: Annotated[Path, typer.Argument(help="the first manifest")],
    b: Annotated[Path, typer.Argument(help="the second manifest")],
    json: Annotated[bool, typer.Option("--json", help="print the differences as JSON")] = False,
) -> None:
    """What differs between two recorded environments (distributions, the CUDA stack, the
    driver, GPU tests whose results moved); exit 0 when nothing does, 1 otherwise."""
    from lockd.judgement.diffing import diff_manifests, render_text, report_json

    subjects_a, first, _ = read_manifest(a)
    subjects_b, second, _ = read_manifest(b)
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
    screen = console()
    for line, why in zip(compiled.constraints, compiled.reasons, strict=True):
        screen.print(f"added the constraint {line}: {why}", highlight=False)
    screen.print(
        f"wrote {compiled.path}: {compiled.pins} pins for CPython {compiled.python_version} "
        f"on {compiled.platform} (resolved by {compiled.resolver})"
    )


def schema() -> None:
    """The JSON Schema (draft 2020-12) of the manifest predicate lockd signs."""
    from lockd.trust.statement import predicate_schema

    sys.stdout.write(predicate_schema())


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
    subjects, recorded, _ = read_manifest(manifest)
    document = sbom_json(recorded, subjects)
    if output is None:
        sys.stdout.write(document)
    else:
        write_atomic(output, document.encode("utf-8"), force=force)
        console(stderr=True).print(f"wrote {output}")
