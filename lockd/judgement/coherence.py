"""PyTorch-family coherence: whether torchvision, torchaudio, triton, the CUDA libraries and the
rest of the family fit the torch they are installed (or locked) with. Pure: no I/O.

A family member's compiled extension is built for one torch release and fails to load against
another, yet the index's metadata does not always say so (torchaudio 2.11.0 declares no
dependency on torch, so a resolver pairs it with torch 2.6.0). The rules here are data, each
with its source (lockd/judgement/coherence_data.py: the wheels' own METADATA, and the few
declarations that say less than what the release is built for):

- **built for**: a family release fits the torch versions its rule names (``torchvision
  0.21.0`` → ``torch==2.6.0``). Releases newer than the data follow the release pattern
  (torchaudio X.Y.Z for torch X.Y.Z, torchvision 0.(Y+15).Z for torch 2.Y.Z).
- **variant**: torch, torchvision and torchaudio are one build (``+cu124``, ``+cpu``); an
  unlabelled wheel from the index is its torch release's default variant on Linux x86_64.
- **requirements**: the ``nvidia-*``, ``cuda-toolkit`` and ``triton`` versions installed
  beside a default-variant torch are those its wheel requires.

``evaluate`` judges a set of installed or pinned distributions; ``fitting`` says which release of
a member fits a torch; ``in_constraints`` turns a ``requirements.in`` into the constraints
``lockd lock`` adds (and refuses an explicit pin that cannot fit).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lockd.judgement.coherence_data import DECLARED, OVERRIDES, TORCH_RELEASES, TorchRelease

TORCH = "torch"
FAMILY = ("torchvision", "torchaudio", "torchtext", "torchdata", "xformers")
"""Family members with version rules (flash-attn has none: see coherence_data)."""
VARIANT_MEMBERS = ("torchvision", "torchaudio")
"""Published as one build with torch: ``+cpu``, ``+cu124``... local labels must agree."""
REQUIREMENT_PREFIXES = ("nvidia-", "cuda-toolkit", "triton")
"""What a torch wheel pins exactly of the CUDA stack (coherence_data.TorchRelease.requires)."""

_PATTERNS = {
    "torchaudio": "torchaudio X.Y.Z is built for torch X.Y.Z (the release pattern; lockd's data "
    "has no row for this release)",
    "torchvision": "torchvision 0.(Y+15).Z is built for torch 2.Y.Z (the release pattern; "
    "lockd's data has no row for this release)",
}

Kind = Literal["mismatch", "variant", "requirement"]


@dataclass(frozen=True)
class Rule:
    """The torch versions one release of a family member is built for, and why lockd says so."""

    name: str
    version: str
    torch: str  # a PEP 440 specifier set, e.g. "==2.6.0"
    source: str

    @property
    def exact(self) -> bool:
        """One torch release (or one series, ``==2.14.*``), not an open range."""
        return self.torch.startswith("==") and "," not in self.torch


@dataclass(frozen=True)
class Fit:
    """The release of a family member that fits one torch version."""

    name: str
    torch: str
    version: str | None  # the newest release built for that torch; None: no release is
    source: str
    exact: bool = True  # False: any newer release fits too (an open rule such as torch>=2)


@dataclass(frozen=True)
class Problem:
    """One way a set of distributions is not coherent with its torch."""

    kind: Kind
    name: str  # the distribution that does not fit
    version: str  # as installed or pinned
    torch: str  # torch's version, as installed or pinned
    expected: str  # what would fit: a version, a requirement, a variant, or "none"
    message: str
    source: str


# --- the rules ------------------------------------------------------------------------------


def public(version: str) -> str:
    """``2.6.0+cu124`` → ``2.6.0``."""
    return version.split("+", 1)[0]


def local_label(version: str) -> str | None:
    """``2.6.0+cu124`` → ``cu124``; None without a local label."""
    _, plus, label = version.partition("+")
    return label.lower() if plus else None


@functools.cache
def _rules() -> dict[tuple[str, str], Rule]:
    rules: dict[tuple[str, str], Rule] = {}
    for name, version, declared, tags in DECLARED:
        wheel = f"{name}-{version}-{tags}.whl"
        override = OVERRIDES.get((name, version))
        if override is not None:
            spec, why = override
            rules[(name, version)] = Rule(name, version, spec, f"{wheel}: {why}")
        elif declared is not None:
            source = f"{wheel} METADATA: Requires-Dist: torch{declared}"
            rules[(name, version)] = Rule(name, version, declared, source)
    return rules


@functools.cache
def _torch_releases() -> dict[str, TorchRelease]:
    return {r.version: r for r in TORCH_RELEASES}


def torch_release(version: str) -> TorchRelease | None:
    """What lockd knows of a torch release (its default wheel), by version (label ignored)."""
    return _torch_releases().get(public(version))


def _newest(versions: Iterable[str]) -> str | None:
    from packaging.version import Version

    return max(versions, key=Version, default=None)


def _pattern_rule(name: str, version: str) -> Rule | None:
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)", public(version))
    if match is None or name not in _PATTERNS:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    if name == "torchaudio" and major >= 2:
        torch = f"=={major}.{minor}.{patch}"
    elif name == "torchvision" and major == 0 and minor >= 15:
        torch = f"==2.{minor - 15}.{patch}"
    else:
        return None
    return Rule(name, public(version), torch, f"{name} {public(version)}: {_PATTERNS[name]}")


def rule_for(name: str, version: str) -> Rule | None:
    """The torch versions this release of a family member is built for: lockd's data, else the
    release pattern (torchvision and torchaudio only); None when lockd has no rule for it."""
    found = _rules().get((name, public(version)))
    return found if found is not None else _pattern_rule(name, version)


def fits(rule: Rule, torch_version: str) -> bool:
    """Whether a torch version (local label ignored) is one the rule's release is built for."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        return SpecifierSet(rule.torch).contains(Version(public(torch_version)), prereleases=True)
    except (InvalidSpecifier, InvalidVersion):
        return False


