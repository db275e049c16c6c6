"""Which extra a command needs, and the error where it is missing (exit 2, naming it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from lockd.cli import extras, main
from lockd.cli.extras import EXTRA_MODULES, MissingExtraError, require_extra

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    real = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda name: None if name in modules else real(name))


def test_a_missing_module_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, "fastapi", "jinja2")
    with pytest.raises(MissingExtraError) as e:
        require_extra("server", "serve")
    assert str(e.value) == (
        "lockd serve needs the 'server' extra, which is not installed (missing: fastapi, "
        "jinja2): pip install 'lockd[server]' (or 'lockd[all]')"
    )
    assert e.value.exit_code == 2


def test_installed_extras_pass() -> None:
    require_extra("server", "serve")
    require_extra("lock", "lock")


@pytest.mark.parametrize(
    ("argv", "hidden", "says"),
    [
        (["serve"], "uvicorn", "lockd serve needs the 'server' extra"),
        (["token", "create", "ci"], "sqlalchemy", "lockd token create needs the 'server' extra"),
        (["lock", "requirements.in"], "piptools", "lockd lock needs the 'lock' extra"),
    ],
)
def test_commands_exit_2_naming_their_extra(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    hidden: str,
    says: str,
) -> None:
    _hide(monkeypatch, hidden)
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert says in " ".join(capsys.readouterr().err.split())


def test_the_bare_install_declares_no_optional_stack() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    bare = {_name(r) for r in project["dependencies"]}
    optional = project["optional-dependencies"]
    assert not bare & (
        {_name(r) for r in optional["server"]}
        | {_name(r) for r in optional["lock"]}
        | {_name(r) for r in optional["sigstore"]}
    )
    assert {"fastapi", "uvicorn", "sqlalchemy", "alembic", "psycopg", "jinja2"} <= {
        _name(r) for r in optional["server"]
    }
    assert {"pip-tools", "uv"} == {_name(r) for r in optional["lock"]}
    assert {"sigstore"} == {_name(r) for r in optional["sigstore"]}
    assert optional["all"] == ["lockd[lock,server,sigstore]"]
    assert set(EXTRA_MODULES) == {"lock", "server", "sigstore"}


def _name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name.lower()
