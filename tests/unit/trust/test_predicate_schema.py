"""The published predicate schema (lockd/schemas/predicate-v3.json, JSON Schema draft 2020-12,
printed by ``lockd schema``): it is the models' (scripts/predicate-schema --check), every
manifest in tests/assets and every predicate lockd's tests build validate against it with
``jsonschema`` (and every envelope a test's ``record`` writes: tests/conftest.py), and hostile
predicates are refused by it and by lockd's reader alike (#19)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from observations import host, manifest, observation, probe
from predicates import SCHEMA, check_recorded, predicate_of, schema_errors, statement_of
from pydantic import BaseModel
from reference_manifests import manifest_a, manifest_b

from lockd.errors import ManifestError
from lockd.model.environment import FamilyImport, FamilyImports, PipArchive, PipReport
from lockd.model.host import FileChange, ForeignRoot, Integrity, KernelMount, KernelView, Mount
from lockd.model.manifest import PREDICATE_TYPE, Manifest
from lockd.model.report import Finding
from lockd.model.workload import MappedFile, SkippedProcess, Special, Workload, WorkloadProcess
from lockd.trust.statement import make_statement, parse_statement

REPO_ROOT = Path(__file__).resolve().parents[3]
GENERATOR = REPO_ROOT / "scripts" / "predicate-schema"
ASSETS = REPO_ROOT / "tests" / "assets"
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


def everything() -> Manifest:
    """A v3 manifest with every part filled in that the reference manifests leave out:
    content-carrying changes, the kernel's view, --deep's integrity findings and import test,
    pip's report, this run's GPU suite and the workload (#15, #17)."""
    work = Workload(
        files=[
            MappedFile(
                path="/usr/lib/x86_64-linux-gnu/libcudnn.so.9", sha256="a" * 64, size=10,
                executable=True, device="fd:1", inode=7, soname="libcudnn.so.9",
                library="libcudnn", library_role="cuda", library_version="9.1.0",
            ),
            MappedFile(path="/memfd:jit", kind="memfd", deleted=True, unread="not readable"),
        ],
        processes=[
            WorkloadProcess(
                pid=1, started=5, uid=0, executable="/usr/bin/python3.11",
                executable_sha256="b" * 64, command=["python3", "train.py"],
                group="/usr/bin/python3.11 train.py", env={"LD_PRELOAD": ""}, files=[0, 1],
                specials=[Special(kind="device", name="/dev/nvidia0", count=2)], mappings=40,
                origin="init",
            )
        ],
        skipped=[SkippedProcess(pid=9, reason="vanished", message="exited while read")],
        hashed=1, bytes=10,
    )  # fmt: skip
    recorded = manifest_a()
    seen = observation(
        report=probe(
            pip_report=PipReport(
                path="/etc/lockd/pip-report.json",
                archives=[PipArchive(name="six", version="1.16.0", sha256="d" * 64)],
            ),
        ),
        host_evidence=host(
            mounts=[Mount(destination="/data", source="/srv/data", type="bind", rw=False)],
            changes=[
                FileChange(
                    path="/etc/ld.so.cache", kind="changed", type="file", mode=0o644, uid=0,
                    gid=0, size=3, sha256="c" * 64, cache_dirs=["/usr/lib"],
                ),
                FileChange(path="/usr/lib/l.so", kind="added", type="symlink", target="l.so.1"),
                FileChange(path="/opt/gone", kind="deleted"),
            ],
            changes_content=True,
            changes_skipped=["/tmp"],
            kernel=KernelView(
                processes=2, namespaces=1,
                mounts=[KernelMount(mount_point="/", fstype="overlay", source="overlay", root="/")],
                foreign_roots=[ForeignRoot(pid=3, command="sh", root="/x", why="chroot")],
            ),
        ),
        integrity=Integrity(
            source="overlay", evidence="host", distributions=2, files=20, bytes=400,
            findings=[Finding(kind="modified", name="six", path="six.py", message="changed")],
        ),
        family_imports=FamilyImports(
            python="/opt/venv/bin/python3",
            results=[FamilyImport(name="torchvision", version="0.21.0", module="torchvision",
                                  op="torchvision.ops.nms", ok=True)],
        ),
        gpu_suite=recorded.gpu_suites[0],
        workload=work,
    )  # fmt: skip
    return recorded.model_copy(update={"observation": seen})


def predicate(m: Manifest) -> dict[str, Any]:
    written: dict[str, Any] = json.loads(make_statement(m))["predicate"]
    return written


def test_the_committed_schema_is_the_models_and_a_stale_one_is_caught(tmp_path: Path) -> None:
    def check(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, GENERATOR, "--check", "--folder", folder],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip

    assert SCHEMA.name == f"predicate-{PREDICATE_TYPE.rsplit('/', 1)[-1]}.json"
    current = check(SCHEMA.parent)
    assert current.returncode == 0, current.stderr
    stale = json.loads(SCHEMA.read_text())
    del stale["$defs"]["Workload"]["properties"]["bytes"]
    (tmp_path / SCHEMA.name).write_text(json.dumps(stale, indent=2, sort_keys=True) + "\n")
    refused = check(tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"{tmp_path / SCHEMA.name}: differs from the models")
    (tmp_path / SCHEMA.name).unlink()
    missing = check(tmp_path)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"{tmp_path / SCHEMA.name}: missing; run scripts/predicate-schema\n",
    )


