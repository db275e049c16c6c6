"""Fixtures for every test: where the repository and its test assets are."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "tests" / "assets"


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
