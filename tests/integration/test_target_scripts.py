"""Target.run_script: a script (the GPU suite, the import smoke test) run in a local target, a
running container and an image, and the same bounds as the probe: a non-zero exit, a flood of
output, a missing interpreter."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest

from lockd.errors import ProbeError
from lockd.evidence.targets.base import Target
from lockd.evidence.targets.local import LocalTarget
from lockd.evidence.targets.select import open_target

HELLO = "import sys; print('hello from', sys.argv[1])"
FAIL = "import sys; sys.stderr.write('broken\\n'); sys.exit(3)"
FLOOD = "import sys; sys.stdout.write('x' * 4096)"
VENV = "/opt/venv/bin/python"


def _run(target: Target, python: str, code: str, *args: str, max_output: int = 1024) -> bytes:
    return target.run_script(
        [python, "-c", code, *args],
        what="the test script",
        source=f"{target.info.kind} (test script)",
        timeout=120,
        max_output=max_output,
    )


@pytest.fixture
def targets(app_image: str, run_container: Callable[..., Any]) -> dict[str, tuple[Target, str]]:
    container = run_container(app_image)
    return {
        "local": (LocalTarget(sys.executable), sys.executable),
        "container": (open_target(f"container:{container.name}"), VENV),
        "image": (open_target(f"image:{app_image}"), VENV),
    }


@pytest.mark.parametrize("kind", ["local", "container", "image"])
def test_a_script_runs_and_its_stdout_comes_back(
    targets: dict[str, tuple[Target, str]], kind: str
) -> None:
    target, python = targets[kind]
    assert _run(target, python, HELLO, kind) == f"hello from {kind}\n".encode()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("local", "local (test script): probe exited with status 3: broken"),
        ("container", f"container (test script): probe ({VENV}) exited with status 3: broken"),
        ("image", f"image (test script): probe ({VENV}) exited with status 3: broken"),
    ],
)
def test_a_failing_script_names_its_status_and_stderr(
    targets: dict[str, tuple[Target, str]], kind: str, message: str
) -> None:
    target, python = targets[kind]
    with pytest.raises(ProbeError) as caught:
        _run(target, python, FAIL)
    assert str(caught.value) == message
    assert caught.value.exit_code == 3


@pytest.mark.parametrize("kind", ["local", "container", "image"])
def test_output_over_the_cap_stops_the_script(
    targets: dict[str, tuple[Target, str]], kind: str
) -> None:
    target, python = targets[kind]
    with pytest.raises(ProbeError, match=r"probe output exceeds (1 KiB|1024 bytes)") as caught:
        _run(target, python, FLOOD)
    assert caught.value.exit_code == 3
    assert _run(target, python, FLOOD, max_output=8192) == b"x" * 4096  # its own cap, not 1 KiB


def test_an_image_without_the_interpreter_says_so(targets: dict[str, tuple[Target, str]]) -> None:
    target, _ = targets["image"]
    with pytest.raises(ProbeError) as caught:
        _run(target, "/no/such/python", HELLO, "x")
    assert (
        str(caught.value)
        == "image (test script): there is no interpreter /no/such/python in the image"
    )
