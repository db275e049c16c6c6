"""Policies: which checks must pass, which only warn, and what to ignore.

A policy is written by a person, so every unknown key is an error that names the key.
The defaults of these models are the strict policy shipped as lockd/policies/default.yaml.
Named policies are looked up in $LOCKD_POLICIES's folders, then among the shipped ones.
"""

import os
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from lockd.errors import PolicyError
from lockd.judgement.checks import REGISTRY, SIGNATURE, Level

DEFAULT_VOLATILE = (
    # temporary directories
    "/tmp/**",
    "/var/tmp/**",
    "/run/**",
    # logs
    "/var/log/**",
    # caches: pip, Hugging Face, matplotlib's fonts, torch hub... (XDG's cache directory)
    "~/.cache/**",
    "$XDG_CACHE_HOME/**",
    "$HF_HOME/**",
    "$PIP_CACHE_DIR/**",
    # torch.compile: Inductor (/tmp/torchinductor_<user>, under /tmp above) and Triton
    "$TORCHINDUCTOR_CACHE_DIR/**",
    "~/.triton/**",
    "$TRITON_CACHE_DIR/**",
    # CUDA's JIT cache
    "~/.nv/ComputeCache/**",
    "$CUDA_CACHE_PATH/**",
    # matplotlib, IPython and Jupyter state
    "~/.config/matplotlib/**",
    "$MPLCONFIGDIR/**",
    "~/.ipython/**",
    "~/.jupyter/**",
    "~/.local/share/jupyter/**",
    "**/.ipynb_checkpoints/**",
    # shell and Python history
    "~/.bash_history",
    "~/.zsh_history",
    "~/.sh_history",
    "~/.ash_history",
    "~/.python_history",
    # bytecode Python writes beside its sources (a bare .pyc is a module of its own: not here);
    # read all the same (BYTECODE_PLACE), so that a policy without it judges it
    "**/__pycache__/**",
    # never volatile, though under a place above: what IPython, Jupyter and matplotlib run or
    # import at start-up (none of them writes these files itself)
    "!~/.ipython/profile_*/startup/*.py",
    "!~/.ipython/profile_*/startup/*.ipy",
    "!~/.ipython/profile_*/*_config.py",
    "!~/.jupyter/*_config.py",
    "!~/.local/share/jupyter/kernels/**",
    "!~/.config/matplotlib/matplotlibrc",
    "!$MPLCONFIGDIR/matplotlibrc",
)
"""The places a container may write to without drifting (the strict policy's
``filesystem.volatile``): every other change relative to the image is drift. ``~/`` stands for
/root and every /home/*; ``$NAME`` for the directory the container's configured environment
gives that variable (see :func:`volatile_places`); ``!`` marks a place that is never volatile,
whatever else matches it."""

BYTECODE_PLACE = "**/__pycache__/**"
"""The one default volatile place lockd's walk reads (it holds code: a crafted .pyc runs)."""

