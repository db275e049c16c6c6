"""Pages for people (server-rendered Jinja2, no JavaScript): the manifest list with search,
a citable page per manifest at ``/m/{digest}``, and ``/diff/{a}/{b}``. Also ``/keys/{keyid}``,
the public keys the service trusts (what ``lockd audit export`` bundles).

Pages need the reader role like the API: a browser sends no token, so a public instance sets
``LOCKD_ALLOW_ANONYMOUS_READ=1``. The routes are plain functions: FastAPI runs them in its
thread pool, so their database reads never block the event loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from lockd.errors import InputError, LockdError
from lockd.server.deps import ReaderDep, ServiceDep
from lockd.server.service import NotFoundError, Service, parse_labels

if TYPE_CHECKING:
    from jinja2 import Environment

    from lockd.judgement.diffing import DiffReport
    from lockd.model.manifest import Manifest
    from lockd.store.repository import ManifestRecord, VerificationRecord

router = APIRouter(include_in_schema=False)

DIGEST = r"^sha256:[0-9a-f]{64}$"
DigestPath = Annotated[str, Path(pattern=DIGEST)]
TEMPLATES = FsPath(__file__).parent / "templates"
SEARCH_SCAN = 1000  # manifests read to match a package search


@lru_cache(maxsize=1)
def _environment() -> Environment:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["short"] = short
    return environment


def short(value: str | None, n: int = 12) -> str:
    """A digest's first hex digits (what the pages show; the full value is in the title)."""
    return "" if value is None else value.removeprefix("sha256:")[:n]


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _environment().get_template(template).render(**context)
    return HTMLResponse(html, status_code=status)


def _manifest_of(record: ManifestRecord) -> Manifest:
    from lockd.trust.signed import parse_signed
    from lockd.trust.statement import parse_statement

    source = f"stored manifest {record.digest}"
    envelope = parse_signed(record.envelope.encode("utf-8"), source)  # or a Sigstore bundle
    _, manifest = parse_statement(envelope.payload_bytes(), source)
    return manifest


# --- the list ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ManifestRow:
    record: ManifestRecord
    torch: str | None
    cuda: str | None
    packages: int
    matched: str | None  # the package that matched a package search


def _row(record: ManifestRecord, package: str | None) -> ManifestRow | None:
    from lockd.model.base import normalise_name

    manifest = _manifest_of(record)
    probe = manifest.observation.probe
    dists = probe.distributions if probe else []
    matched = None
    if package:
        wanted = normalise_name(package.split("==")[0].strip())
        version = package.split("==")[1].strip() if "==" in package else None
        hit = next(
            (d for d in dists if d.name == wanted and (version is None or d.version == version)),
            None,
        )
        if hit is None:
            return None
        matched = f"{hit.name}=={hit.version}"
    torch = probe.torch if probe else None
    return ManifestRow(
        record,
        torch.version if torch else None,
        torch.cuda if torch else None,
        len(dists),
        matched,
    )


@router.get("/", response_class=HTMLResponse)
def manifest_list(
    service: ServiceDep,
    _: ReaderDep,
    name: Annotated[str, Query(max_length=256)] = "",
    label: Annotated[str, Query(max_length=320)] = "",
    digest: Annotated[str, Query(max_length=80)] = "",
    package: Annotated[str, Query(max_length=256)] = "",
) -> HTMLResponse:
    """Stored manifests, newest first; search by name, label (key or key=value), digest (of
    the manifest or of an image it names) and package (name or name==version)."""
    error = None
    rows: list[ManifestRow] = []
    try:
        rows = _search(service, name.strip(), label.strip(), digest.strip(), package.strip())
    except LockdError as e:  # a bad search term: said on the page
        error = e.diagnostics()
    return _page(
        "list.html",
        status=400 if error else 200,
        rows=rows,
        query={"name": name, "label": label, "digest": digest, "package": package},
        error=error,
    )


