"""The environment probe, run the way targets run it: ``python -c <source>`` in a child process."""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lockd.evidence.targets.base import parse_probe_output
from lockd.model.environment import Distribution, ProbeReport
from lockd.probe import environment, probe_source

RECORD = (
    "foo_bar/__init__.py,sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n"
    '"foo_bar/odd,name.py",sha256=47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU,0\n'
    "Foo_Bar-1.2.dist-info/RECORD,,\n"
)


def dist_info(
    site: Path,
    dirname: str,
    name: str | None,
    version: str | None = "1.0",
    record: str | None = None,
    installer: str | None = None,
) -> Path:
    """A .dist-info directory as an installer writes it (METADATA only when name is given)."""
    directory = site / dirname
    directory.mkdir(parents=True)
    if name is not None:
        headers = ["Metadata-Version: 2.1", f"Name: {name}"]
        if version is not None:
            headers.append(f"Version: {version}")
        body = "\n".join(headers) + "\n\nA description\nName: not-a-header\n"
        (directory / "METADATA").write_text(body)
    if record is not None:
        (directory / "RECORD").write_bytes(record.encode())
    if installer is not None:
        (directory / "INSTALLER").write_text(installer)
    return directory


def run_probe(
    cwd: Path,
    *paths: Path,
    env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> ProbeReport:
    environ = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environ.update(env or {})
    if paths:
        environ["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    result = subprocess.run(
        [python, "-c", probe_source()], cwd=cwd, env=environ, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    return parse_probe_output(result.stdout, f"probe under {python}")


def by_name(report: ProbeReport) -> dict[str, Distribution]:
    return {d.name: d for d in report.distributions}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site"
    path.mkdir()
    return path


def test_reports_this_python(tmp_path: Path) -> None:
    report = run_probe(tmp_path)
    assert report.probe_version == 1
    assert report.python.version == platform.python_version()
    assert report.python.implementation == sys.implementation.name
    assert report.python.prefix == sys.prefix
    assert report.python.base_prefix == sys.base_prefix
    assert report.python.platform == sys.platform
    assert "" not in report.python.path
    assert report.os.machine == platform.machine()
    names = [d.name for d in report.distributions]
    assert names == sorted(names)
    assert "pydantic" in names


def test_output_is_one_compact_sorted_json_document(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", probe_source()], cwd=tmp_path, capture_output=True, check=True
    )
    lines = result.stdout.decode("ascii").splitlines()
    assert len(lines) == 1
    assert lines[0].startswith('{"distributions":[{"files":')


def test_runs_from_stdin_too(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-"],
        input=probe_source().encode(),
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    assert parse_probe_output(result.stdout, "stdin").probe_version == 1


def test_a_distribution_is_normalised_and_hashed(tmp_path: Path, site: Path) -> None:
    directory = dist_info(
        site, "Foo_Bar-1.2.dist-info", "Foo_Bar", "1.2", record=RECORD, installer="pip\n"
    )
    report = run_probe(tmp_path, site)
    foo = by_name(report)["foo-bar"]
    assert foo.version == "1.2"
    assert foo.installer == "pip"
    assert foo.location == str(site)
    expected = hashlib.sha256((directory / "RECORD").read_bytes()).hexdigest()
    assert foo.record_sha256 == expected
    assert foo.files == 3


def test_a_distribution_without_record_or_installer(tmp_path: Path, site: Path) -> None:
    dist_info(site, "plain-0.1.dist-info", "plain", "0.1")
    (site / "legacy-0.5.egg-info").write_text("Metadata-Version: 1.0\nName: Legacy\nVersion: 0.5\n")
    found = by_name(run_probe(tmp_path, site))
    for name, version in (("plain", "0.1"), ("legacy", "0.5")):
        dist = found[name]
        assert dist.version == version
        assert dist.record_sha256 is None
        assert dist.files == 0
        assert dist.installer is None


def test_a_zip_archive_on_sys_path_is_read_through_importlib_metadata(tmp_path: Path) -> None:
    archive = tmp_path / "bundle.zip"
    record = b"zipped_pkg/__init__.py,,\nZipped_Pkg-3.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr(
            "Zipped_Pkg-3.0.dist-info/METADATA",
            "Metadata-Version: 2.1\nName: Zipped_Pkg\nVersion: 3.0\n",
        )
        bundle.writestr("Zipped_Pkg-3.0.dist-info/RECORD", record)
        bundle.writestr("zipped_pkg/__init__.py", "")
    zipped = by_name(run_probe(tmp_path, archive))["zipped-pkg"]
    assert zipped.version == "3.0"
    assert zipped.location == str(archive)
    assert zipped.record_sha256 == hashlib.sha256(record).hexdigest()
    assert zipped.files == 2


@pytest.mark.parametrize(
    ("dirname", "name", "version"),
    [
        ("nometa-1.0.dist-info", None, None),  # RECORD but no METADATA
        ("noname-1.0.dist-info", "", "1.0"),
        ("noversion-1.0.dist-info", "noversion", None),
    ],
)
def test_broken_metadata_is_skipped(
    tmp_path: Path, site: Path, dirname: str, name: str | None, version: str | None
) -> None:
    dist_info(site, dirname, name, version, record="x.py,,\n")
    dist_info(site, "fine-1.0.dist-info", "fine")
    found = by_name(run_probe(tmp_path, site))
    assert "fine" in found
    assert not {"nometa", "noname", "noversion"} & set(found)


def test_a_shadowed_distribution_reports_the_first_on_sys_path(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    dist_info(first, "shadow-2.0.dist-info", "shadow", "2.0")
    dist_info(second, "Shadow-1.0.dist-info", "Shadow", "1.0")
    report = run_probe(tmp_path, first, second)
    assert [d for d in report.distributions if d.name == "shadow"] == [
        d for d in report.distributions if d.location == str(first)
    ]
    assert by_name(report)["shadow"].version == "2.0"


def test_env_keeps_the_cuda_stack_and_drops_the_rest(tmp_path: Path) -> None:
    env = {
        "CUDA_HOME": "/usr/local/cuda",
        "NCCL_DEBUG": "INFO",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_HOME": "/cache",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "LD_PRELOAD": "",
        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "HOME": "/root",
        "MY_CUDA_THING": "x",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    report = run_probe(tmp_path, env=env)
    kept = {k: v for k, v in env.items() if k in report.env}
    assert kept == {
        "CUDA_HOME": "/usr/local/cuda",
        "NCCL_DEBUG": "INFO",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "TORCH_HOME": "/cache",
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "LD_PRELOAD": "",
        "LD_LIBRARY_PATH": "/usr/local/cuda/lib64",
    }
    assert not {"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "HOME"} & set(report.env)


def test_undecodable_bytes_in_the_environment_still_give_valid_json(tmp_path: Path) -> None:
    environ = {k.encode(): v.encode() for k, v in os.environ.items()}
    environ[b"CUDA_ODD"] = b"caf\xe9"
    result = subprocess.run(
        [sys.executable, "-c", probe_source()],
        cwd=tmp_path,
        env=environ,
        capture_output=True,
        check=True,
    )
    assert parse_probe_output(result.stdout, "probe").env["CUDA_ODD"] == "caf\ufffd"


def test_a_json_module_in_the_working_directory_does_not_shadow_the_stdlib(
    tmp_path: Path,
) -> None:
    (tmp_path / "json.py").write_text("raise SystemExit('shadowed')\n")
    (tmp_path / "csv.py").write_text("raise SystemExit('shadowed')\n")
    assert run_probe(tmp_path).probe_version == 1


def test_an_unexpected_error_prints_a_traceback_and_exits_1(tmp_path: Path) -> None:
    crash = (
        "import lockd.probe.environment as probe\n"
        "def collect():\n"
        "    raise ZeroDivisionError('injected')\n"
        "probe.collect = collect\n"
        "probe.main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", crash],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
        cwd=tmp_path,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"ZeroDivisionError: injected" in result.stderr


def test_no_torch_gives_null(tmp_path: Path) -> None:
    # a fresh venv: whatever this interpreter has installed, torch is not there
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True)
    report = run_probe(tmp_path, python=str(tmp_path / "v" / "bin" / "python"))
    assert "torch" not in {d.name for d in report.distributions}
    assert report.torch is None


def fake_torch(site: Path, init: str) -> None:
    """A stand-in torch package (the real one is not installed here) with its dist-info."""
    dist_info(site, "torch-2.11.0.dist-info", "torch", "2.11.0", record="torch/__init__.py,,\n")
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(init)


TORCH_OK = """
import types
print("noise from a C extension's import")
__version__ = "2.11.0+cu130"
version = types.SimpleNamespace(git_version="70d99e998b", cuda="13.0")
backends = types.SimpleNamespace(cudnn=types.SimpleNamespace(version=lambda: 91900))
def _nccl():
    raise RuntimeError("NCCL is not available")
cuda = types.SimpleNamespace(nccl=types.SimpleNamespace(version=_nccl))
_C = types.SimpleNamespace(_cuda_getArchFlags=lambda: "sm_75 sm_80 sm_90")
"""


def test_torch_that_imports_reports_its_stack_and_guards_each_field(
    tmp_path: Path, site: Path
) -> None:
    fake_torch(site, TORCH_OK)
    torch = run_probe(tmp_path, site).torch
    assert torch is not None
    assert torch.model_dump() == {
        "version": "2.11.0+cu130",
        "git_version": "70d99e998b",
        "cuda": "13.0",
        "cudnn": "9.19.0",
        "nccl": None,  # raised: null, not a crash
        "arch_flags": "sm_75 sm_80 sm_90",
        "error": None,
        "cublas": None,  # no libcublas mapped in this process
    }


def test_torch_that_fails_to_import_reports_the_error(tmp_path: Path, site: Path) -> None:
    fake_torch(site, "raise OSError('libcudnn.so.9: cannot open shared object file' * 100)\n")
    torch = run_probe(tmp_path, site).torch
    assert torch is not None
    assert torch.version == "2.11.0"
    assert torch.error is not None
    assert torch.error.startswith("OSError: libcudnn.so.9: cannot open shared object file")
    assert len(torch.error) == 1000
    assert torch.cuda is None


@pytest.mark.parametrize(
    ("code", "dotted"),
    [
        (91900, "9.19.0"),
        (90100, "9.1.0"),
        (8902, "8.9.2"),
        (21005, "2.10.5"),
        ((2, 28, 9), "2.28.9"),
    ],
)
def test_version_codes_are_dotted(code: object, dotted: str) -> None:
    assert environment.dotted_version(code) == dotted


@pytest.mark.parametrize(
    ("record", "rows"),
    [
        (b"", 0),
        (b"a.py,,\nb.py,,\n", 2),
        (b"a.py,,\r\n\r\nb.py,,", 2),
        (b'"odd\nname.py",,\nb.py,,\n', 2),
        (b'"x,y.py",,\n', 1),
    ],
)
def test_record_rows(record: bytes, rows: int) -> None:
    assert environment._count_rows(record) == rows


def test_os_release_values_are_unquoted() -> None:
    assert environment._unquote('"Debian GNU/Linux 12 (bookworm)"') == (
        "Debian GNU/Linux 12 (bookworm)"
    )
    assert environment._unquote("'a\\b'") == "a\\b"
    assert environment._unquote('"say \\"hi\\""') == 'say "hi"'
    assert environment._unquote("ubuntu") == "ubuntu"


def test_source_is_python_3_8_syntax() -> None:
    ast.parse(probe_source(), feature_version=(3, 8))


def test_runs_on_python_3_8(tmp_path: Path, site: Path, old_python: str) -> None:
    """The probe's contract: it runs on the oldest interpreter a container may have. The
    old_python fixture (tests/conftest.py) finds a Python 3.8, and fails the test where there
    is none: deselected by scripts/test --quick, never skipped by the full run."""
    dist_info(site, "Foo_Bar-1.2.dist-info", "Foo_Bar", "1.2", record=RECORD, installer="pip")
    report = run_probe(tmp_path, site, python=old_python, env={"CUDA_HOME": "/cuda"})
    assert report.python.version.startswith("3.8.")
    assert by_name(report)["foo-bar"].files == 3
    assert report.env["CUDA_HOME"] == "/cuda"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("caf\udce9", "caf\ufffd"),  # an undecodable byte, as os.environ and sys.path carry it
        ("lone \ud800 surrogate", "lone \ufffd\ufffd\ufffd surrogate"),
        (3, "3"),
    ],
)
def test_text_always_encodes_to_utf8(value: object, expected: str) -> None:
    assert environment.text(value) == expected
    environment.text(value).encode("utf-8")
