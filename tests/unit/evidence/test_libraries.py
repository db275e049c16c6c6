"""What a process loaded: the record lockd/probe/fatbin.py makes inside a process (here, processes of
this interpreter with the torch CPU wheel) and lockd.judgement.libraries' findings and comparisons, on real
libraries, and on the manifest recorded on an H200 node (tests/assets/manifests/)."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lockd.evidence.targets.base import parse_probe_output
from lockd.judgement import compat
from lockd.judgement.checks.libraries import check_libraries
from lockd.judgement.libraries import (
    compare_records,
    identity,
    intrinsic_findings,
    manifest_differences,
    manifest_records,
)
from lockd.judgement.policy import Policy
from lockd.model.environment import LoadedLibraries, ProbeReport
from lockd.model.manifest import Manifest
from lockd.probe import fatbin, probe_source
from lockd.trust.statement import parse_statement

ROOT = Path(__file__).resolve().parents[3]
H200 = ROOT / "tests" / "assets" / "manifests" / "h200-torch-2.11-gpu.dsse.json"
# Found without importing torch: the tests that need it ask for the torch_module fixture
# (tests/conftest.py), which marks them and fails them where torch is missing.
SPEC = importlib.util.find_spec("torch")
TORCH_LIB = Path(SPEC.origin).parent / "lib" if SPEC and SPEC.origin else Path("/no-torch/lib")
GOMP = TORCH_LIB / "libgomp.so.1"

# Imports torch, then (like torch's own _preload_cuda_deps for the CUDA wheels' libraries)
# loads a library by its full path, then makes the record.
RECORD_AFTER = r"""
import ctypes, json, sys
import torch
for path in sys.argv[2:]:
    ctypes.CDLL(path)
namespace = {"__name__": "lockd_fatbin"}
exec(compile(open(sys.argv[1]).read(), "fatbin.py", "exec"), namespace)
print(json.dumps(namespace["loaded_libraries"]("probe", [p for p in sys.path if p])))
"""


def record_in_process(*loads: Path, env: dict[str, str] | None = None) -> LoadedLibraries:
    result = subprocess.run(
        [sys.executable, "-c", RECORD_AFTER, fatbin.__file__, *map(str, loads)],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return LoadedLibraries.model_validate(json.loads(result.stdout), strict=True)


@pytest.fixture(scope="module")
def probe(torch_module: object) -> ProbeReport:
    """The real probe, streamed like lockd streams it, in this interpreter (torch CPU)."""
    result = subprocess.run(
        [sys.executable, "-c", probe_source()], capture_output=True, check=False, cwd="/"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return parse_probe_output(result.stdout, "this interpreter")


def record_sha256(relative: str) -> str:
    """The sha256 torch's RECORD lists for one of its files."""
    [dist_info] = TORCH_LIB.parent.parent.glob("torch-*.dist-info")
    for line in (dist_info / "RECORD").read_text().splitlines():
        if line.startswith(relative + ","):
            encoded = line.split(",")[1].removeprefix("sha256=")
            return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
    raise AssertionError(relative)


def test_the_probe_records_torch_libraries(probe: ProbeReport) -> None:
    record = probe.libraries
    assert record is not None and record.error is None and record.scope == "probe"
    by_path = {Path(lib.path): lib for lib in record.libraries}
    cpu = by_path[TORCH_LIB / "libtorch_cpu.so"]
    assert cpu.role == "extension" and cpu.soname == "libtorch_cpu.so"
    assert cpu.owner is not None and cpu.owner.name == "torch"
    assert cpu.owner.path == "torch/lib/libtorch_cpu.so"
    with (TORCH_LIB / "libtorch_cpu.so").open("rb") as handle:
        assert cpu.sha256 == hashlib.file_digest(handle, "sha256").hexdigest()
    assert cpu.sha256 == record_sha256("torch/lib/libtorch_cpu.so")
    assert cpu.size == (TORCH_LIB / "libtorch_cpu.so").stat().st_size
    assert by_path[GOMP].version == "1" and by_path[GOMP].version_source == "file"
    assert record.bytes >= cpu.size and record.threads >= 1
    # libc and the interpreter's own modules are counted, not recorded
    assert record.system > 0
    assert not any("/libc.so" in lib.path for lib in record.libraries)
    assert intrinsic_findings(probe, [record]) == []
    assert probe.extensions is not None and probe.extensions.binaries == []


