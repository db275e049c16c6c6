"""Fixtures for every test: where the repository and its test assets are, the lockd command
line (in this process, through ``lockd.cli.main``, so that coverage sees it; or in a child
process where a test needs one), and a key pair made by it; the fixtures that stand for what a test
needs beyond ``pip install -e '.[all,dev]'`` (root, the network, torch, Python 3.8), and the
markers applied from them.

Markers need not be written by hand on a test: ``pytest_collection_modifyitems`` below
applies them by directory (tests/integration, tests/service, tests/pages, tests/install) and
by the fixtures a test asks for, directly or through other fixtures (``docker_client`` makes a
test ``integration`` wherever it is). ``scripts/test --quick`` deselects them all
(``QUICK``); the full run selects everything, and a test whose requirement is missing fails,
saying what to install: it never skips.
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import os
import shutil
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from predicates import check_recorded

REPO_ROOT = Path(__file__).resolve().parent.parent
ASSETS = REPO_ROOT / "tests" / "assets"
TEST_PASSWORD = "correct horse"  # of the keys the `keypair` fixture makes

# --- markers ------------------------------------------------------------------------------------

DIRECTORY_MARKERS = {
    "integration": "integration",
    "service": "service",
    "pages": "pages",
    "install": "network",  # fresh venvs resolved from the package index
}
"""tests/<folder>/: the marker of every test in it."""
FIXTURE_MARKERS = {
    "docker_client": "integration",  # tests/integration/conftest.py: the real daemon
    "postgres_url": "service",  # tests/service: PostgreSQL
    "browser": "pages",  # tests/pages: headless Chromium
    "root_required": "root",
    "network_access": "network",
    "torch_module": "torch",
    "old_python": "old_python",
}
"""A test that asks for the fixture (or for a fixture that does) gets the marker."""
QUICK = "not (integration or service or pages or root or network or torch or old_python)"
"""The quick tier's selection (scripts/test --quick): what ``pip install -e '.[all,dev]'``
is enough for."""
OLD_PYTHON = "3.8"
"""The oldest interpreter the probe (and the scripts it carries) must run on."""


@pytest.hookimpl(tryfirst=True)  # before -m deselects by them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test by its directory and by the fixtures it uses (see FIXTURE_MARKERS)."""
    tests = REPO_ROOT / "tests"
    for item in items:
        names: set[str] = set()
        if item.path.is_relative_to(tests):
            folder = item.path.relative_to(tests).parts[0]
            names.update([DIRECTORY_MARKERS[folder]] if folder in DIRECTORY_MARKERS else [])
        fixtures = getattr(item, "fixturenames", ())
        names.update(marker for name, marker in FIXTURE_MARKERS.items() if name in fixtures)
        for name in sorted(names - {mark.name for mark in item.iter_markers()}):
            item.add_marker(name)