def _search(
    service: Service, name: str, label: str, digest: str, package: str
) -> list[ManifestRow]:
    import re

    store = service.store
    labels = parse_labels([label], need_value=False) if label else {}
    if digest and not re.fullmatch(r"(sha256:)?[0-9a-f]{64}", digest):
        raise InputError(f"digest {digest!r}: give sha256:<64 hex digits>")
    full = digest if not digest or digest.startswith("sha256:") else "sha256:" + digest
    records: list[ManifestRecord] = []
    if full:
        own = store.get_manifest(full)
        records = [own] if own is not None else store.find_manifests(subject=full, limit=100)
        if name:
            records = [r for r in records if r.name == name]
        if labels:
            records = [
                r
                for r in records
                if all(k in r.labels and v in (None, r.labels[k]) for k, v in labels.items())
            ]
    else:
        limit = SEARCH_SCAN if package else 100
        records = store.find_manifests(name=name or None, labels=labels, limit=limit)
    rows = [row for r in records if (row := _row(r, package or None)) is not None]
    return rows[:100]


# --- one manifest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    css: str  # ok, warn, bad
    text: str


def compat_matrix(manifest: Manifest, recorded_driver: str | None) -> dict[str, Any]:
    """The compatibility matrix (lockd.judgement.compat): known GPUs by driver floors, each cell
    whether the recorded torch build runs there; ``error`` when the manifest has no CUDA build."""
    from lockd.errors import LockdError
    from lockd.judgement.compat import assess, build_from_manifest

    try:
        result = assess(build_from_manifest(manifest, "the manifest"))
    except LockdError as e:
        return {"error": e.diagnostics()}
    floors = result.driver
    columns: list[tuple[str, str]] = []
    if floors.minor_compat_min:
        columns.append(("below", f"driver < {floors.minor_compat_min}"))
        columns.append(("minor", f">= {floors.minor_compat_min} (minor-version compatibility)"))
    if floors.toolkit_min:
        columns.append(("toolkit", f">= {floors.toolkit_min} (CUDA {result.cuda} toolkit)"))
    rows = []
    for gpu in result.gpus:
        cells = []
        for kind, _ in columns:
            if not gpu.runs:
                cells.append(Cell("bad", gpu.via))
            elif kind == "below":
                cells.append(Cell("bad", "driver too old"))
            elif kind == "minor" and gpu.via.startswith("PTX") and floors.toolkit_min:
                cells.append(Cell("warn", f"no: {gpu.via} needs >= {floors.toolkit_min}"))
            elif kind == "minor":
                cells.append(Cell("warn", f"runs ({gpu.via}); newer features unavailable"))
            else:
                cells.append(Cell("ok", f"runs ({gpu.via})"))
        rows.append({"gpu": gpu.name, "cc": gpu.compute_capability, "cells": cells})
    return {
        "error": None,
        "torch": result.torch,
        "cuda": result.cuda,
        "columns": [label for _, label in columns],
        "rows": rows,
        "notes": result.notes,
        "driver": recorded_driver,
    }


def _entries_by_body(service: Service) -> dict[str, Any]:
    """Audit entries by body digest (the chain is read in pages of 1000)."""
    found: dict[str, Any] = {}
    after = 0
    while True:
        page = service.store.audit_entries(after=after, limit=1000)
        for entry in page:
            if entry.body_digest is not None:
                found.setdefault(f"{entry.action} {entry.body_digest}", entry)
        if len(page) < 1000:
            return found
        after = page[-1].seq


def reports_for(service: Service, record: ManifestRecord) -> list[VerificationRecord]:
    """The stored reports made against this manifest (by the service, or by clients that
    named it), newest first."""
    from lockd.model.report import Report

    seen: dict[int, VerificationRecord] = {}
    for _, subject in record.subjects:
        for v in service.store.list_verifications(subject=subject, limit=1000):
            if v.manifest_digest == record.digest:
                seen[v.id] = v
            elif v.manifest_digest is None:
                path = Report.model_validate_json(v.report).manifest.path or ""
                if path.endswith("/" + record.digest):
                    seen[v.id] = v
    return sorted(seen.values(), key=lambda v: v.id, reverse=True)


