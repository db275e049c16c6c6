"""Policies: which checks must pass, which only warn, and what to ignore.

A policy is written by a person, so every unknown key is an error that names the key.
The defaults of these models are the strict policy shipped as lockd/policies/default.yaml.
Named policies are looked up in $LOCKD_POLICIES's folders, then among the shipped ones.
"""

import os
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lockd.errors import PolicyError

Level = Literal["required", "warn", "ignore"]

DEFAULT_WATCH = (
    "**/site-packages/**",
    "**/dist-packages/**",
    "/usr/lib/python3*/**",
    "/usr/local/lib/python3*/**",
    "**/bin/python*",
    "/usr/local/cuda*/**",
    "/usr/local/nvidia/**",
    "/usr/lib/x86_64-linux-gnu/libcu*",
    "/usr/lib/x86_64-linux-gnu/libnccl*",
    "/usr/lib/x86_64-linux-gnu/libnv*",
    "/usr/lib/aarch64-linux-gnu/libcu*",
    "/usr/lib/aarch64-linux-gnu/libnccl*",
    "/usr/lib/aarch64-linux-gnu/libnv*",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d/**",
)
DEFAULT_IGNORE = (
    "/tmp/**",
    "/var/tmp/**",
    "/var/cache/**",
    "/var/log/**",
    "/root/.cache/**",
    "/home/*/.cache/**",
    "**/__pycache__/**",
    "*.pyc",
)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Checks(_Strict):
    signature: Level = "required"
    image: Level = "required"
    packages: Level = "required"
    filesystem: Level = "required"
    python: Level = "required"
    env: Level = "required"
    system: Level = "required"
    lock: Level = "required"
    cuda: Level = "required"
    driver: Level = "required"
    gpu: Level = "required"
    integrity: Level = "required"
    coherence: Level = "required"
    libraries: Level = "required"


class PackagesPolicy(_Strict):
    ignore: list[str] = Field(default_factory=list)


class FilesystemPolicy(_Strict):
    watch: list[str] = Field(default_factory=lambda: list(DEFAULT_WATCH))
    ignore: list[str] = Field(default_factory=lambda: list(DEFAULT_IGNORE))


class EnvPolicy(_Strict):
    ignore: list[str] = Field(default_factory=list)


class Policy(_Strict):
    name: str = "default"
    description: str = ""
    checks: Checks = Field(default_factory=Checks)
    packages: PackagesPolicy = Field(default_factory=PackagesPolicy)
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    env: EnvPolicy = Field(default_factory=EnvPolicy)

    def level(self, check_id: str) -> Level:
        level: Level = getattr(self.checks, check_id, "required")
        return level


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    if first["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    if first["type"] == "literal_error":
        return f"{where}: must be one of required, warn, ignore (got {first['input']!r})"
    return f"{where}: {first['msg']}"


def parse_policy(text: str, source: str) -> Policy:
    """Parse policy YAML. Raises PolicyError naming `source` and the offending key."""
    import yaml  # only when a policy file is read: the default policy needs no YAML

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PolicyError(f"{source}: not valid YAML: {e}") from e
    if data is None:
        raise PolicyError(
            f"{source}: the policy is empty; start from lockd's shipped lockd/policies/default.yaml"
        )
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: a policy must be a mapping, got {type(data).__name__}")
    try:
        policy = Policy.model_validate(data)
    except ValidationError as e:
        raise PolicyError(f"{source}: {_describe(e)}") from e
    if policy.checks.signature != "required":
        raise PolicyError(
            f"{source}: checks.signature must be 'required': an untrusted manifest proves nothing"
        )
    return policy


def search_dirs(environ: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The folders named policies are looked up in before the shipped ones: $LOCKD_POLICIES,
    a list separated like PATH."""
    env = os.environ if environ is None else environ
    return tuple(Path(d) for d in env.get("LOCKD_POLICIES", "").split(os.pathsep) if d)


def shipped_policy(name: str) -> Path | None:
    """The policy named ``name`` that ships inside the lockd package, if there is one."""
    found = resources.files("lockd") / "policies" / f"{name}.yaml"
    return Path(str(found)) if found.is_file() else None


def find_policy(name: str, search: Sequence[Path]) -> Path | None:
    """Where the policy named ``name`` lives: the first folder of ``search`` that has
    ``name.yaml`` (so a user's default.yaml shadows the shipped one), else the shipped one."""
    for directory in search:
        candidate = directory / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return shipped_policy(name)


POLICY_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def load_policy(spec: str | None) -> Policy:
    """A policy by file path, else by name (see :func:`find_policy`, searching
    :func:`search_dirs`); None is the strict default.

    Raises:
        PolicyError: no such file or name, an unreadable or malformed policy.
    """
    if spec is None:
        return default_policy()
    path: Path | None = Path(spec)
    if not Path(spec).exists() and POLICY_NAME.match(spec):
        path = find_policy(spec, search_dirs())
    if path is None:
        raise PolicyError(
            f"{spec}: no such policy file or policy name (named policies: each folder of "
            f"$LOCKD_POLICIES, then the shipped {', '.join(shipped_names())})"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise PolicyError(f"{spec}: no such policy file or policy name") from e
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the policy: {e}") from e
    return parse_policy(text, str(path))


def shipped_names() -> list[str]:
    """The names of the policies shipped inside lockd."""
    folder = resources.files("lockd") / "policies"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


@cache
def default_policy() -> Policy:
    return Policy()


@cache
def _compile(pattern: str) -> re.Pattern[str]:
    """Glob to regex: '**' crosses directories, '*' and '?' do not; no slash: match the name."""
    if "/" not in pattern:
        pattern = "**/" + pattern
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("^" + "".join(out) + "$")


def matches(path: str, patterns: list[str]) -> bool:
    return any(_compile(p).match(path) for p in patterns)


def watched(path: str, policy: FilesystemPolicy) -> bool:
    """A path lockd must account for: under a watched pattern and under no ignored one."""
    return matches(path, policy.watch) and not matches(path, policy.ignore)