CODE_PLACES = (
    "**/site-packages/**",
    "**/dist-packages/**",
    "/usr/lib/python3*/**",
    "/usr/local/lib/python3*/**",
    "**/bin/python*",
    "/usr/local/cuda*/**",
    "/usr/local/nvidia/**",
    "/usr/lib/x86_64-linux-gnu/**",
    "/usr/lib/aarch64-linux-gnu/**",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d/**",
)
"""Where code is loaded from: a mount over one of them (or over a place the probe found Python
in) is a ``mount`` finding. Files are judged deny-by-default (``volatile``); mounts by this
list, since mounting data (/data, /models) is how ML containers are run."""

_SYSTEM = (
    *("/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot"),
    *("/dev", "/proc", "/sys", "/var/lib", "/opt/conda"),
)
_GLOB = re.compile(r"[*?\[\]]")
_VARIABLE = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)(/.*)?$")
_HOME = re.compile(r"^/(root|home/[^/]+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


if TYPE_CHECKING:
    Checks = BaseModel
else:
    Checks = create_model(
        "Checks",
        __base__=_Strict,
        __doc__="The level of every check (lockd.judgement.checks), defaulting to the strict's.",
        **{kind.id: (Level, kind.default) for kind in REGISTRY.values()},
    )
"""A model with one field per check of the registry, so a policy cannot miss or mistype one."""


class PackagesPolicy(_Strict):
    ignore: list[str] = Field(default_factory=list)


class FilesystemPolicy(_Strict):
    """Deny by default: every change to a container's filesystem relative to its image is
    drift, except under ``volatile`` (the enumerated places in DEFAULT_VOLATILE) and the
    places a policy adds in ``ignore``. ``watch``, when given, narrows the check to changes
    under its patterns: the report says so (``narrowed``), since an allow-list always misses
    the next path."""

    volatile: list[str] = Field(default_factory=lambda: list(DEFAULT_VOLATILE))
    ignore: list[str] = Field(default_factory=list)
    watch: list[str] | None = None

    def places(self, env: Mapping[str, str], guarded: Sequence[str] = ()) -> "Volatile":
        """This policy's volatile places for a container configured with ``env``, nothing
        volatile below ``guarded`` but ``__pycache__`` (see :func:`volatile_places`): the one
        list every check that needs it judges by."""
        return volatile_places(self.volatile + self.ignore, env, guarded)

    def patterns(self) -> list[str]:
        """``volatile`` and ``ignore`` as plain patterns: ``~/`` expanded, places named by a
        variable and ``!`` exceptions left out (what lockd.evidence.integrity skips of unlisted
        files)."""
        return volatile_places(self.volatile + self.ignore, {}).positive


class EnvPolicy(_Strict):
    ignore: list[str] = Field(default_factory=list)


DEFAULT_LAUNCHER_ENV = (
    # torchrun (torch.distributed.run): each worker's place in the job, and its defaults
    *("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE"),
    *("ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"),
    *("TORCHELASTIC_*", "TORCH_NCCL_ASYNC_ERROR_HANDLING"),
    # the devices a scheduler hands a job; Jupyter's kernel launcher
    *("*_VISIBLE_DEVICES", "JPY_*"),
    # launchers that ask for unbuffered output or a fixed hash seed
    *("PYTHONUNBUFFERED", "PYTHONHASHSEED"),
)
"""The variables launchers set by design in a workload's environment: not drift (the strict
policy's ``workload.launcher_env``; name patterns, ``*`` any run of characters)."""

DEFAULT_JIT = (
    # torch.compile: Inductor's generated code, and Triton's kernels
    "/tmp/torchinductor_*/**",
    "$TORCHINDUCTOR_CACHE_DIR/**",
    "~/.triton/**",
    "$TRITON_CACHE_DIR/**",
    # CUDA's JIT cache; torch.utils.cpp_extension.load's builds
    "~/.nv/ComputeCache/**",
    "$CUDA_CACHE_PATH/**",
    "~/.cache/torch_extensions/**",
    "$TORCH_EXTENSIONS_DIR/**",
)
"""Where code generated at run time is mapped from (the strict policy's ``workload.jit``):
reported with its hash at ``workload.jit_level`` (``warn``), not failed as code from outside
the image. Patterns as ``filesystem.volatile``'s."""


class WorkloadPolicy(_Strict):
    """How the ``workload`` check treats what launchers and compilers do by design:
    ``launcher_env``, variable names (patterns) not judged in a workload's environment (the
    ``env.ignore`` names are not judged either); ``jit``, the places generated code is mapped
    from, reported at ``jit_level``."""

    launcher_env: list[str] = Field(default_factory=lambda: list(DEFAULT_LAUNCHER_ENV))
    jit: list[str] = Field(default_factory=lambda: list(DEFAULT_JIT))
    jit_level: Level = "warn"


class Policy(_Strict):
    name: str = "default"
    description: str = ""
    checks: Checks = Field(default_factory=Checks)
    packages: PackagesPolicy = Field(default_factory=PackagesPolicy)
    filesystem: FilesystemPolicy = Field(default_factory=FilesystemPolicy)
    env: EnvPolicy = Field(default_factory=EnvPolicy)
    workload: WorkloadPolicy = Field(default_factory=WorkloadPolicy)

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
    if policy.level(SIGNATURE) != "required":
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


def matches(path: str, patterns: Sequence[str]) -> bool:
    return any(_compile(p).match(path) for p in patterns)


def _refused(value: str) -> str | None:
    """Why a variable's value is not taken as a volatile directory, None when it is."""
    if not value.startswith("/") or posixpath.normpath(value) != (value.rstrip("/") or "/"):
        return "not a normalised absolute path"
    if _GLOB.search(value):
        return "holds glob characters"
    value = value.rstrip("/") or "/"
    if value == "/" or _HOME.match(value):
        return "the root or a home directory as a whole"
    for place in _SYSTEM:
        if value == place or value.startswith(place + "/") or place.startswith(value + "/"):
            return f"at, in or above {place}"
    return None