def fitting(name: str, torch_version: str) -> Fit | None:
    """The newest release of `name` built for `torch_version`; None when lockd has no rule for
    `name`. ``Fit.version`` is None when no release is (as far as lockd's data goes)."""
    if name not in FAMILY:
        return None
    rows = [r for (n, _), r in _rules().items() if n == name]
    if not rows:
        return None
    matching = [r for r in rows if fits(r, torch_version)]
    newest = _newest(r.version for r in matching)
    if newest is not None:
        rule = _rules()[(name, newest)]
        return Fit(name, torch_version, newest, rule.source, exact=rule.exact)
    newest_row = _newest(r.version for r in rows)
    known_torch = _newest(r.version for r in TORCH_RELEASES)
    beyond = known_torch is not None and _is_newer(torch_version, known_torch)
    if beyond and name in _PATTERNS:
        guess = _pattern_version(name, torch_version)
        if guess is not None:
            return Fit(name, torch_version, guess, f"{name} {guess}: {_PATTERNS[name]}")
    last = _rules()[(name, newest_row)] if newest_row else None
    why = (
        f"lockd's data has no {name} release for torch {public(torch_version)}"
        + (f" (the newest, {last.version}, is built for torch{last.torch})" if last else "")
        + (f"; lockd's data ends at torch {known_torch}" if beyond else "")
    )
    return Fit(name, torch_version, None, why)


