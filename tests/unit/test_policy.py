from __future__ import annotations

import os
from pathlib import Path

import pytest

from lockd.errors import PolicyError
from lockd.policy import (
    FilesystemPolicy,
    Policy,
    find_policy,
    load_policy,
    parse_policy,
    shipped_names,
    shipped_policy,
    watched,
)

POLICIES = Path(__file__).resolve().parents[2] / "lockd" / "policies"


def test_shipped_default_is_the_built_in_strict_policy() -> None:
    shipped = load_policy(str(POLICIES / "default.yaml"))
    rules = {"description"}
    assert shipped.model_dump(exclude=rules) == Policy().model_dump(exclude=rules)
    assert load_policy(None) == Policy()


def test_shipped_audit_warns_on_everything_but_the_signature() -> None:
    audit = load_policy(str(POLICIES / "audit.yaml"))
    levels = audit.checks.model_dump()
    assert levels.pop("signature") == "required"
    assert set(levels.values()) == {"warn"}


def test_policy_by_name_comes_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOCKD_POLICIES", raising=False)
    assert load_policy("audit").name == "audit"
    assert shipped_names() == ["audit", "default"]


def _policy_file(folder: Path, name: str, description: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(f"name: {name}\ndescription: {description}\n", encoding="utf-8")
    return path


def test_lookup_order_path_then_lockd_policies_then_shipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _policy_file(second, "default", "the user's default")
    _policy_file(second, "team", "second folder")
    _policy_file(first, "team", "first folder")
    monkeypatch.setenv("LOCKD_POLICIES", os.pathsep.join([str(first), str(second)]))
    assert load_policy("team").description == "first folder"
    assert load_policy("default").description == "the user's default"  # shadows the shipped one
    assert load_policy("audit").name == "audit"  # in no folder: the shipped one
    given = _policy_file(tmp_path / "elsewhere", "team", "given as a path")
    assert load_policy(str(given)).description == "given as a path"
    monkeypatch.chdir(tmp_path)
    _policy_file(tmp_path, "audit", "a file in the working directory")
    assert load_policy("audit.yaml").description == "a file in the working directory"


def test_unknown_policy_name_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOCKD_POLICIES", str(tmp_path))
    with pytest.raises(PolicyError) as e:
        load_policy("nosuch")
    assert str(e.value) == (
        "nosuch: no such policy file or policy name (named policies: each folder of "
        "$LOCKD_POLICIES, then the shipped audit, default)"
    )
    assert e.value.exit_code == 2


def test_find_policy_returns_none_for_an_unknown_name(tmp_path: Path) -> None:
    assert find_policy("nosuch", [tmp_path]) is None
    assert find_policy("default", [tmp_path]) == shipped_policy("default")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "p.yaml: the policy is empty"),
        ("- a\n- b\n", "p.yaml: a policy must be a mapping, got list"),
        ("checks: [", "p.yaml: not valid YAML"),
        ("chekcs: {}\n", "p.yaml: unknown key 'chekcs'"),
        ("checks:\n  pakages: warn\n", "p.yaml: unknown key 'checks.pakages'"),
        (
            "checks:\n  image: maybe\n",
            "p.yaml: checks.image: must be one of required, warn, ignore",
        ),
        ("checks:\n  signature: warn\n", "p.yaml: checks.signature must be 'required'"),
        ("filesystem:\n  watch: 3\n", "p.yaml: filesystem.watch: Input should be a valid list"),
    ],
)
def test_bad_policies_name_the_file_and_key(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, "p.yaml")
    assert str(e.value).startswith(message)
    assert e.value.exit_code == 2


def test_missing_policy_file() -> None:
    with pytest.raises(PolicyError, match="nope.yaml: no such policy file"):
        load_policy("nope.yaml")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/opt/venv/lib/python3.11/site-packages/six.py", True),
        ("/usr/lib/python3/dist-packages/apt/__init__.py", True),
        ("/usr/local/cuda-12.4/lib64/libcudart.so.12", True),
        ("/usr/lib/x86_64-linux-gnu/libcudnn.so.9", True),
        ("/opt/venv/bin/python3", True),
        ("/opt/venv/lib/python3.11/site-packages/__pycache__/six.cpython-311.pyc", False),
        ("/opt/venv/lib/python3.11/site-packages/mod.pyc", False),
        ("/tmp/scratch.py", False),
        ("/root/.cache/pip/http/x", False),
        ("/etc/passwd", False),
        ("/var/log/dpkg.log", False),
    ],
)
def test_watched_paths(path: str, expected: bool) -> None:
    assert watched(path, FilesystemPolicy()) is expected