@pytest.fixture(scope="session")
def root_required() -> None:
    """Ask for it (or ``@pytest.mark.usefixtures("root_required")``) in a test that needs root:
    mount namespaces (unshare), overlay whiteouts (mknod), chown, another process's root. The
    test is marked ``root``; run as another user, it fails (never skips)."""
    if os.geteuid() != 0:
        pytest.fail(
            "this test needs root (it mounts, makes device files, chowns or reads another "
            "process's /proc/PID/root): run the tests as root, or deselect it with -m 'not root'",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def network_access() -> None:
    """Ask for it in a test (or fixture) that fetches from the network (pip download of
    fixture wheels into $LOCKD_FIXTURE_CACHE, hundreds of MB the first time): the test is
    marked ``network``. It checks nothing itself; the download fails the test, saying what."""


@pytest.fixture(scope="session")
def torch_module() -> ModuleType:
    """torch, imported here rather than by the test module (a module that imports torch at its
    top stops the whole collection where torch is missing): the test is marked ``torch``, and
    fails without it."""
    try:
        import torch
    except ImportError as e:
        pytest.fail(
            f"torch is not installed in this environment ({e}): pip install torch==2.13.0 "
            "(scripts/setup installs that CPU build into .venv), or deselect with -m 'not torch'",
            pytrace=False,
        )
    return torch


def _python_version(python: str) -> str | None:
    try:
        result = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None  # e.g. a pyenv shim of a version not installed
    return result.stdout.strip()


def find_old_python() -> tuple[str | None, list[str]]:
    """(a Python 3.8 that runs, else None; the candidates tried): $LOCKD_OLD_PYTHON when set
    (then only it), else python3.8 on PATH, else pyenv's versions/3.8.* ($PYENV_ROOT, else
    ~/.pyenv)."""
    wanted = os.environ.get("LOCKD_OLD_PYTHON")
    if wanted:
        candidates = [wanted]
    else:
        root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
        pattern = f"{root}/versions/{OLD_PYTHON}.*/bin/python3"
        candidates = [shutil.which(f"python{OLD_PYTHON}") or "", *sorted(glob.glob(pattern))]
    tried = [c for c in candidates if c]
    for candidate in tried:
        if _python_version(candidate) == OLD_PYTHON:
            return candidate, tried
    return None, tried


@pytest.fixture(scope="session")
def old_python() -> str:
    """The path of a Python 3.8 (see ``find_old_python``): the test is marked ``old_python``
    and fails where there is none. The quick tier deselects it (pip cannot install one)."""
    found, tried = find_old_python()
    if found is None:
        pytest.fail(
            f"no Python {OLD_PYTHON} to check the probe's oldest-interpreter contract on "
            f"(tried: {', '.join(tried) or 'nothing found'}): install Python {OLD_PYTHON} "
            f"(e.g. `pyenv install {OLD_PYTHON}`) or set LOCKD_OLD_PYTHON to its path",
            pytrace=False,
        )
    return found


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


def _lockd_environment(env: dict[str, str] | None) -> dict[str, str]:
    """This environment without its LOCKD_* variables (a developer's LOCKD_SERVER must not leak
    into a test), LOCKD_PASSWORD = TEST_PASSWORD, a 200-column terminal, then ``env`` on top."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("LOCKD_")}
    return {**inherited, "LOCKD_PASSWORD": TEST_PASSWORD, "COLUMNS": "200", **(env or {})}


def run_lockd(
    *args: object,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``python -m lockd ARGS`` in a child process to completion, text output captured, in the
    environment :func:`_lockd_environment` makes. For what needs a process of its own: a
    deadline, signals, what a fresh interpreter imports."""
    result = subprocess.run(
        [sys.executable, "-m", "lockd", *map(str, args)],
        capture_output=True,
        text=True,
        env=_lockd_environment(env),
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    check_recorded(result.args[3:], cwd, result.returncode, result.stdout)
    return result


@contextlib.contextmanager
def _process_state(
    env: dict[str, str], cwd: Path | None
) -> Iterator[tuple[io.StringIO, io.StringIO]]:
    """os.environ, the working directory, sys.stdout/stderr and the root logger as a child
    would have them (a command may configure logging to its stderr), restored afterwards."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    root.handlers.clear()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield out, err
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def run_lockd_here(
    *args: object,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``lockd ARGS`` through ``lockd.cli.main`` in this process, as :func:`run_lockd` runs it
    in a child: the same environment, working directory and exit codes (an exception that
    escapes main is a bug: exit 1 with its traceback on stderr, as Python's would be). The
    ``timeout`` is pytest-timeout's here (the command cannot be interrupted from outside).
    Both check the envelope of every ``record`` that succeeded against the published predicate
    schema (tests/predicates.py: check_recorded)."""
    from lockd.cli import main

    argv = [str(arg) for arg in args]
    code: int = 0
    with _process_state(_lockd_environment(env), cwd) as (out, err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                err.write(e.code + "\n")
        except Exception:
            traceback.print_exc(file=err)
            code = 1
    check_recorded(argv, cwd, code, out.getvalue())
    return subprocess.CompletedProcess(
        ["lockd", *argv], code, stdout=out.getvalue(), stderr=err.getvalue()
    )


@pytest.fixture(scope="session")
def lockd() -> Callable[..., subprocess.CompletedProcess[str]]:
    """``lockd(*args, env=None, cwd=None, timeout=600)``: run the lockd command line in this
    process (see :func:`run_lockd_here`); the result's returncode, stdout and stderr are the
    test's."""
    return run_lockd_here


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(signer.key, signer.pub)``: a key pair made by ``lockd keygen`` (password
    TEST_PASSWORD, which ``lockd(...)`` passes on), one for the session."""
    prefix = tmp_path_factory.mktemp("keys") / "signer"
    made = run_lockd_here("keygen", "--output-key-prefix", prefix)
    assert made.returncode == 0, made.stderr
    return prefix.with_suffix(".key"), prefix.with_suffix(".pub")