def _is_newer(version: str, than: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(public(version)) > Version(than)
    except InvalidVersion:
        return False


def _pattern_version(name: str, torch_version: str) -> str | None:
    match = re.match(r"^2\.(\d+)\.(\d+)", public(torch_version))
    if match is None:
        return None
    minor, patch = int(match.group(1)), int(match.group(2))
    return f"2.{minor}.{patch}" if name == "torchaudio" else f"0.{minor + 15}.{patch}"


def variant_of(name: str, version: str, environment: Mapping[str, str] | None) -> str | None:
    """The build a distribution is: its local label, else (Linux x86_64 only) the default
    variant of the torch release it is built for; None when unknown."""
    label = local_label(version)
    if label is not None:
        return label
    if environment is None or not _linux_x86_64(environment):
        return None
    if name == TORCH:
        release = torch_release(version)
    else:
        rule = rule_for(name, version)
        exact = rule.torch[2:] if rule is not None and rule.exact else None
        release = torch_release(exact) if exact and "*" not in exact else None
    return release.variant if release is not None else None


def _linux_x86_64(environment: Mapping[str, str]) -> bool:
    machine = environment.get("platform_machine", "").lower()
    return environment.get("platform_system") == "Linux" and machine in ("x86_64", "amd64")


# --- judging a set of distributions ---------------------------------------------------------


def _label(version: str) -> str:
    return f"+{local_label(version)}" if local_label(version) else ""


def _member_problem(
    name: str, version: str, torch: str, environment: Mapping[str, str] | None
) -> Problem | None:
    rule = rule_for(name, version)
    if rule is None:
        return None
    if not fits(rule, torch):
        fit = fitting(name, torch)
        if fit is not None and fit.version is not None:
            expected = fit.version + (_label(torch) if name in VARIANT_MEMBERS else "")
            advice = f"{name} {expected} fits torch {torch}"
        else:
            expected = "none"
            advice = fit.source if fit is not None else f"no {name} release fits torch {torch}"
        return Problem(
            kind="mismatch",
            name=name,
            version=version,
            torch=torch,
            expected=expected,
            message=f"{name} {version} is built for torch{rule.torch}, not torch {torch}; "
            + advice,
            source=rule.source,
        )
    if name not in VARIANT_MEMBERS:
        return None
    mine, theirs = variant_of(name, version, environment), variant_of(TORCH, torch, environment)
    if mine is None or theirs is None or mine == theirs:
        return None
    return Problem(
        kind="variant",
        name=name,
        version=version,
        torch=torch,
        expected=theirs,
        message=f"{name} {version} is the {mine} build, torch {torch} the {theirs} build: "
        f"install {name} {public(version)}+{theirs} (the index's unlabelled wheels are the "
        "default variant of their torch release)",
        source="local version labels (PEP 440) name the build; lockd's data names each torch "
        "release's default variant",
    )


def _requirement_problems(
    versions: Mapping[str, str], torch: str, environment: Mapping[str, str] | None
) -> list[Problem]:
    """The nvidia-*, cuda-toolkit and triton versions a default-variant torch requires."""
    release = torch_release(torch)
    if release is None:
        return []
    label = local_label(torch)
    if label is not None and label != release.variant:
        return []  # another build than the default wheel: its requirements are its own
    from packaging.markers import Marker
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version

    problems = []
    for text, marker in release.requires:
        if environment is not None and not Marker(marker).evaluate(dict(environment)):
            continue
        requirement = Requirement(text)
        installed = versions.get(requirement.name)
        if installed is None:
            continue
        try:
            ok = requirement.specifier.contains(Version(installed), prereleases=True)
        except InvalidVersion:
            ok = False
        if ok:
            continue
        problems.append(
            Problem(
                kind="requirement",
                name=requirement.name,
                version=installed,
                torch=torch,
                expected=str(requirement.specifier),
                message=f"torch {torch} requires {text}, {installed} is installed",
                source=f"{release.wheel} METADATA: Requires-Dist: {text}; {marker}",
            )
        )
    return problems


def evaluate(
    versions: Mapping[str, str], environment: Mapping[str, str] | None = None
) -> list[Problem]:
    """Every way the distributions (PEP 503 name → version) are not coherent with their torch;
    [] when torch is not among them. `environment` (PEP 508 marker variables) decides which of
    torch's requirements apply and whether unlabelled wheels are the CUDA default; without it
    every requirement applies and variants compare by label only."""
    torch = versions.get(TORCH)
    if torch is None:
        return []
    problems = []
    for name in sorted(versions):
        if name in FAMILY:
            problem = _member_problem(name, versions[name], torch, environment)
            if problem is not None:
                problems.append(problem)
    return problems + _requirement_problems(versions, torch, environment)


def family(versions: Mapping[str, str]) -> dict[str, str]:
    """The family members among the distributions (torch, its family and what torch pins)."""
    return {
        name: version
        for name, version in sorted(versions.items())
        if name == TORCH or name in FAMILY or name.startswith(REQUIREMENT_PREFIXES)
    }


def platform_environment(python: str, platform_tag: str) -> dict[str, str]:
    """PEP 508 marker variables for a lock's target (CPython X.Y on a wheel platform tag)."""
    system, machine = "", ""
    if "linux" in platform_tag:
        system = "Linux"
    elif platform_tag.startswith("macosx"):
        system = "Darwin"
    elif platform_tag.startswith("win"):
        system = "Windows"
    for arch, name in (("x86_64", "x86_64"), ("aarch64", "aarch64"), ("arm64", "arm64")):
        if platform_tag.endswith(arch):
            machine = name
    if platform_tag == "win_amd64":
        machine = "AMD64"
    return {
        "python_version": python,
        "python_full_version": f"{python}.0",
        "platform_system": system,
        "platform_machine": machine,
        "sys_platform": {"Linux": "linux", "Darwin": "darwin", "Windows": "win32"}.get(system, ""),
        "os_name": "nt" if system == "Windows" else "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }


# --- a requirements.in: the constraints lockd lock adds -------------------------------------


class IncoherentPinError(ValueError):
    """The .in pins family members that cannot fit together (the message says which)."""


@dataclass(frozen=True)
class Constraints:
    """What ``lockd lock`` adds to a resolution so that the family fits its torch."""

    lines: tuple[str, ...] = ()  # name==version, sorted
    reasons: tuple[str, ...] = field(default=(), compare=False)  # one per line: why

    def __bool__(self) -> bool:
        return bool(self.lines)


def _exact_pin(specifier: str) -> str | None:
    match = re.match(r"^===?\s*([^,*\s]+)$", specifier.strip())
    return match.group(1) if match else None


def in_constraints(requirements: Mapping[str, str]) -> Constraints:
    """The constraints for a ``.in``'s requirements (name → specifier text, "" when unpinned).

    - torch pinned exactly: each family member the .in names without a pin gets the release
      built for that torch (with torch's local label for torchvision/torchaudio).
    - torch not pinned: family members pinned exactly constrain torch to what they are built
      for.

    Raises IncoherentPinError: a member pinned to a release built for another torch than the
    pinned one (or two pinned members built for different torches), or a named member with no
    release for the pinned torch.
    """
    torch_spec = requirements.get(TORCH)
    torch = _exact_pin(torch_spec) if torch_spec else None
    lines: list[tuple[str, str]] = []
    for name in sorted(n for n in requirements if n in FAMILY):
        pinned = _exact_pin(requirements[name])
        if torch is not None and pinned is not None:
            rule = rule_for(name, pinned)
            if rule is not None and not fits(rule, torch):
                raise IncoherentPinError(_refusal(name, pinned, rule, torch))
        elif torch is not None and not requirements[name]:
            fit = fitting(name, torch)
            if fit is None or not fit.exact:
                continue
            if fit.version is None:
                raise IncoherentPinError(
                    f"{name} cannot fit torch=={torch}: {fit.source}; remove {name} or pin a "
                    "torch it is built for"
                )
            version = fit.version + (_label(torch) if name in VARIANT_MEMBERS else "")
            lines.append((f"{name}=={version}", f"built for torch {torch} ({fit.source})"))
    if torch is None and torch_spec is not None:
        lines += _torch_from_members(requirements)
    ordered = sorted(lines)
    return Constraints(tuple(line for line, _ in ordered), tuple(why for _, why in ordered))


def _torch_from_members(requirements: Mapping[str, str]) -> list[tuple[str, str]]:
    chosen: tuple[str, Rule] | None = None
    for name in sorted(n for n in requirements if n in FAMILY):
        pinned = _exact_pin(requirements[name])
        rule = rule_for(name, pinned) if pinned else None
        if rule is None or not rule.exact:
            continue
        if chosen is not None and chosen[1].torch != rule.torch:
            other = chosen[1]
            raise IncoherentPinError(
                f"{other.name}=={other.version} is built for torch{other.torch}, "
                f"{name}=={pinned} for torch{rule.torch}: they cannot be installed together; "
                f"pin releases built for one torch ({other.source}; {rule.source})"
            )
        chosen = (name, rule)
    if chosen is None:
        return []
    name, rule = chosen
    return [(f"torch{rule.torch}", f"{name}=={rule.version} is built for it ({rule.source})")]


def _refusal(name: str, pinned: str, rule: Rule, torch: str) -> str:
    fit = fitting(name, torch)
    if fit is not None and fit.version is not None:
        version = fit.version + (_label(torch) if name in VARIANT_MEMBERS else "")
        advice = (
            f"{name} {version} fits torch {torch}: pin {name}=={version}, or leave {name} "
            "unpinned and lockd adds that constraint"
        )
    else:
        why = fit.source if fit is not None else f"no {name} release fits torch {torch}"
        advice = f"{why}; remove {name} or pin a torch it is built for"
    return (
        f"{name}=={pinned} does not fit torch=={torch}: {name} {pinned} is built for "
        f"torch{rule.torch} ({rule.source}); {advice}"
    )


def retry_constraints(problems: Sequence[Problem], pinned: Iterable[str]) -> Constraints:
    """After a resolution: constraints that bring the members the .in left free back to the
    resolved torch (the index's metadata let the resolver choose otherwise)."""
    fixed = set(pinned)
    lines: list[tuple[str, str]] = []
    for problem in problems:
        if problem.kind != "mismatch" or problem.name in fixed or problem.expected == "none":
            continue
        lines.append(
            (
                f"{problem.name}=={problem.expected}",
                f"built for torch {problem.torch}; the resolver chose {problem.version}, "
                f"built for another ({problem.source})",
            )
        )
    ordered = sorted(set(lines))
    return Constraints(tuple(line for line, _ in ordered), tuple(why for _, why in ordered))
