"""`lockd verify TARGET --manifest M --key K`'s observation, started before Typer converts the
arguments: that conversion costs ~0.2 s of CPU (it imports pydantic, builds adapters) that the
probe can run in. Only a plain verify qualifies (a manifest file and key files, no --deep,
--registry or --no-cache); anything else starts nothing, and Typer's own parse then reports
whatever is wrong. The option names come from the verify command itself."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from typer.core import TyperGroup, TyperOption

if TYPE_CHECKING:
    from lockd.evidence.targets.base import Target
    from lockd.model.manifest import Observation

NOT_EARLY = frozenset({"deep", "registry", "no_cache"})
"""verify's flags that change what is observed, or from where the manifest comes."""


@dataclass(frozen=True)
class OptionSpec:
    dest: str  # the parameter's name
    flag: bool  # takes no value


@dataclass(frozen=True)
class EarlyVerify:
    """What a plain `lockd verify` will observe."""

    target: str
    python: str | None
    gpu: bool
    files: tuple[str, ...]  # the manifest and the keys: no early start unless they exist

    def serves(self, target: str, python: str | None, gpu: bool) -> bool:
        """Whether this observation is the one verify, with these arguments, would start."""
        return (self.target, self.python, self.gpu) == (target, python, gpu)


@dataclass(frozen=True)
class EarlyStart:
    """An observation started by main(), handed to verify through Click's context object."""

    request: EarlyVerify
    observation: Future[tuple[Target, Observation]]


def options_of(params: Sequence[object]) -> dict[str, OptionSpec]:
    """Every option string of a command's ``params`` (``--key``) with the parameter it sets."""
    return {
        opt: OptionSpec(dest=param.name, flag=param.is_flag)
        for param in params
        if isinstance(param, TyperOption) and param.name is not None
        for opt in param.opts
    }


def recognise(args: Sequence[str], options: Mapping[str, OptionSpec]) -> EarlyVerify | None:
    """The observation ``lockd ARGS`` will need, when ARGS are a plain verify; else None.

    Pure: ``options`` are verify's (:func:`options_of`). An unknown option (``--help``
    included), a missing value, a second positional argument, ``--``, no --manifest or no
    --key, or a flag of :data:`NOT_EARLY` make it None."""
    if not args or args[0] != "verify":
        return None
    values: dict[str, list[str]] = {}
    flags: set[str] = set()
    positional: list[str] = []
    rest = iter(args[1:])
    for arg in rest:
        if arg == "--":
            return None
        if not arg.startswith("-") or arg == "-":
            positional.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        spec = options.get(name)
        if spec is None:
            return None
        if spec.flag:
            if has_value:
                return None
            flags.add(spec.dest)
            continue
        if not has_value:
            following = next(rest, None)
            if following is None:
                return None
            value = following
        values.setdefault(spec.dest, []).append(value)
    manifests, keys = values.get("manifest", []), values.get("key", [])
    if len(positional) != 1 or len(manifests) != 1 or not keys or flags & NOT_EARLY:
        return None
    pythons = values.get("python")
    return EarlyVerify(
        target=positional[0],
        python=pythons[-1] if pythons else None,
        gpu="gpu" in flags,
        files=(manifests[0], *keys),
    )


def observe_early(
    ref: str, python: str | None, gpu: bool, *, cache: bool = True
) -> tuple[Target, Observation]:
    """Open and observe the target ``lockd verify`` names (in a worker thread)."""
    from lockd.cli.shared import open_target
    from lockd.verify import reach_and_observe

    return reach_and_observe(lambda: open_target(ref, python), gpu, cache=cache)


def start_early(command: object, args: Sequence[str]) -> EarlyStart | None:
    """Start observing the target of ``lockd ARGS`` now when ARGS are a plain verify whose files
    exist (a mistyped one is reported at once, not after a probe). ``command``: lockd's
    (``typer.main.get_command(app)``)."""
    verify = command.commands.get("verify") if isinstance(command, TyperGroup) else None
    if verify is None:
        return None
    request = recognise(args, options_of(verify.params))
    if request is None or not all(os.path.isfile(path) for path in request.files):
        return None
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lockd-probe")
    observation = pool.submit(observe_early, request.target, request.python, request.gpu)
    pool.shutdown(wait=False)
    return EarlyStart(request, observation)