def test_the_schema_names_its_dialect_and_predicate_type() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "https://lockd.dev/schemas/predicate-v3.json"
    assert PREDICATE_TYPE in schema["description"]
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["lockd_version", "recorded_at", "observation"]


def test_lockd_schema_prints_the_shipped_schema(lockd: Lockd) -> None:
    printed = lockd("schema")
    assert (printed.returncode, printed.stdout, printed.stderr) == (0, SCHEMA.read_text(), "")
    extra = lockd("schema", "v2")
    assert extra.returncode == 2
    assert "Got unexpected extra argument(s) (v2)" in extra.stderr


def test_every_manifest_in_the_assets_validates() -> None:
    envelopes = [
        path
        for path in sorted(ASSETS.rglob("*.json"))
        if {"payload", "payloadType"} <= json.loads(path.read_bytes()).keys()
    ]
    assert [p.relative_to(ASSETS).as_posix() for p in envelopes] == [
        "manifests/h200-torch-2.11-gpu.dsse.json"
    ]  # a new envelope asset is validated here: add it to this list
    for path in envelopes:
        assert schema_errors(predicate_of(path)) == [], path


def _models(value: Any) -> set[str]:
    """The names of the models in a parsed value, at any depth."""
    if isinstance(value, BaseModel):
        return {type(value).__name__}.union(*(_models(v) for _, v in value))
    if isinstance(value, (list, tuple)):
        return set().union(*(_models(v) for v in value))
    if isinstance(value, dict):
        return set().union(*(_models(v) for v in value.values()))
    return set()


def test_the_validated_predicates_exercise_every_definition_of_the_schema() -> None:
    """everything() and the H200 manifest of tests/assets hold each model the schema defines,
    so each definition is checked against a real predicate by the tests here."""
    h200 = Manifest.model_validate(
        predicate_of(ASSETS / "manifests" / "h200-torch-2.11-gpu.dsse.json")
    )
    defined = set(json.loads(SCHEMA.read_text())["$defs"]) | {"Manifest"}
    assert _models(everything()) | _models(h200) == defined


@pytest.mark.parametrize(
    "build", [manifest_a, manifest_b, manifest, everything], ids=lambda b: b.__name__
)
def test_what_lockd_writes_validates(build: Any) -> None:
    assert schema_errors(predicate(build())) == []


