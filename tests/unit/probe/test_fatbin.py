"""lockd/probe/fatbin.py on real CUDA shared objects from real wheels, fetched once into a cache.

* torchaudio 2.6.0 (+cu124, the default Linux wheel; 3.4 MB): libtorchaudio.so and
  libctc_prefix_decoder.so carry .nv_fatbin sections.
* torch 2.6.0 (+cu124; a 767 MB wheel, 41 s to download and 24 s to extract on the development
  machine): libtorch_cuda.so, the issue's key assertion.

Both are downloaded with pip into $LOCKD_FIXTURE_CACHE (default /var/cache/lockd/fixtures) when
they are not there yet, and the shared objects extracted from the wheels (each checked against
the wheel's RECORD). The expected architectures come from the files themselves, independently of
the reader: nvcc compiles Thrust into a namespace named after the architecture list of the
compilation (``THRUST_200302_500_600_700_750_800_860_900_NS``: Thrust 2.3.2, sm_50 ... sm_90),
found here by a plain byte search; the PTX ISA version 8.4 is CUDA 12.4's (the wheels are
``+cu124``). NVIDIA's ``cuobjdump --list-elf/--list-ptx`` (13.2) listed the same entries for
each file (docs/libraries.md).
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from lockd.errors import InputError, ProbeError
from lockd.judgement.compat import TORCH_WHEELS, parse_arch_flags
from lockd.judgement.libraries import embed_reader, read_binary, reader_source
from lockd.probe import fatbin

CACHE = Path(os.environ.get("LOCKD_FIXTURE_CACHE") or "/var/cache/lockd/fixtures")
TORCHAUDIO = "torchaudio==2.6.0"
TORCH = "torch==2.6.0"
THRUST = re.compile(rb"THRUST_\d+_((?:\d+_)+)NS")
GENERIC_2_6 = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


def _download(spec: str) -> Path:
    """The wheel of ``spec`` (Linux x86_64, CPython 3.11) in the cache, downloaded if absent."""
    name, version = spec.split("==")
    found = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    if found:
        return found[0]
    CACHE.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux1_x86_64", "--dest", str(CACHE), spec,
        ],
        capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    found = sorted(CACHE.glob(f"{name}-{version}-*.whl"))
    if result.returncode != 0 or not found:
        pytest.fail(f"cannot download {spec} into {CACHE}: {result.stderr[-2000:]}")
    return found[0]


def _extract(wheel: Path, member: str) -> Path:
    """``member`` of ``wheel``, extracted once beside it (streamed, then checked against the
    wheel's RECORD)."""
    target = CACHE / wheel.stem / member
    if target.exists():
        return target
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        rows = archive.read(record).decode().splitlines()
        [row] = [r for r in rows if r.startswith(member + ",")]
        encoded = row.split(",")[1].removeprefix("sha256=")
        expected = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).hex()
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        digest = hashlib.sha256()
        with archive.open(member) as source, partial.open("wb") as sink:
            while chunk := source.read(1 << 20):
                digest.update(chunk)
                sink.write(chunk)
    assert digest.hexdigest() == expected, f"{member} of {wheel} does not match its RECORD"
    partial.rename(target)
    return target


def _thrust_archs(path: Path) -> set[str]:
    """The architecture lists in the file's Thrust namespaces, by a chunked byte search."""
    found: set[str] = set()
    with path.open("rb") as handle:
        tail = b""
        while chunk := handle.read(1 << 24):
            data = tail + chunk
            for match in THRUST.finditer(data):
                numbers = match.group(1).decode().strip("_").split("_")
                found.add(" ".join(f"sm_{int(n) // 10}" for n in numbers))
            tail = data[-256:]
    return found


@pytest.fixture(scope="module")
def torchaudio_wheel(network_access: None) -> Path:
    return _download(TORCHAUDIO)


@pytest.fixture(scope="module")
def libtorchaudio(torchaudio_wheel: Path) -> Path:
    return _extract(torchaudio_wheel, "torchaudio/lib/libtorchaudio.so")


def test_libtorchaudio_sass_and_ptx(libtorchaudio: Path, torchaudio_wheel: Path) -> None:
    found = fatbin.scan_binary(str(libtorchaudio))
    assert found is not None
    assert found["sass"] == GENERIC_2_6
    assert found["ptx"] == ["compute_50"]  # TORCH_CUDA_ARCH_LIST "5.0+PTX;6.0;...;9.0"
    assert found["ptx_isa"] == ["8.4"]
    assert (found["containers"], found["entries"], found["relocatable"]) == (5, 40, 0)
    assert found["groups"] == [{"sass": GENERIC_2_6, "ptx": ["compute_50"], "containers": 5}]
    assert (found["soname"], found["sections"], found["error"]) == (
        "libtorchaudio.so",
        [".nv_fatbin"],
        None,
    )
    # the file's own record of its build: Thrust's namespace names the same architectures
    assert _thrust_archs(libtorchaudio) == {" ".join(GENERIC_2_6)}
    with zipfile.ZipFile(torchaudio_wheel) as archive:
        assert "'2.6.0+cu124'" in archive.read("torchaudio/version.py").decode()


def test_libctc_prefix_decoder_one_container(torchaudio_wheel: Path) -> None:
    path = _extract(torchaudio_wheel, "torchaudio/lib/libctc_prefix_decoder.so")
    found = fatbin.scan_binary(str(path))
    assert found is not None
    assert (found["sass"], found["ptx"], found["containers"]) == (GENERIC_2_6, ["compute_50"], 1)


