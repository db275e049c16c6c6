"""lockd sbom: CycloneDX 1.6 JSON that the library's strict validator accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from observations import dist, host, manifest, observation, probe

from lockd.model.environment import PipArchive, PipReport, TorchInfo
from lockd.model.manifest import LockInfo, LockPin, Manifest
from lockd.sbom import sbom_json, validation_error
from lockd.trust.statement import make_statement, subjects_for

H1, H2, H3 = "1" * 64, "2" * 64, "3" * 64
REPO_DIGEST = "registry.invalid/team/app@sha256:" + "d" * 64


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


def test_every_distribution_is_a_pypi_component_with_the_hashes_lockd_knows() -> None:
    doc = document(rich_manifest())
    assert doc["bomFormat"] == "CycloneDX"
    assert doc["specVersion"] == "1.6"
    found = components(doc)
    six = found["pkg:pypi/six@1.16.0"]
    assert (six["name"], six["version"], six["purl"]) == ("six", "1.16.0", "pkg:pypi/six@1.16.0")
    assert hashes(six) == [H3]  # the archive pip installed, from its report
    assert hashes(found["pkg:pypi/idna@3.7"]) == [H1, H2]  # the archives the lock allows
    assert hashes(found["pkg:pypi/torch@2.6.0"]) == []  # neither report nor lock knows it
    assert found["pkg:pypi/nvidia-cudnn-cu12@9.1.0.70"]["type"] == "library"


def test_the_cuda_stack_torch_loaded_is_a_set_of_components() -> None:
    found = components(document(rich_manifest()))
    stack = {c["name"]: c["version"] for c in found.values() if c.get("group") == "nvidia"}
    assert stack == {"cuda-runtime": "12.4", "cudnn": "9.1.0", "nccl": "2.21.5"}


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
