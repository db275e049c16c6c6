"""lockd sbom: CycloneDX 1.6 JSON that the library's strict validator accepts."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from observations import dist, host, manifest, observation, probe

from lockd.model.environment import (
    LibraryOwner,
    LoadedLibraries,
    MappedLibrary,
    PipArchive,
    PipReport,
    TorchInfo,
)
from lockd.model.manifest import LockInfo, LockPin, Manifest
from lockd.sbom import sbom_json, validation_error
from lockd.trust.statement import make_statement, parse_statement, subjects_for

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64
REPO_DIGEST = "registry.invalid/team/app@sha256:" + "d" * 64
H200 = (
    Path(__file__).resolve().parents[2] / "assets" / "manifests" / "h200-torch-2.11-gpu.dsse.json"
)


def rich_manifest() -> Manifest:
    report = probe(
        distributions=[
            dist("idna", "3.7"),
            dist("six", "1.16.0"),
            dist("torch", "2.6.0"),
            dist("nvidia-cudnn-cu12", "9.1.0.70"),
        ],
        torch=TorchInfo(
            version="2.6.0+cu124", cuda="12.4", cudnn="9.1.0", nccl="2.21.5", arch_flags="sm_90"
        ),
        pip_report=PipReport(
            path="/etc/lockd/pip-report.json",
            archives=[PipArchive(name="six", version="1.16.0", sha256=H3)],
        ),
    )
    lock = LockInfo(
        path="requirements.txt",
        sha256="e" * 64,
        pins=[
            LockPin(name="idna", version="3.7", hashes=[H1, H2]),
            LockPin(name="six", version="1.16.0", hashes=[H2, H3]),
        ],
    )
    seen = observation(host_evidence=host(repo_digests=[REPO_DIGEST]), report=report)
    return manifest(seen).model_copy(update={"lock": lock})


def document(m: Manifest) -> dict[str, Any]:
    text = sbom_json(m, subjects_for(m.observation))
    assert validation_error(text) is None
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def components(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["bom-ref"]: c for c in doc["components"]}


def hashes(component: dict[str, Any]) -> list[str]:
    return [h["content"] for h in component.get("hashes", [])]


def properties(component: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in component.get("properties", [])}


REPORT = "/etc/lockd/pip-report.json"


def test_every_distribution_is_a_pypi_component_with_the_installed_archive() -> None:
    doc = document(rich_manifest())
    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] == "1.6"
    found = components(doc)
    six = found["pkg:pypi/six@1.16.0"]
    assert (six["name"], six["version"], six["purl"]) == ("six", "1.16.0", "pkg:pypi/six@1.16.0")
    assert hashes(six) == [H3]  # the archive pip installed, from its report; not the lock's H2
    assert properties(six)["lockd:installed-archive"] == (
        f"sha256 from pip's installation report ({REPORT})"
    )
    idna = found["pkg:pypi/idna@3.7"]
    assert hashes(idna) == []  # the lock allows H1 and H2: either may be installed
    assert properties(idna)["lockd:installed-archive"] == (
        f"unknown: pip's installation report ({REPORT}) does not name it; "
        "the lock allows 2 archives for this version"
    )
    assert hashes(found["pkg:pypi/torch@2.6.0"]) == []  # neither report nor lock knows it
    assert found["pkg:pypi/nvidia-cudnn-cu12@9.1.0.70"]["type"] == "library"


@pytest.mark.parametrize(
    ("report", "expected"),
    [
        (None, "unknown: the target keeps no pip installation report"),
        (
            PipReport(path=REPORT, archives=[PipArchive(name="six", version="1.16.0")]),
            "unknown: pip's installation report names no archive (a directory or a VCS checkout)",
        ),
        (
            PipReport(path=REPORT, archives=[PipArchive(name="six", version="1.15.0", sha256=H3)]),
            "unknown: pip's installation report names 1.15.0, not 1.16.0",
        ),
        (
            PipReport(path=REPORT, error="not JSON"),
            f"unknown: pip's installation report ({REPORT}) could not be read",
        ),
    ],
    ids=["no report", "no archive", "another version", "unreadable report"],
)
def test_an_archive_lockd_cannot_name_is_said_to_be_unknown(
    report: PipReport | None, expected: str
) -> None:
    """Never the lock's archives: it allows one (H2) here, which need not be what was installed."""
    m = with_probe(rich_manifest(), pip_report=report)
    assert m.lock is not None
    pins = [LockPin(name="six", version="1.16.0", hashes=[H2])]
    m = m.model_copy(update={"lock": m.lock.model_copy(update={"pins": pins})})
    six = components(document(m))["pkg:pypi/six@1.16.0"]
    assert hashes(six) == []
    assert properties(six)["lockd:installed-archive"] == (
        expected + "; the lock allows 1 archive for this version"
    )


def nvidia(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["components"] if c.get("group") == "nvidia"}