def test_a_copy_on_ld_library_path_shadows_and_a_second_load_duplicates(
    probe: ProbeReport, tmp_path: Path
) -> None:
    """LD_LIBRARY_PATH precedes libtorch_cpu.so's RUNPATH: the copy is mapped for libgomp.so.1;
    loading torch's own file by its path afterwards maps a second one (two OpenMP runtimes)."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    shutil.copy2(GOMP, shadow / "libgomp.so.1")
    alone = record_in_process(env={"LD_LIBRARY_PATH": str(shadow)})
    paths = {Path(lib.path) for lib in alone.libraries}
    assert shadow / "libgomp.so.1" in paths and GOMP not in paths
    [copy] = [lib for lib in alone.libraries if Path(lib.path) == shadow / "libgomp.so.1"]
    assert (copy.role, copy.owner) == ("library-path", None)
    assert copy.shadows == [f"torch/lib/libgomp.so.1 (torch {copy_torch_version(probe)})"]
    [finding] = intrinsic_findings(probe, [alone])
    assert (finding.kind, finding.name, finding.path) == (
        "shadowed",
        "libgomp",
        str(shadow / "libgomp.so.1"),
    )

    both = record_in_process(GOMP, env={"LD_LIBRARY_PATH": str(shadow)})
    kinds = {f.kind: f for f in intrinsic_findings(probe, [both])}
    assert set(kinds) == {"shadowed", "duplicate"}
    duplicate = kinds["duplicate"]
    assert duplicate.name == "libgomp"
    assert duplicate.observed == ", ".join(sorted([str(shadow / "libgomp.so.1"), str(GOMP)]))
    assert "2 files of libgomp are mapped into one process" in (duplicate.message or "")


def copy_torch_version(probe: ProbeReport) -> str:
    [torch] = [d for d in probe.distributions if d.name == "torch"]
    return torch.version


def test_records_compare_added_missing_moved_changed(probe: ProbeReport) -> None:
    record = probe.libraries
    assert record is not None
    assert compare_records(record, record) == []
    libs = list(record.libraries)
    replaced = []
    for lib in libs:
        if Path(lib.path) == GOMP:  # the same file, mapped from elsewhere
            replaced.append(lib.model_copy(update={"path": "/opt/elsewhere/libgomp.so.1"}))
        elif lib.path.endswith("/libc10.so"):  # another file at the same path
            replaced.append(lib.model_copy(update={"sha256": "0" * 64}))
        elif not lib.path.endswith("/libshm.so"):  # libshm.so: no longer mapped
            replaced.append(lib)
    observed = record.model_copy(update={"libraries": replaced})
    c10 = str(TORCH_LIB / "libc10.so")
    found = {(f.kind, f.path): f for f in compare_records(record, observed)}
    assert found[("moved", "/opt/elsewhere/libgomp.so.1")].expected == str(GOMP)
    changed = found[("changed", c10)]
    assert (
        changed.message
        == f"a different file under the same version (unknown, distribution torch {copy_torch_version(probe)})"
    )
    assert set(found) == {
        ("moved", "/opt/elsewhere/libgomp.so.1"),
        ("changed", c10),
        ("missing", str(TORCH_LIB / "libshm.so")),
    }


def h200() -> Manifest:
    from lockd.verify import load_envelope

    envelope = load_envelope(H200)
    _, manifest = parse_statement(envelope.payload_bytes(), str(H200))
    return manifest


def test_the_h200_record_agrees_with_what_torch_said() -> None:
    """Recorded on an H200 node (torch 2.11.0+cu130, `lockd record local --gpu`); in another
    process there torch.backends.cudnn.version() said 91900 and torch.cuda.nccl.version()
    (2, 28, 9): the cuDNN and NCCL files the record names report the same versions."""
    manifest = h200()
    probe = manifest.observation.probe
    assert probe is not None and probe.torch is not None
    assert (probe.torch.cudnn, probe.torch.nccl) == ("9.19.0", "2.28.9")
    probe_record, suite_record = manifest_records(manifest)
    assert (probe_record.scope, suite_record.scope) == ("probe", "suite")
    suite = {Path(lib.path).name: lib for lib in suite_record.libraries}
    assert suite["libcudnn.so.9"].version == "9.19.0"
    assert suite["libcudnn.so.9"].version_source == "runtime"
    assert suite["libnccl.so.2"].version == "2.28.9"
    assert suite["libcublas.so.13"].version == suite["libcublasLt.so.13"].version == "13.1.0"
    owner = suite["libcudnn.so.9"].owner
    assert owner is not None and (owner.name, owner.version) == ("nvidia-cudnn-cu13", "9.19.0.56")
    # cuDNN loads its engines lazily: mapped after the suite's convolutions, not after import
    lazy = {"libcudnn_engines_precompiled.so.9", "libcudnn_heuristic.so.9"}
    assert lazy <= set(suite)
    assert not lazy & {Path(lib.path).name for lib in probe_record.libraries}
    # Every file is hashed and owned, but one: the first version of the probe, which made this
    # record, also took a module of Triton's JIT cache (~/.triton/cache/.../cuda_utils...so)
    # for a copy shadowing cuda-core's module of the same file name; only lib*.so files shadow
    # now, and such a module is not recorded (test_a_python_module_of_the_same_name...).
    for lib in suite_record.libraries:
        if lib.role != "driver" and "/.triton/cache/" not in lib.path:
            assert lib.sha256 is not None and lib.owner is not None, lib.path
    # the node's image says NCCL_VERSION=2.28.3-1 (its system NCCL); torch loads the wheel's
    findings = intrinsic_findings(probe, [probe_record, suite_record])
    [nccl] = [f for f in findings if f.kind == "env-version"]
    assert (nccl.name, nccl.expected, nccl.observed) == ("NCCL_VERSION", "2.28.3-1", "2.28.9")


def test_compat_judges_every_extension_of_the_h200_environment() -> None:
    build = compat.build_from_manifest(h200(), "h200")
    names = {b.name: b for b in build.binaries}
    assert "torch/lib/libtorch_cuda.so" in names and "torchvision/_C.so" in names
    on_h200 = compat.assess(build, gpus=["H200"]).verdict
    assert on_h200 is not None and on_h200.runs
    t4 = compat.assess(build, gpus=["T4"]).verdict
    assert t4 is not None and not t4.runs
    assert t4.reasons == [
        "torch/lib/libtorch_cuda_linalg.so has no code for sm_75 and no PTX: fails on T4, sm_75"
    ]
    ada = compat.assess(build, gpus=["sm_89"]).verdict
    assert ada is not None and ada.runs
    assert "torchvision/_C.so runs via the sm_86 cubin on sm_89" in ada.reasons
    v100 = compat.assess(build, gpus=["V100"]).verdict
    assert v100 is not None
    assert "torch/lib/libtorch_cuda.so has no code for sm_70 and no PTX: fails on V100, sm_70" in (
        v100.reasons
    )
    # NVIDIA's own libraries are shown, not judged: cuFFT's .nv_fatbin holds one sm_75 helper
    [cufft] = [e for e in compat.assess(build).extensions if e.name.endswith("libcufft.so.12")]
    assert not cufft.judged and cufft.sass == ["sm_75"]


def test_the_libraries_check_against_the_h200_manifest() -> None:
    manifest = h200()
    same = check_libraries(manifest, manifest.observation, Policy())
    # the NCCL_VERSION finding is the manifest's own: reported as known, not failed
    assert same.status == "pass"
    assert any(f.kind == "env-version" and "known" in (f.message or "") for f in same.findings)
    probe = manifest.observation.probe
    assert probe is not None and probe.libraries is not None
    nccl = next(i for i, lib in enumerate(probe.libraries.libraries) if "libnccl" in lib.path)
    libs = list(probe.libraries.libraries)
    libs[nccl] = libs[nccl].model_copy(update={"version": "2.27.3"})
    changed = probe.model_copy(
        update={"libraries": probe.libraries.model_copy(update={"libraries": libs})}
    )
    observed = manifest.observation.model_copy(update={"probe": changed})
    check = check_libraries(manifest, observed, Policy())
    assert check.status == "fail"
    [pin] = [f for f in check.findings if f.kind == "pin-version"]
    assert (pin.expected, pin.observed) == ("nvidia-nccl-cu13 2.28.9", "2.27.3")
    assert manifest_differences(manifest, manifest) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("libcudnn.so.9.1.0", "libcudnn"),
        ("libcudnn.so.8", "libcudnn"),
        ("libgomp-a34b3233.so.1", "libgomp"),
        ("libcublasLt.so.12", "libcublasLt"),
        ("_C.cpython-311-x86_64-linux-gnu.so", "_C"),
    ],
)
def test_identity(probe: ProbeReport, name: str, expected: str) -> None:
    assert probe.libraries is not None
    library = probe.libraries.libraries[0].model_copy(update={"path": "/x/" + name, "soname": None})
    assert identity(library) == expected


def test_dpkg_names_the_package_of_a_system_library() -> None:
    libc = Path("/usr/lib/x86_64-linux-gnu/libc.so.6").resolve()
    owners = fatbin.dpkg_owners([str(libc)])
    assert owners[str(libc)]["name"] == "libc6"
    assert owners[str(libc)]["version"]


def test_a_python_module_of_the_same_name_is_no_shadow(
    tmp_path: Path, torch_module: object
) -> None:
    """A module in a cache directory with the file name of an installed module (Triton's JIT
    cache compiles cuda_utils.cpython-*.so; cuda-core ships modules of that name) is another
    module, not a copy of a library: neither recorded nor reported."""
    [module] = sorted(TORCH_LIB.parent.glob("_C.cpython-*.so"))
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy2(module, cache / module.name)
    record = record_in_process(cache / module.name)
    assert str(cache / module.name) not in {lib.path for lib in record.libraries}


def test_diff_shows_a_library_file_changed_under_the_same_version() -> None:
    from lockd.judgement.diffing import diff_manifests, render_text

    manifest = h200()
    probe = manifest.observation.probe
    assert probe is not None and probe.libraries is not None
    libs = list(probe.libraries.libraries)
    nccl = next(i for i, lib in enumerate(libs) if "libnccl" in lib.path)
    libs[nccl] = libs[nccl].model_copy(update={"sha256": "0" * 64})
    changed = probe.model_copy(
        update={"libraries": probe.libraries.model_copy(update={"libraries": libs})}
    )
    other = manifest.model_copy(
        update={"observation": manifest.observation.model_copy(update={"probe": changed})}
    )
    assert not any(
        s.id == "libraries" and s.rows for s in diff_manifests(manifest, manifest).sections
    )
    report = diff_manifests(manifest, other)
    [section] = [s for s in report.sections if s.id == "libraries"]
    [row] = section.rows
    assert row.kind == "modified"
    assert row.b == "sha256:" + "0" * 64
    assert "same version" in row.note
    assert "Loaded libraries" in render_text(report)
