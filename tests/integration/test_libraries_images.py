"""What the process really loaded, in real containers of the torch CPU image: the libraries the
probe records after `import torch`, a second copy of one of them on LD_LIBRARY_PATH (the
twolibs image), and a library file replaced under the same version."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lockd.judgement.libraries import library_findings, manifest_differences
from lockd.model.manifest import Observation
from lockd.trust.statement import parse_statement
from lockd.verify import load_envelope

SITE = "/opt/venv/lib/python3.11/site-packages"
TORCH_GOMP = f"{SITE}/torch/lib/libgomp.so.1"
# The host's own libgomp (Debian's libgomp1, GCC's OpenMP runtime): another build of the library
# torch vendors as torch/lib/libgomp.so.1, with the same soname and the same ABI.
HOST_GOMP = Path("/usr/lib/x86_64-linux-gnu/libgomp.so.1")
Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


@pytest.fixture(scope="module")
def torch_manifest(
    torch_cpu_image: str,
    keypair: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
    lockd: Lockd,
) -> Path:
    """The torch CPU image recorded as it is."""
    out = tmp_path_factory.mktemp("libraries") / "torch-cpu.dsse.json"
    result = lockd("record", f"image:{torch_cpu_image}", "--key", keypair[0], "--output", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def twolibs_image(torch_cpu_image: str, build_image: Callable[..., str]) -> str:
    return build_image("twolibs", BASE=torch_cpu_image)


def observation_of(manifest: Path) -> Observation:
    envelope = load_envelope(manifest)
    _, parsed = parse_statement(envelope.payload_bytes(), str(manifest))
    return parsed.observation


def libraries_check(report: dict[str, Any]) -> dict[str, Any]:
    [found] = [c for c in report["checks"] if c["id"] == "libraries"]
    return found


def test_the_torch_image_records_what_import_torch_mapped(torch_manifest: Path) -> None:
    observation = observation_of(torch_manifest)
    assert observation.probe is not None
    record = observation.probe.libraries
    assert record is not None and record.error is None
    by_path = {lib.path: lib for lib in record.libraries}
    for name in ("libtorch_cpu.so", "libc10.so", "libgomp.so.1", "libtorch_python.so"):
        library = by_path[f"{SITE}/torch/lib/{name}"]
        assert library.role == "extension"
        assert library.soname == name
        assert library.owner is not None and library.owner.kind == "distribution"
        assert (library.owner.name, library.owner.version) == ("torch", "2.13.0+cpu")
        # the file as mapped is the file torch's RECORD lists
        assert library.sha256 == library.owner.record_sha256
    assert by_path[f"{SITE}/torch/lib/libtorch_cpu.so"].size > 100_000_000
    assert library_findings(observation) == []
    extensions = observation.probe.extensions
    assert extensions is not None and extensions.files > 20
    assert extensions.binaries == []  # the CPU build carries no CUDA code


def test_twolibs_maps_the_copy_on_ld_library_path(
    twolibs_image: str,
    torch_manifest: Path,
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    out = tmp_path / "twolibs.dsse.json"
    result = lockd("record", f"image:{twolibs_image}", "--key", keypair[0], "--output", out)
    assert result.returncode == 0, result.stdout + result.stderr
    observation = observation_of(out)
    assert observation.probe is not None and observation.probe.libraries is not None
    by_path = {lib.path: lib for lib in observation.probe.libraries.libraries}
    shadow = by_path["/opt/shadow/libgomp.so.1"]
    assert TORCH_GOMP not in by_path  # the loader took LD_LIBRARY_PATH's copy instead
    assert shadow.owner is None
    assert shadow.role == "library-path"
    assert shadow.shadows == ["torch/lib/libgomp.so.1 (torch 2.13.0+cpu)"]
    [finding] = library_findings(observation)
    assert (finding.kind, finding.path, finding.name) == (
        "shadowed",
        "/opt/shadow/libgomp.so.1",
        "libgomp",
    )
    # the same bytes as torch's copy (a copy of it): only where it was loaded from differs
    recorded = observation_of(torch_manifest).probe
    assert recorded is not None and recorded.libraries is not None
    [torch_gomp] = [lib for lib in recorded.libraries.libraries if lib.path == TORCH_GOMP]
    assert shadow.sha256 == torch_gomp.sha256
    # verified against the torch image's manifest: the copy is new, torch's own is not mapped
    result = lockd(
        "verify", f"image:{twolibs_image}", "--manifest", torch_manifest, "--key", keypair[1],
        "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    check = libraries_check(json.loads(result.stdout))
    assert check["status"] == "fail"
    kinds = {(f["kind"], f.get("path")) for f in check["findings"]}
    assert ("shadowed", "/opt/shadow/libgomp.so.1") in kinds
    assert ("moved", "/opt/shadow/libgomp.so.1") in kinds  # the same file, another path


def test_a_library_replaced_under_the_same_version(
    torch_cpu_image: str,
    run_container: Callable[..., Any],
    keypair: tuple[Path, Path],
    tmp_path: Path,
    lockd: Lockd,
) -> None:
    assert HOST_GOMP.exists(), (
        f"{HOST_GOMP} (Debian's libgomp1) is needed; apt-get install libgomp1"
    )
    container = run_container(torch_cpu_image)
    before = tmp_path / "before.dsse.json"
    result = lockd("record", container.name, "--key", keypair[0], "--output", before)
    assert result.returncode == 0, result.stdout + result.stderr
    # Replace torch's libgomp.so.1 in place with another build of it (as root, like a fix-up
    # step in a derived image would): same path, same soname, same file-name version.
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        data = HOST_GOMP.read_bytes()
        info = tarfile.TarInfo("libgomp.so.1")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    assert container.put_archive(f"{SITE}/torch/lib", archive.getvalue())
    result = lockd("verify", container.name, "--manifest", before, "--key", keypair[1], "--json")
    assert result.returncode == 1, result.stdout + result.stderr
    check = libraries_check(json.loads(result.stdout))
    assert check["status"] == "fail"
    by_kind = {f["kind"]: f for f in check["findings"] if f.get("path") == TORCH_GOMP}
    assert set(by_kind) == {"changed", "modified"}
    assert by_kind["changed"]["message"] == (
        "a different file under the same version (1, distribution torch 2.13.0+cpu)"
    )
    assert by_kind["modified"]["expected"] == by_kind["changed"]["expected"]
    # lockd diff's view: two manifests, the library file changed under the same version
    after = tmp_path / "after.dsse.json"
    result = lockd("record", container.name, "--key", keypair[0], "--output", after)
    assert result.returncode == 0, result.stdout + result.stderr
    first, second = (load_envelope(p) for p in (before, after))
    _, a = parse_statement(first.payload_bytes(), str(before))
    _, b = parse_statement(second.payload_bytes(), str(after))
    [changed] = manifest_differences(a, b)
    assert (changed.kind, changed.path) == ("changed", TORCH_GOMP)
    assert "same version" in (changed.message or "")