def test_the_cuda_stack_torch_loaded_without_a_record_of_its_files() -> None:
    """No loaded-library record: the installed nvidia-* wheel of the same library and version
    gives the purl (cuDNN here), else a generic NVIDIA purl."""
    stack = nvidia(document(rich_manifest()))
    supplier = {"name": "NVIDIA"}
    assert stack == {
        "cuda-runtime": {
            "bom-ref": "lockd:cuda:cuda-runtime@12.4", "type": "library", "group": "nvidia",
            "name": "cuda-runtime", "version": "12.4", "supplier": supplier,
            "purl": "pkg:generic/nvidia/cuda-runtime@12.4",
            "properties": [
                {"name": "lockd:arch-flags", "value": "sm_90"},
                {"name": "lockd:purl-source",
                 "value": "no record of the loaded libcudart, no installed wheel of cuda-runtime 12.4"},
                {"name": "lockd:source",
                 "value": "the CUDA runtime torch was built for (torch.version.cuda)"},
            ],
        },
        "cudnn": {
            "bom-ref": "lockd:cuda:cudnn@9.1.0", "type": "library", "group": "nvidia",
            "name": "cudnn", "version": "9.1.0", "supplier": supplier,
            "purl": "pkg:pypi/nvidia-cudnn-cu12@9.1.0.70",
            "properties": [
                {"name": "lockd:purl-source",
                 "value": "the installed nvidia-cudnn-cu12 9.1.0.70 (no record of the loaded libcudnn)"},
                {"name": "lockd:source", "value": "cuDNN as loaded (torch.backends.cudnn.version())"},
            ],
        },
        "nccl": {
            "bom-ref": "lockd:cuda:nccl@2.21.5", "type": "library", "group": "nvidia",
            "name": "nccl", "version": "2.21.5", "supplier": supplier,
            "purl": "pkg:generic/nvidia/nccl@2.21.5",
            "properties": [
                {"name": "lockd:purl-source",
                 "value": "no record of the loaded libnccl, no installed wheel of nccl 2.21.5"},
                {"name": "lockd:source", "value": "NCCL as loaded (torch.cuda.nccl.version())"},
            ],
        },
    }  # fmt: skip


def test_a_wheel_of_another_version_gives_no_pypi_purl() -> None:
    m = rich_manifest()
    assert m.observation.probe is not None and m.observation.probe.torch is not None
    torch = m.observation.probe.torch.model_copy(update={"cudnn": "9.5.0"})
    m = with_probe(m, torch=torch)
    assert nvidia(document(m))["cudnn"]["purl"] == "pkg:generic/nvidia/cudnn@9.5.0"


def with_probe(m: Manifest, **update: Any) -> Manifest:
    assert m.observation.probe is not None
    seen = m.observation.probe.model_copy(update=update)
    return m.model_copy(update={"observation": m.observation.model_copy(update={"probe": seen})})


def loaded(name: str, owner: LibraryOwner | None, sha: str = "f" * 64) -> MappedLibrary:
    return MappedLibrary(
        path=f"/usr/lib/x86_64-linux-gnu/{name}", role="cuda", sha256=sha, soname=name,
        owner=owner,
    )  # fmt: skip


def test_a_loaded_library_takes_the_purl_of_the_wheel_that_owns_it() -> None:
    """With a record of the loaded files: the owner's wheel (as RECORD lists it), whatever the
    installed names say; a dpkg package's, no owner, or several owners: a generic purl."""
    wheel = LibraryOwner(kind="distribution", name="nvidia-nccl-cu12", version="2.21.5")
    libraries = LoadedLibraries(
        scope="probe",
        libraries=[
            loaded("libcudart.so.12", LibraryOwner(kind="dpkg", name="cuda-cudart-12-4")),
            loaded("libcudnn.so.9", None),
            loaded("libnccl.so.2", wheel, sha="9" * 64),
            loaded("libcublas.so.12", wheel),
            loaded("libcublas-0a1b2c3d.so.12", LibraryOwner(kind="distribution", name="other")),
        ],
    )
    m = rich_manifest()
    assert m.observation.probe is not None and m.observation.probe.torch is not None
    torch = m.observation.probe.torch.model_copy(update={"cublas": "12.4.5"})
    stack = nvidia(document(with_probe(m, libraries=libraries, torch=torch)))
    found = {name: (c["purl"], properties(c)["lockd:purl-source"]) for name, c in stack.items()}
    assert found == {
        "cuda-runtime": (
            "pkg:generic/nvidia/cuda-runtime@12.4",
            "the loaded file belongs to the dpkg package cuda-cudart-12-4, no wheel",
        ),
        "cudnn": (  # the installed nvidia-cudnn-cu12 did not give the loaded copy
            "pkg:generic/nvidia/cudnn@9.1.0",
            "the loaded file belongs to no distribution or package",
        ),
        "nccl": (
            "pkg:pypi/nvidia-nccl-cu12@2.21.5",
            "the wheel whose RECORD lists the loaded file",
        ),
        "cublas": (
            "pkg:generic/nvidia/cublas@12.4.5",
            "the loaded copies have different owners: distribution nvidia-nccl-cu12, "
            "distribution other",
        ),
    }
    nccl = [p for p in stack["nccl"]["properties"] if p["name"] == "lockd:loaded-file"]
    assert nccl == [
        {
            "name": "lockd:loaded-file",
            "value": "/usr/lib/x86_64-linux-gnu/libnccl.so.2 sha256:" + "9" * 64,
        }
    ]


