"""Fixtures for every test: where the repository and its test assets are, the lockd command
line in a child process, and a key pair made by it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "tests" / "assets"
TEST_PASSWORD = "correct horse"  # of the keys the `keypair` fixture makes


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The root of the lockd repository (where pyproject.toml is)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def asset() -> Callable[[str], Path]:
    """``asset("images/app/Dockerfile")``: the path of a file or folder under tests/assets/,
    failing the test when it does not exist."""

    def _asset(name: str) -> Path:
        path = ASSETS / name
        if not path.exists():
            pytest.fail(f"no test asset {name!r} (looked for {path})")
        return path

    return _asset


def run_lockd(
    *args: object,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m lockd ARGS`` to completion, text output captured. The child gets this
    environment without its LOCKD_* variables (a developer's LOCKD_SERVER must not leak into a
    test), LOCKD_PASSWORD = TEST_PASSWORD, a 200-column terminal, then ``env`` on top."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    return subprocess.run(
        [sys.executable, "-m", "lockd", *map(str, args)],
        capture_output=True,
        text=True,
        env={**inherited, "LOCKD_PASSWORD": TEST_PASSWORD, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session")
def lockd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lockd(*args, env=None, cwd=None, timeout=600)``: run the lockd command line in a child
    process (see :func:`run_lockd`); the result's returncode, stdout and stderr are the test's."""
    return run_lockd


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(signer.key, signer.pub)``: a key pair made by ``lockd keygen`` (password
    TEST_PASSWORD, which ``lockd(...)`` passes on), one for the session."""
    prefix = tmp_path_factory.mktemp("keys") / "signer"
    made = run_lockd("keygen", "--output-key-prefix", prefix)
    assert made.returncode == 0, made.stderr
    return prefix.with_suffix(".key"), prefix.with_suffix(".pub")