def test_a_test_record_whose_envelope_does_not_validate_fails(tmp_path: Path) -> None:
    """The check every ``lockd record`` of the tests goes through (tests/conftest.py) fails on
    an envelope outside the schema, naming it."""
    statement = json.loads(make_statement(manifest()))
    statement["predicate"]["observation"]["host"]["image_id"] = "sha256:" + "A" * 64
    from base64 import b64encode

    envelope = {"payloadType": "application/vnd.in-toto+json", "signatures": []}
    envelope["payload"] = b64encode(json.dumps(statement).encode()).decode()
    out = tmp_path / "bad.dsse.json"
    out.write_text(json.dumps(envelope))
    assert statement_of(envelope) == statement
    check_recorded(["record", "local", "--key", "k.key"], None, 1, "")  # failed: not read
    with pytest.raises(AssertionError, match=r"bad\.dsse\.json: against predicate-v3\.json: "):
        check_recorded(["record", "local", "-o", str(out)], None, 0, "")
    said = f"wrote {out.name} (signed by keyid 1234)\n"
    with pytest.raises(AssertionError, match=r"\$\.observation\.host\.image_id: "):
        check_recorded(["record", "local"], tmp_path, 0, said)
    shutil.copy(out, tmp_path / "bundle.json")
    (tmp_path / "bundle.json").write_text(json.dumps({"dsseEnvelope": envelope}))
    with pytest.raises(AssertionError, match=r"bundle\.json: against"):
        check_recorded(["record", "local", "--output", "bundle.json"], tmp_path, 0, "")


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value


_DELETE = object()
HOSTILE = [
    # (what, where, value, the schema's error: path and keyword)
    ("image id in upper case", "observation.host.image_id", "sha256:" + "AB" * 32, "pattern"),
    ("image id without its algorithm", "observation.host.image_id", "ab" * 32, "pattern"),
    ("lock digest with a prefix", "lock.sha256", "sha256:" + "9f" * 32, "pattern"),
    ("short RECORD hash", "observation.probe.distributions.0.record_sha256", "abc", "pattern"),
    ("change digest too long", "observation.host.changes.0.sha256", "c" * 65, "pattern"),
    ("no recorded_at", "recorded_at", _DELETE, "required"),
    ("no target", "observation.target", _DELETE, "required"),
    ("a workload process without pid", "observation.workload.processes.0.pid", _DELETE, "required"),
    ("unknown key at the top", "signed_by", "someone", "additionalProperties"),
    ("unknown key in the workload", "observation.workload.trusted", True, "additionalProperties"),
    ("unknown target kind", "observation.target.kind", "vm", "enum"),
    ("negative size", "observation.workload.files.0.size", -1, "minimum"),
    ("mode past 07777", "observation.host.changes.0.mode", 0o10000, "maximum"),
    ("path too long", "observation.host.changes.0.path", "/" + "a" * 4096, "maxLength"),
    ("too many suites", "gpu_suites", [{}] * 65, "maxItems"),
    ("pid 0", "observation.workload.processes.0.pid", 0, "minimum"),
    ("a string for a number", "observation.workload.bytes", "10", "type"),
    ("probe version 2", "observation.probe.probe_version", 2, "const"),
]


@pytest.mark.parametrize(("where", "value", "keyword"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE])  # fmt: skip
def test_a_hostile_predicate_is_refused_by_the_schema(where: str, value: Any, keyword: str) -> None:
    data = copy.deepcopy(predicate(everything()))
    _set(data, where, value)
    errors = schema_errors(data)
    assert errors, where
    first = errors[0]
    if keyword in ("additionalProperties", "required"):  # reported at the object holding it
        where = where.rsplit(".", 1)[0] if "." in where else ""
    expected = "$" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in where.split(".") if p)
    assert (first.json_path, first.validator) == (expected, keyword)


@pytest.mark.parametrize(
    ("where", "value"),
    [h[1:3] for h in HOSTILE if h[0] != "a string for a number"],  # lockd's reader converts it
    ids=[h[0] for h in HOSTILE if h[0] != "a string for a number"],
)
def test_lockd_refuses_what_the_schema_refuses(where: str, value: Any) -> None:
    statement = json.loads(make_statement(everything()))
    _set(statement["predicate"], where, value)
    with pytest.raises(ManifestError, match=r"^hostile\.json: malformed manifest at "):
        parse_statement(json.dumps(statement).encode(), "hostile.json")


def test_the_schema_is_stricter_than_lockd_on_json_types() -> None:
    """lockd's reader (pydantic, lax) converts a numeric string where a number belongs; the
    schema refuses it. lockd writes the exact types, so what it writes validates either way."""
    statement = json.loads(make_statement(everything()))
    statement["predicate"]["observation"]["workload"]["bytes"] = "10"
    _, read = parse_statement(json.dumps(statement).encode(), "lax.json")
    assert read.observation.workload is not None
    assert read.observation.workload.bytes == 10
    assert [e.validator for e in schema_errors(statement["predicate"])] == ["type"]
