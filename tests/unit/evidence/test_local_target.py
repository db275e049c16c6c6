"""LocalTarget and run_probe_subprocess against real child processes that misbehave."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import pytest

from lockd.errors import ProbeError
from lockd.evidence.targets.base import Target, parse_probe_output, run_probe_subprocess
from lockd.evidence.targets.local import LocalTarget
from lockd.probe import probe_source


def fake_python(tmp_path: Path, script: str) -> str:
    """An executable that stands where a Python interpreter should be."""
    path = tmp_path / "python3"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_observes_this_python() -> None:
    target: Target = LocalTarget()
    observation = target.observe()
    assert observation.target.kind == "local"
    assert observation.target.ref == sys.executable
    assert observation.host is None
    assert observation.probe is not None
    assert observation.probe.python.version == platform.python_version()
    assert "pydantic" in {d.name for d in observation.probe.distributions}


def test_a_named_interpreter_is_the_ref() -> None:
    target = LocalTarget(sys.executable)
    assert target.info.ref == sys.executable
    assert target.observe().probe is not None


def test_no_such_interpreter(tmp_path: Path) -> None:
    missing = str(tmp_path / "bin" / "python3")
    with pytest.raises(ProbeError, match=r"no such interpreter: .*/bin/python3") as caught:
        LocalTarget(missing).observe()
    assert caught.value.exit_code == 3
    assert f"local Python {missing}:" in str(caught.value)


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    path = tmp_path / "python3"
    path.write_text("not a program")
    with pytest.raises(ProbeError, match="cannot run .*python3: Permission denied"):
        LocalTarget(str(path)).observe()


@pytest.mark.timeout(30)
def test_a_probe_that_hangs_is_killed(tmp_path: Path) -> None:
    # sleep runs as a child of sh: the whole process group must go, or its open stdout
    # would keep lockd waiting.
    python = fake_python(tmp_path, "sleep 1000\n")
    with pytest.raises(ProbeError, match=r"probe timed out after 0\.5s"):
        LocalTarget(python, timeout=0.5).observe()


@pytest.mark.timeout(30)
def test_a_probe_that_closes_stdout_but_keeps_running(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec >&- 2>&-\nsleep 1000\n")
    with pytest.raises(ProbeError, match=r"timed out after 0\.5s \(it closed its output"):
        LocalTarget(python, timeout=0.5).observe()


@pytest.mark.timeout(30)
def test_a_probe_that_floods_stdout_is_cut_off(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "yes\n")
    with pytest.raises(ProbeError, match="probe output exceeds 100000 bytes"):
        LocalTarget(python, max_output=100_000).observe()


def test_a_probe_that_prints_garbage(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 'Segmentation fault? no: garbage'\n")
    with pytest.raises(ProbeError, match="probe printed invalid JSON"):
        LocalTarget(python).observe()


def test_a_probe_that_fails_quotes_the_end_of_its_stderr(tmp_path: Path) -> None:
    python = fake_python(
        tmp_path, "yes 'noise' | head -c 100000 >&2\necho 'Traceback: the reason' >&2\nexit 4\n"
    )
    with pytest.raises(ProbeError, match="probe exited with status 4: ") as caught:
        LocalTarget(python).observe()
    message = str(caught.value)
    assert message.endswith("Traceback: the reason")
    assert len(message) < 2200


def test_a_probe_killed_by_a_signal(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "kill -9 $$\n")
    with pytest.raises(ProbeError, match=r"probe was killed by signal 9: \(nothing on stderr\)"):
        LocalTarget(python).observe()


def test_stdin_feeds_the_probe(tmp_path: Path) -> None:
    # how a probe reaches a container: `python3 -` reading the source from stdin
    output = run_probe_subprocess(
        [sys.executable, "-"], "stdin probe", stdin=probe_source().encode()
    )
    assert parse_probe_output(output, "stdin probe").probe_version == 1


def test_stdin_larger_than_a_pipe_buffer_round_trips() -> None:
    data = os.urandom(1024 * 1024)
    assert run_probe_subprocess(["cat"], "cat", stdin=data) == data


def test_a_probe_that_ignores_its_stdin(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec 0<&-\necho '{}'\n")
    output = run_probe_subprocess([python], "deaf", stdin=b"x" * (1024 * 1024))
    assert output == b"{}\n"


def test_no_stdin_means_end_of_file() -> None:
    assert run_probe_subprocess(["cat"], "cat") == b""