def _history(service: Service, record: ManifestRecord) -> tuple[Any, list[dict[str, Any]]]:
    entries = _entries_by_body(service)
    body = "sha256:" + hashlib.sha256(record.envelope.encode("utf-8")).hexdigest()
    own = entries.get(f"manifest.create {body}")
    history = []
    for v in reports_for(service, record):
        digest = "sha256:" + hashlib.sha256(v.report.encode("utf-8")).hexdigest()
        history.append({"v": v, "entry": entries.get(f"verification.create {digest}")})
    return own, history


@router.get("/m/{digest}", response_class=HTMLResponse)
def manifest_page(
    digest: DigestPath, request: Request, service: ServiceDep, _: ReaderDep
) -> HTMLResponse:
    """Everything a manifest records, at a URL that stays: ``/m/sha256:<hex>``."""
    from lockd.judgement.gpucompare import describe
    from lockd.trust.signed import parse_signed
    from lockd.trust.statement import parse_statement

    record = service.store.get_manifest(digest)
    if record is None:
        return _page("missing.html", status=404, what=f"no manifest {digest} is stored")
    envelope = parse_signed(record.envelope.encode("utf-8"), f"stored manifest {digest}")
    subjects, manifest = parse_statement(envelope.payload_bytes(), f"stored manifest {digest}")
    probe = manifest.observation.probe
    driver = probe.driver.version if probe and probe.driver else None
    own, history = _history(service, record)
    suites = [
        {
            "model": describe(s),
            "result": s,
            "ok": sum(t.status == "ok" for t in s.tests),
        }
        for s in (manifest.gpu_suites or [])
    ]
    return _page(
        "manifest.html",
        record=record,
        subjects=subjects,
        manifest=manifest,
        probe=probe,
        host=manifest.observation.host,
        suites=suites,
        compat=compat_matrix(manifest, driver),
        audit_entry=own,
        history=history,
        url=str(request.url),
    )


# --- diff -----------------------------------------------------------------------------------


def _diff(service: Service, a: str, b: str) -> DiffReport:
    from lockd.judgement.diffing import diff_manifests

    first, second = service.trusted_manifest(a), service.trusted_manifest(b)
    return diff_manifests(
        first.manifest,
        second.manifest,
        a_label=a,
        b_label=b,
        a_subjects=first.subjects,
        b_subjects=second.subjects,
    )


def _classes(text: str) -> Iterable[tuple[str, str]]:
    marks = {"+": "added", "-": "removed", "~": "changed", "!": "modified"}
    for line in text.splitlines():
        stripped = line.lstrip()
        css = marks.get(stripped[:1], "") if line.startswith("  ") and stripped[1:2] == " " else ""
        if not line.startswith(" ") and line and not line.startswith(("A  ", "B  ")):
            css = "heading"
        yield css, line


@router.get("/diff/{a}/{b}", response_class=HTMLResponse)
def diff_page(a: DigestPath, b: DigestPath, service: ServiceDep, _: ReaderDep) -> HTMLResponse:
    """What differs between two stored manifests: the report ``lockd diff`` prints."""
    from lockd.judgement.diffing import render_text

    missing = [d for d in (a, b) if service.store.get_manifest(d) is None]
    if missing:
        return _page("missing.html", status=404, what=f"no manifest {missing[0]} is stored")
    report = _diff(service, a, b)
    return _page(
        "diff.html",
        a=a,
        b=b,
        report=report,
        lines=list(_classes(render_text(report))),
    )


# --- keys -----------------------------------------------------------------------------------


@router.get("/keys/{keyid}")
def public_key(
    keyid: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")], service: ServiceDep, _: ReaderDep
) -> JSONResponse:
    """A public key this service trusts, by keyid: ``{"keyid", "pem"}``."""
    from lockd.trust import keys

    for key in service.trusted:
        if keys.keyid(key) == keyid:
            pem = keys.public_pem(key).decode("ascii")
            return JSONResponse({"keyid": keyid, "pem": pem})
    raise NotFoundError(f"this service trusts no key with keyid {keyid}")