def test_the_h200_manifest_names_the_wheels_of_its_cuda_stack() -> None:
    """A real manifest (torch 2.11 on CUDA 13, recorded on an H200): every library torch
    reported was loaded from an nvidia-* wheel, as the RECORDs say."""
    envelope = json.loads(H200.read_text())
    subjects, recorded = parse_statement(base64.b64decode(envelope["payload"]), H200.name)
    text = sbom_json(recorded, subjects)
    assert validation_error(text) is None
    stack = nvidia(json.loads(text))
    assert {name: (c["version"], c["purl"]) for name, c in stack.items()} == {
        "cublas": ("13.1.0", "pkg:pypi/nvidia-cublas@13.1.0.3"),
        "cuda-runtime": ("13.0", "pkg:pypi/nvidia-cuda-runtime@13.0.96"),
        "cudnn": ("9.19.0", "pkg:pypi/nvidia-cudnn-cu13@9.19.0.56"),
        "nccl": ("2.28.9", "pkg:pypi/nvidia-nccl-cu13@2.28.9"),
    }
    assert properties(stack["cudnn"])["lockd:loaded-file"] == (
        "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cudnn/lib/libcudnn.so.9 "
        "sha256:94f44e2e8fb2d4bca8c534b14f03ef84e095376dad72a257fd854377ef0b3427"
    )
    unknown = {
        properties(c)["lockd:installed-archive"]
        for c in json.loads(text)["components"]
        if "group" not in c
    }
    assert unknown == {"unknown: the target keeps no pip installation report"}


def test_the_image_is_the_metadata_component_with_its_digest() -> None:
    doc = document(rich_manifest())
    image = doc["metadata"]["component"]
    assert image["type"] == "container"
    assert image["name"] == "app"
    assert image["version"] == "sha256:" + "a" * 64
    assert hashes(image) == ["a" * 64]
    assert image["purl"] == (
        "pkg:oci/app@sha256:" + "d" * 64 + "?repository_url=registry.invalid/team/app&tag=1"
    )
    assert doc["metadata"]["timestamp"] == "2026-11-28T07:00:00+00:00"
    properties = {p["name"]: p["value"] for p in doc["metadata"]["properties"]}
    assert properties["lockd:lock"] == "requirements.txt sha256:" + "e" * 64


def test_a_local_environment_validates_too() -> None:
    local = manifest(observation().model_copy(update={"host": None}))
    doc = document(local)
    assert doc["metadata"]["component"]["type"] == "application"
    assert doc["metadata"]["component"]["name"] == "python:app-1"


def test_the_same_manifest_gives_the_same_bytes_and_another_a_new_serial() -> None:
    m = rich_manifest()
    first = sbom_json(m, subjects_for(m.observation))
    assert first == sbom_json(m, subjects_for(m.observation))
    other = m.model_copy(update={"recorded_at": "2026-11-29T07:00:00+00:00"})
    assert (
        json.loads(first)["serialNumber"]
        != json.loads(sbom_json(other, subjects_for(other.observation)))["serialNumber"]
    )


def test_the_validator_catches_an_invalid_document() -> None:
    doc = json.loads(sbom_json(manifest(), subjects_for(manifest().observation)))
    doc["components"][0]["type"] = "gadget"
    assert validation_error(json.dumps(doc)) is not None


def test_the_sbom_command_reads_a_statement_and_writes_a_file(tmp_path: Path) -> None:
    m = rich_manifest()
    statement = tmp_path / "m.statement.json"
    statement.write_bytes(make_statement(m))
    out = tmp_path / "sbom.json"
    env = {**os.environ, "COLUMNS": "200"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lockd", "sbom", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )

    result = run(str(statement), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert validation_error(out.read_text()) is None
    assert run(str(statement), "-o", str(out)).returncode == 2  # exists: no --force
    stdout = run(str(statement))
    assert stdout.returncode == 0
    assert stdout.stdout == out.read_text()


@pytest.mark.parametrize("content", [b"", b"{}", b"not json"])
def test_sbom_of_a_malformed_manifest_is_exit_2(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.json"
    bad.write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "lockd", "sbom", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert str(bad) in result.stderr