@dataclass(frozen=True)
class Volatile:
    """A policy's volatile places for one container: ``positive`` patterns, ``negative`` ones
    (never volatile, whatever else matches), ``refused``: the variables whose value was not
    taken (``NAME=value: why``), ``guarded``: directories below which nothing is volatile but
    bytecode (the places Python imports from)."""

    positive: list[str]
    negative: list[str]
    refused: list[str] = field(default_factory=list)
    guarded: tuple[str, ...] = ()

    @cached_property
    def _positive(self) -> re.Pattern[str] | None:
        return _union(self.positive)

    @cached_property
    def _negative(self) -> re.Pattern[str] | None:
        return _union(self.negative)

    def __contains__(self, path: object) -> bool:
        """Whether a change at ``path`` (container-absolute) is not drift."""
        if not isinstance(path, str) or self._positive is None:
            return False
        if not self._positive.match(path):
            return False
        if self._negative is not None and self._negative.match(path):
            return False
        if self.guarded and not _BYTECODE.match(path):
            parent = posixpath.dirname(path)
            for place in self.guarded:
                if parent == place or path.startswith(place + "/"):
                    return False
        return True

    def skips(self, directory: str) -> bool:
        """Whether nothing below ``directory`` can be drift: a walk need not descend into it."""
        below = directory.rstrip("/") + "/"
        if self._positive is None or not self._positive.match(below):
            return False
        if any(_may_hold(pattern, directory) for pattern in self.negative):
            return False
        return bool(_BYTECODE.match(below)) or not any(
            place == directory or place.startswith(below) or below.startswith(place + "/")
            for place in self.guarded
        )


_BYTECODE = re.compile(r"^(?:.*/)?__pycache__/")


def _may_hold(pattern: str, directory: str) -> bool:
    """Whether ``pattern`` may match something below ``directory``, segment by segment."""
    parts = pattern.strip("/").split("/")
    for depth, name in enumerate(directory.strip("/").split("/")):
        if depth >= len(parts) - 1 or "**" in parts[depth]:
            return depth < len(parts) - 1 or "**" in parts[depth]
        segment = re.escape(parts[depth]).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if not re.fullmatch(segment, name):
            return False
    return True


def _union(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{_compile(p).pattern})" for p in patterns))


def volatile_places(
    patterns: Sequence[str],
    env: Mapping[str, str],
    guarded: Sequence[str] = (),
) -> Volatile:
    """The volatile places of ``patterns`` (a policy's ``volatile`` + ``ignore``) for a
    container whose configured environment is ``env`` (HostEvidence.config_env). Pure.

    ``~/x`` stands for /root/x and /home/*/x. ``$NAME/x`` for the directory ``env`` gives NAME,
    when it has one that is safe: a normalised absolute path that is not /, a home directory
    as a whole, nor at, in or above a system directory (/usr, /etc, /lib*, /bin, /sbin, /var/lib
    ...): ``HF_HOME=/usr`` must not make /usr volatile. A refused value is listed in
    ``refused``; a variable the environment lacks stands for nothing. ``guarded``: directories
    Python imports from (sys.path, its prefixes, PYTHONPATH): nothing below them is volatile
    but ``__pycache__``."""
    positive: list[str] = []
    negative: list[str] = []
    refused: list[str] = []
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        expanded: list[str] = []
        if pattern.startswith("~/"):
            expanded = ["/root" + pattern[1:], "/home/*" + pattern[1:]]
        elif pattern.startswith("$"):
            found = _VARIABLE.match(pattern)
            value = env.get(found.group(1)) if found else None
            if found and value is not None:
                why = _refused(value)
                if why is None:
                    expanded = [(value.rstrip("/") or "/") + (found.group(2) or "")]
                elif not negated:
                    refused.append(f"{found.group(1)}={value}: {why}")
        else:
            expanded = [pattern]
        (negative if negated else positive).extend(expanded)
    places = tuple(sorted({p.rstrip("/") for p in guarded if p.startswith("/") and p.rstrip("/")}))
    return Volatile(positive, negative, sorted(set(refused)), places)


def python_places(env: Mapping[str, str]) -> list[str]:
    """The directories the configured environment's PYTHONPATH adds to sys.path."""
    return [p for p in env.get("PYTHONPATH", "").split(":") if p.startswith("/")]


def shadows_code(destination: str, policy: FilesystemPolicy) -> bool:
    """Whether a mount at ``destination`` covers a place code is loaded from (CODE_PLACES, or
    the policy's ``watch`` where it narrows the check)."""
    places = CODE_PLACES if policy.watch is None else policy.watch
    return matches(destination, places) or matches(destination.rstrip("/") + "/", places)


def narrowed(policy: FilesystemPolicy, path: str) -> bool:
    """Whether a policy that narrows the check (``watch``) leaves ``path`` out of it."""
    return policy.watch is not None and not matches(path, policy.watch)


DEFAULT_IGNORE = tuple(volatile_places(DEFAULT_VOLATILE, {}).positive)
"""The default volatile places as plain patterns (unlisted files lockd.evidence.integrity does not
report)."""
