"""lockd installed as a user installs it: the wheel built from this checkout, into a fresh
virtual environment, its dependencies resolved from the package index (hence ``network``).

The bare wheel must work on its own (the shipped policies and the predicate schema inside it)
and pull no server stack; ``lockd[server]`` must serve from what the wheel carries (migrations,
templates)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import venv
from collections.abc import Callable
from pathlib import Path

import pytest
from child_processes import lockd_serve
from predicates import SCHEMA, assert_valid

pytestmark = pytest.mark.network

REPO = Path(__file__).resolve().parents[2]
SERVER_STACK = {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "jinja2", "uv"}
LOCK_STACK = {"pip-tools", "uv"}
PASSWORD = "install test"


def _run(*argv: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
        env={**_clean_environ(), **(env or {})},
    )


def _clean_environ() -> dict[str, str]:
    """This environment without this checkout's venv or LOCKD_* settings leaking in."""
    drop = ("LOCKD_", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this checkout (built without build isolation: setuptools is in the venv)."""
    out = tmp_path_factory.mktemp("wheel")
    built = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--no-build-isolation",
        "--disable-pip-version-check",
        "-q",
        "-w",
        out,
        REPO,
    )
    assert built.returncode == 0, built.stderr
    (found,) = out.glob("lockd-*.whl")
    return found


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``fresh_venv(requirement)``: a new venv with ``requirement`` pip-installed; its bin/."""

    def make(requirement: str) -> Path:
        home = tmp_path_factory.mktemp("venv")
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        installed = _run(
            home / "bin" / "python",
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            requirement,
        )
        assert installed.returncode == 0, installed.stderr
        return home / "bin"

    return make


def _distributions(bin_dir: Path) -> set[str]:
    listed = _run(bin_dir / "python", "-m", "pip", "list", "--format=json")
    assert listed.returncode == 0, listed.stderr
    return {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}


def test_bare_wheel_records_and_verifies_local_with_the_shipped_audit_policy(
    wheel: Path, fresh_venv: Callable[[str], Path], tmp_path: Path
) -> None:
    bin_dir = fresh_venv(str(wheel))
    installed = _distributions(bin_dir)
    assert "lockd" in installed
    assert not installed & (SERVER_STACK | LOCK_STACK), "the bare install pulled optional stacks"

    lockd = bin_dir / "lockd"
    env = {"LOCKD_PASSWORD": PASSWORD}
    keys = _run(lockd, "keygen", "--output-key-prefix", tmp_path / "team", env=env)
    assert keys.returncode == 0, keys.stderr
    manifest = tmp_path / "local.dsse.json"
    recorded = _run(
        lockd, "record", "local", "--key", tmp_path / "team.key", "-o", manifest, env=env
    )
    assert recorded.returncode == 0, recorded.stderr
    assert_valid(manifest)  # what the installed wheel signs, against the repository's schema
    printed = _run(lockd, "schema")  # the schema is in the wheel, as committed
    assert (printed.returncode, printed.stdout) == (0, SCHEMA.read_text())
    verified = _run(
        lockd,
        "verify",
        "local",
        "--manifest",
        manifest,
        "--key",
        tmp_path / "team.pub",
        "--policy",
        "audit",
        "--json",
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["verified"] is True
    assert {c["id"]: c["status"] for c in report["checks"]}["signature"] == "pass"


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["serve"], "server"),
        (["token", "create", "ci"], "server"),
        (["lock", "requirements.in"], "lock"),
    ],
)
def test_bare_wheel_names_the_missing_extra(
    wheel: Path, fresh_venv: Callable[[str], Path], argv: list[str], extra: str
) -> None:
    bin_dir = _bare_bin(wheel, fresh_venv)
    ran = _run(bin_dir / "lockd", *argv)
    assert ran.returncode == 2, ran.stdout + ran.stderr
    command = " ".join(argv[:2] if argv[0] == "token" else argv[:1])
    message = " ".join(ran.stderr.split())
    assert f"lockd {command} needs the '{extra}' extra" in message
    assert f"pip install 'lockd[{extra}]'" in message


_BARE: dict[Path, Path] = {}


def _bare_bin(wheel: Path, fresh_venv: Callable[[str], Path]) -> Path:
    """One bare install per wheel for the extra checks (an install costs seconds)."""
    if wheel not in _BARE:
        _BARE[wheel] = fresh_venv(str(wheel))
    return _BARE[wheel]


def test_server_extra_from_the_wheel_serves_healthz_on_sqlite(
    wheel: Path, fresh_venv: Callable[[str], Path], tmp_path: Path
) -> None:
    bin_dir = fresh_venv(f"lockd[server] @ {wheel.as_uri()}")
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic"} <= _distributions(bin_dir)
    assert not _distributions(bin_dir) & LOCK_STACK
    env = {
        **_clean_environ(),
        "LOCKD_DATABASE_URL": f"sqlite:///{tmp_path / 'lockd.db'}",
        "LOCKD_ALLOW_ANONYMOUS_READ": "1",
    }
    with lockd_serve(env, tmp_path / "serve.log", python=str(bin_dir / "python")) as url:
        with urllib.request.urlopen(url + "/healthz", timeout=10) as answer:
            assert answer.status == 200
        with urllib.request.urlopen(url + "/", timeout=10) as page:  # a template from the wheel
            assert page.status == 200
            assert b"lockd" in page.read()