def test_libtorch_cuda_of_torch_2_6_0(tmp_path: Path, network_access: None) -> None:
    """The issue's key assertion: sm_50, 60, 70, 75, 80, 86, 90 and no PTX. Two of its 341
    containers (FlashAttention-3-style Hopper kernels) also carry an arch-specific sm_90a cubin,
    which runs only on compute capability 9.0: cuobjdump lists the same two."""
    path = _extract(_download(TORCH), "torch/lib/libtorch_cuda.so")
    found = fatbin.scan_binary(str(path))
    assert found is not None
    generic = [t for t in found["sass"] if not t.endswith("a")]
    assert generic == GENERIC_2_6
    assert [t for t in found["sass"] if t.endswith("a")] == ["sm_90a"]
    assert (found["ptx"], found["ptx_isa"]) == ([], [])
    assert (found["containers"], found["entries"], found["compressed"]) == (341, 2389, 2389)
    assert found["groups"] == [
        {"sass": GENERIC_2_6, "ptx": [], "containers": 339},
        {"sass": [*GENERIC_2_6, "sm_90a"], "ptx": [], "containers": 2},
    ]
    # the same list as lockd's table of torch wheels and as the file's Thrust namespaces
    table = [str(t) for t in parse_arch_flags(TORCH_WHEELS["2.6.0"].arch, "table")]
    assert table == GENERIC_2_6
    assert _thrust_archs(path) == {" ".join(GENERIC_2_6)}
    # memory stays bounded: a fresh interpreter reads the 903 MB file's CUDA code in a few MB
    script = (
        "import resource, sys; sys.path.insert(0, sys.argv[2]); from lockd.probe import fatbin; "
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "fatbin.scan_binary(sys.argv[1]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)"
    )
    root = str(Path(__file__).resolve().parents[3])
    grown = subprocess.run(
        [sys.executable, "-c", script, str(path), root], capture_output=True, text=True, check=True
    )
    assert int(grown.stdout) < 64 * 1024  # KiB


def test_a_shared_object_without_cuda_code(torch_module: ModuleType) -> None:
    torch_lib = Path(torch_module.__file__ or "").parent / "lib"  # the CPU wheel's
    assert fatbin.scan_binary(str(torch_lib / "libc10.so")) is None


def _truncated(source: Path, tmp_path: Path, size: int) -> Path:
    target = tmp_path / "cut.so"
    with source.open("rb") as handle:
        target.write_bytes(handle.read(size))
    return target


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda src, tmp: _write(tmp / "a.so", b"#!/bin/sh\n"), "not an ELF file"),
        (lambda src, tmp: _write(tmp / "empty.so", b""), "not an ELF file"),
        (lambda src, tmp: _truncated(src, tmp, 40), "ELF header"),
        (lambda src, tmp: _truncated(src, tmp, 100_000), "does not fit the file"),
        (lambda src, tmp: tmp / "absent.so", "cannot read it"),
    ],
    ids=["script", "empty", "cut-header", "cut-sections", "absent"],
)
def test_bad_files_name_the_file(
    libtorchaudio: Path, tmp_path: Path, make: object, fragment: str
) -> None:
    path = make(libtorchaudio, tmp_path)  # type: ignore[operator]
    with pytest.raises(InputError, match=re.escape(fragment)) as caught:
        read_binary(path)
    assert str(path) in str(caught.value)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_container_that_overruns_keeps_what_came_before(
    libtorchaudio: Path, tmp_path: Path
) -> None:
    """The second container's size field corrupted: the first container stands, the error says
    where the section stops making sense."""
    copy = tmp_path / "corrupt.so"
    shutil.copyfile(libtorchaudio, copy)
    fd = os.open(copy, os.O_RDWR)
    try:
        elf = fatbin.elf_sections(fd, os.fstat(fd).st_size)
        [section] = [s for s in elf["sections"] if s["name"] == ".nv_fatbin"]
        first = next(fatbin.fatbin_containers(fd, section["offset"], section["size"]))
        assert len(first["entries"]) == 8
        header = os.pread(fd, 16, section["offset"])
        second = section["offset"] + 16 + int.from_bytes(header[8:16], "little")
        os.pwrite(fd, (1 << 40).to_bytes(8, "little"), second + 8)
    finally:
        os.close(fd)
    found = read_binary(copy)
    assert found is not None
    assert found.containers == 1 and found.sass == GENERIC_2_6
    assert found.error == f"a container at offset {second} overruns its section"


def test_the_reader_runs_on_python_3_8_syntax() -> None:
    ast.parse(reader_source(), feature_version=(3, 8))


def test_python_3_8_reads_the_same(libtorchaudio: Path, old_python: str) -> None:
    script = Path(fatbin.__file__)
    old = subprocess.run(
        [old_python, str(script), str(libtorchaudio)], capture_output=True, check=True
    )
    assert json.loads(old.stdout)["fatbin"] == fatbin.scan_binary(str(libtorchaudio))


def test_the_probe_and_the_suite_carry_the_reader() -> None:
    from lockd.probe import probe_source, suite_source

    for source in (probe_source(), suite_source()):
        assert "FATBIN_SOURCE = None" not in source
        assert "FATBIN_SOURCE = " + repr(reader_source()) in source
    with pytest.raises(ProbeError, match="no 'FATBIN_SOURCE = None' line"):
        embed_reader("print(1)\n", "a script")
