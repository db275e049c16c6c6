"""The GPU validation suite through Docker: `docker exec` in a running container, and the only
process of a throw-away container of an image, on the CPU fallback (CI machines have no GPU;
the daemon has no NVIDIA runtime, so no GPU is asked for)."""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

Lockd = Callable[..., subprocess.CompletedProcess[str]]  # the `lockd` fixture (tests/conftest.py)
SUITE_TIMEOUT = 900  # a cold import of torch, the suite, in a container and in an image


def test_the_suite_runs_in_a_container_and_verifies_in_the_image(
    torch_cpu_image: str,
    run_container: Callable[..., Any],
    tmp_path: Path,
    keypair: tuple[Path, Path],
    lockd: Lockd,
) -> None:
    key, pub = keypair
    out = tmp_path / "m.json"
    container = run_container(torch_cpu_image)
    recorded = lockd(
        "record",
        f"container:{container.name}",
        "--key",
        key,
        "--gpu",
        "-o",
        out,
        timeout=SUITE_TIMEOUT,
    )
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "GPU suite on the CPU" in recorded.stdout

    envelope = json.loads(out.read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    [result] = predicate["gpu_suites"]
    tests = {t["name"]: t for t in result["tests"]}
    assert tests["fp32_matmul"]["status"] == "ok"
    compiled = tests["compiled"]
    if compiled["status"] != "ok":  # the image has no C++ compiler for Inductor
        assert compiled["status"] == "skipped"
        assert compiled["reason"].startswith("torch.compile is unavailable here: ")

    verified = lockd(
        "verify",
        f"image:{torch_cpu_image}",
        "--manifest",
        out,
        "--key",
        pub,
        "--gpu",
        "--json",
        timeout=SUITE_TIMEOUT,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [gpu] = [c for c in json.loads(verified.stdout)["checks"] if c["id"] == "gpu"]
    assert gpu["status"] == "pass"
    assert gpu["message"].startswith("bit for bit (same comparison key)")
