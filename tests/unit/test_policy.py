from __future__ import annotations

from pathlib import Path

import pytest

from lockd.errors import PolicyError
from lockd.policy import FilesystemPolicy, Policy, load_policy, parse_policy, watched

POLICIES = Path(__file__).resolve().parents[2] / "policies"


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


def test_policy_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCKD_POLICIES", str(POLICIES))
    assert load_policy("audit").name == "audit"


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
