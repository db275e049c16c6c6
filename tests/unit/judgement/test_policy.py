from __future__ import annotations

import os
from pathlib import Path

import pytest

from lockd.errors import PolicyError
from lockd.judgement.policy import (
    DEFAULT_VOLATILE,
    FilesystemPolicy,
    Policy,
    find_policy,
    load_policy,
    parse_policy,
    shadows_code,
    shipped_names,
    shipped_policy,
    volatile_places,
)

POLICIES = Path(__file__).resolve().parents[3] / "lockd" / "policies"


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


HOME_ENV = {"HF_HOME": "/data/hf", "XDG_CACHE_HOME": "/scratch/cache"}
SITE = "/opt/venv/lib/python3.11/site-packages"


@pytest.mark.parametrize(
    ("path", "volatile"),
    [
        ("/tmp/scratch.py", True),
        ("/tmp/torchinductor_root/ab/cabc.py", True),
        ("/var/tmp/x/y", True),
        ("/run/nvidia-persistenced/socket", True),
        ("/var/log/dpkg.log", True),
        ("/root/.cache/pip/http/x", True),
        ("/home/alice/.cache/huggingface/hub/models--x/blob", True),
        ("/root/.triton/cache/abc/kernel.cubin", True),
        ("/root/.nv/ComputeCache/0/1/abc", True),
        ("/root/.config/matplotlib/stylelib/x.mplstyle", True),
        ("/root/.ipython/profile_default/history.sqlite", True),
        ("/root/.ipython/profile_default/startup/README", True),
        ("/root/.jupyter/lab/workspaces/default.jupyterlab-workspace", True),
        ("/root/.local/share/jupyter/runtime/kernel-1.json", True),
        ("/work/.ipynb_checkpoints/run-checkpoint.ipynb", True),
        ("/root/.bash_history", True),
        ("/home/bob/.python_history", True),
        (f"{SITE}/__pycache__/six.cpython-311.pyc", True),
        ("/data/hf/hub/models--gpt2/blobs/abc", True),  # $HF_HOME
        ("/scratch/cache/pip/x", True),  # $XDG_CACHE_HOME
        # everything else is drift
        (f"{SITE}/six.py", False),
        (f"{SITE}/mod.pyc", False),  # a bare .pyc is a module of its own
        (f"{SITE}/sitecustomize.py", False),
        ("/etc/ld.so.preload", False),
        ("/etc/ld.so.conf.d/x.conf", False),
        ("/etc/ld.so.cache", False),
        ("/usr/local/bin/python3", False),
        ("/opt/venv/bin/activate", False),
        ("/etc/passwd", False),
        ("/var/cache/apt/archives/x.deb", False),
        ("/root/.bashrc", False),
        ("/root/.local/lib/python3.11/site-packages/x.pth", False),
        # never volatile, though under a volatile place: run at start-up
        ("/root/.ipython/profile_default/startup/00-evil.py", False),
        ("/home/alice/.ipython/profile_x/ipython_config.py", False),
        ("/root/.jupyter/jupyter_server_config.py", False),
        ("/root/.local/share/jupyter/kernels/python3/kernel.json", False),
        ("/root/.config/matplotlib/matplotlibrc", False),
    ],
)
def test_default_volatile_places(path: str, volatile: bool) -> None:
    assert (path in volatile_places(DEFAULT_VOLATILE, HOME_ENV)) is volatile


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"HF_HOME": "/"}, ["HF_HOME=/: the root or a home directory as a whole"]),
        ({"HF_HOME": "/usr"}, ["HF_HOME=/usr: at, in or above /usr"]),
        ({"HF_HOME": "/usr/local/hf"}, ["HF_HOME=/usr/local/hf: at, in or above /usr"]),
        ({"TRITON_CACHE_DIR": "/var"}, ["TRITON_CACHE_DIR=/var: at, in or above /var/lib"]),
        (
            {"XDG_CACHE_HOME": "/root"},
            ["XDG_CACHE_HOME=/root: the root or a home directory as a whole"],
        ),
        ({"HF_HOME": "hf"}, ["HF_HOME=hf: not a normalised absolute path"]),
        ({"HF_HOME": "/data/../usr"}, ["HF_HOME=/data/../usr: not a normalised absolute path"]),
        ({"HF_HOME": "/data/*"}, ["HF_HOME=/data/*: holds glob characters"]),
        ({"HF_HOME": "/data/hf/"}, []),
    ],
)
def test_a_variable_cannot_make_a_system_place_volatile(
    env: dict[str, str], refused: list[str]
) -> None:
    volatile = volatile_places(DEFAULT_VOLATILE, env)
    assert volatile.refused == refused
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" not in volatile
    assert "/root/.bashrc" not in volatile


def test_nothing_below_a_place_python_imports_from_is_volatile_but_bytecode() -> None:
    volatile = volatile_places(DEFAULT_VOLATILE, {}, ["/tmp/lib", "/root/.cache/py"])
    assert "/tmp/scratch" in volatile
    assert "/tmp/lib/sitecustomize.py" not in volatile
    assert "/tmp/lib/pkg/mod.py" not in volatile
    assert "/tmp/lib/__pycache__/m.cpython-311.pyc" in volatile
    assert "/root/.cache/py/evil.pth" not in volatile
    assert volatile.skips("/var/log")
    assert not volatile.skips("/tmp")  # on the way to /tmp/lib
    assert not volatile.skips("/tmp/lib")


def test_a_walk_descends_where_an_exception_may_lie() -> None:
    volatile = volatile_places(DEFAULT_VOLATILE, {})
    assert volatile.skips("/tmp")
    assert volatile.skips("/root/.cache")
    assert volatile.skips("/home/alice/.triton")
    assert not volatile.skips("/root/.ipython")  # its startup files are never volatile
    assert not volatile.skips("/root/.local/share/jupyter")  # nor its kernel specs
    assert not volatile.skips("/root")
    assert not volatile.skips("/opt/venv/lib/python3.11/site-packages")


def test_a_policy_adds_volatile_places_with_ignore() -> None:
    policy = parse_policy("filesystem:\n  ignore: ['/srv/scratch/**']\n", "p.yaml")
    fs = policy.filesystem
    assert fs.volatile == list(DEFAULT_VOLATILE)
    assert "/srv/scratch/a" in volatile_places(fs.volatile + fs.ignore, {})
    assert fs.watch is None


def test_watch_is_accepted_as_an_explicit_narrowing() -> None:
    policy = parse_policy("filesystem:\n  watch: ['**/site-packages/**']\n", "p.yaml")
    assert policy.filesystem.watch == ["**/site-packages/**"]
    assert shadows_code(f"{SITE}/idna", policy.filesystem)
    assert not shadows_code("/usr/local/cuda/lib64", policy.filesystem)  # narrowed


@pytest.mark.parametrize(
    ("destination", "shadows"),
    [
        (f"{SITE}/idna", True),
        ("/usr/local/cuda-12.4", True),
        ("/usr/lib/x86_64-linux-gnu", True),
        ("/etc/ld.so.conf.d", True),
        ("/data", False),
        ("/models", False),
        ("/tmp/work", False),
    ],
)
def test_mounts_over_code_places(destination: str, shadows: bool) -> None:
    assert shadows_code(destination, FilesystemPolicy()) is shadows
