"""The CLI end to end on the local target (no Docker): keygen, record, verify, show, diff."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)


def test_record_and_verify_this_interpreter(
    keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    manifest = tmp_path / "local.dsse.json"
    result = lockd("record", "local", "--key", keypair[0], "--output", manifest)
    assert result.returncode == 0, result.stderr
    result = lockd("verify", "local", "--manifest", manifest, "--key", keypair[1], "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    statuses = {c["id"]: c["status"] for c in report["checks"]}
    assert statuses == {
        "signature": "pass",
        "image": "skip",
        "packages": "pass",
        "filesystem": "skip",
        "python": "pass",
        "env": "pass",
        "system": "pass",
        "lock": "skip",
        "cuda": "skip",
        "driver": "skip",
        "gpu": "skip",
        "integrity": "skip",
        # judged only where torch is installed in this interpreter (a lone torch is coherent)
        "coherence": "pass" if importlib.util.find_spec("torch") else "skip",
        # what the process mapped after `import torch`: recorded only where torch is installed
        "libraries": "pass" if importlib.util.find_spec("torch") else "skip",
        "workload": "skip",  # lockd reads no running workload of the local target (#17)
        "isolation": "skip",  # only a container has processes lockd reads on the host
    }


def test_env_drift_on_the_local_target(
    keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd
) -> None:
    manifest = tmp_path / "local.dsse.json"
    assert lockd("record", "local", "--key", keypair[0], "-o", manifest).returncode == 0
    result = lockd(
        "verify",
        "local",
        "--manifest",
        manifest,
        "--key",
        keypair[1],
        "--json",
        env={"CUDA_LAUNCH_BLOCKING": "1"},
    )
    assert result.returncode == 1
    report = json.loads(result.stdout)
    [env] = [c for c in report["checks"] if c["id"] == "env"]
    assert env["findings"] == [
        {
            "kind": "added",
            "name": "CUDA_LAUNCH_BLOCKING",
            "observed": "1",
            "message": "process (inside)",
        }
    ]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["verify", "local", "--manifest", "missing.json", "--key", "{pub}"],
            2,
            "missing.json: no such manifest file",
        ),
        (["verify", "local", "--manifest", "{manifest}", "--key", "missing.pub"], 2, "missing.pub"),
        (
            ["verify", "local", "--manifest", "{manifest}", "--key", "{pub}", "--policy", "nope"],
            2,
            "nope: no such policy",
        ),
        (["record", "local", "--key", "{pub}", "-o", "out.json"], 2, "{pub}"),
        (
            ["record", "local", "--key", "{key}", "-o", "out.json", "--python", "/no/python"],
            3,
            "/no/python",
        ),
        (["verify"], 2, "Missing argument 'target'"),
        (["bogus"], 2, "No such command 'bogus'"),
    ],
)
def test_bad_input_exit_codes(
    keypair: tuple[Path, Path],
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
    lockd: Lockd,
) -> None:
    manifest = tmp_path / "m.json"
    assert lockd("record", "local", "--key", keypair[0], "-o", manifest).returncode == 0
    values = {"pub": str(keypair[1]), "key": str(keypair[0]), "manifest": str(manifest)}
    result = lockd(*[a.format(**values) for a in args], env={"PWD": str(tmp_path)})
    assert result.returncode == code, result.stderr
    assert message.format(**values) in result.stderr
    assert not (Path.cwd() / "out.json").exists()


def test_bad_probe_timeout_value(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> None:
    result = lockd("observe", "local", env={"LOCKD_PROBE_TIMEOUT": "soon"})
    assert result.returncode == 2
    assert "LOCKD_PROBE_TIMEOUT='soon': give seconds between 0 and 3600" in result.stderr


def test_show_and_diff_local(keypair: tuple[Path, Path], tmp_path: Path, lockd: Lockd) -> None:
    manifest = tmp_path / "m.json"
    assert lockd("record", "local", "--key", keypair[0], "-o", manifest).returncode == 0
    shown = lockd("show", manifest)
    assert shown.returncode == 0
    assert "pydantic" in shown.stdout
    assert lockd("diff", manifest, manifest).returncode == 0


def test_verify_registry_usage_errors(keypair: tuple[Path, Path], lockd: Lockd) -> None:
    both = lockd("verify", "local", "--key", keypair[1], "--registry", "--manifest", "m.json")
    assert both.returncode == 2
    assert both.stderr.strip() == "lockd: error: give --manifest FILE or --registry, not both"
    local = lockd("verify", "local", "--key", keypair[1], "--registry", env={"COLUMNS": "300"})
    assert local.returncode == 2
    assert local.stderr.strip() == (
        f"lockd: error: --registry: local {sys.executable} has no image; give --manifest FILE"
    )
