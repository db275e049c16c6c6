"""The GPU validation suite through Docker: `docker exec` in a running container, and the only
process of a throw-away container of an image, on the CPU fallback (CI machines have no GPU;
the daemon has no NVIDIA runtime, so no GPU is asked for)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

PASSWORD = "gpu pw"


def lockd(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_GPU")}
    env.update({"LOCKD_PASSWORD": PASSWORD, "COLUMNS": "200"})
    return subprocess.run(
        [sys.executable, "-m", "lockd", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
        check=False,
    )


def test_the_suite_runs_in_a_container_and_verifies_in_the_image(
    torch_cpu_image: str, run_container: Callable[..., Any], tmp_path: Path
) -> None:
    assert lockd(tmp_path, "keygen", "--output-key-prefix", "k").returncode == 0
    container = run_container(torch_cpu_image)
    recorded = lockd(
        tmp_path, "record", f"container:{container.name}", "--key", "k.key", "--gpu", "-o", "m.json"
    )
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    assert "GPU suite on the CPU" in recorded.stdout

    envelope = json.loads((tmp_path / "m.json").read_text())
    predicate = json.loads(base64.b64decode(envelope["payload"]))["predicate"]
    [result] = predicate["gpu_suites"]
    tests = {t["name"]: t for t in result["tests"]}
    assert tests["fp32_matmul"]["status"] == "ok"
    compiled = tests["compiled"]
    if compiled["status"] != "ok":  # the image has no C++ compiler for Inductor
        assert compiled["status"] == "skipped"
        assert compiled["reason"].startswith("torch.compile is unavailable here: ")

    verified = lockd(
        tmp_path,
        "verify",
        f"image:{torch_cpu_image}",
        "--manifest",
        "m.json",
        "--key",
        "k.pub",
        "--gpu",
        "--json",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    [gpu] = [c for c in json.loads(verified.stdout)["checks"] if c["id"] == "gpu"]
    assert gpu["status"] == "pass"
    assert gpu["message"].startswith("bit for bit (same comparison key)")
