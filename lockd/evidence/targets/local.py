"""The local target: a Python environment on this machine, probed in a child process.

The interpreter runs as the user runs it (no ``-I``): PYTHONPATH, user site-packages and
.pth files shape sys.path, and they are part of the environment being recorded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lockd.errors import ProbeError
from lockd.evidence.targets.base import (
    MAX_PROBE_OUTPUT,
    PLAIN,
    PROBE_TIMEOUT,
    Files,
    Gpus,
    HostFiles,
    ProbeOptions,
    parse_probe_document,
    probe_arguments,
    run_probe_subprocess,
)
from lockd.model.host import TargetInfo
from lockd.model.manifest import Observation

__all__ = ["LocalTarget"]


class LocalTarget:
    """A local Python interpreter (default: the one running lockd) and its environment."""

    def __init__(
        self,
        python: str | None = None,
        *,
        timeout: float = PROBE_TIMEOUT,
        max_output: int = MAX_PROBE_OUTPUT,
    ) -> None:
        """Raises ProbeError when no interpreter is given and this Python does not know its own."""
        interpreter = python or sys.executable
        if not interpreter:
            raise ProbeError(
                "local: this Python does not know its interpreter's path (sys.executable is "
                "empty); pass the interpreter to probe with --python PATH"
            )
        self.python = interpreter
        self.timeout = timeout
        self.max_output = max_output
        self.info = TargetInfo(kind="local", ref=interpreter)

    def observe(self, options: ProbeOptions = PLAIN) -> Observation:
        """Run the probe with this interpreter; there is no host evidence for a local target.

        Raises:
            ProbeError: the interpreter does not exist, or the probe failed, hung, flooded
                its output or printed garbage (exit 3).
        """
        source = f"local Python {self.python}"
        output = run_probe_subprocess(
            [self.python, *probe_arguments(options)],
            source,
            timeout=self.timeout + options.extra_time,
            max_output=self.max_output,
        )
        probe, imports = parse_probe_document(output, source, family_imports=options.family_imports)
        return Observation(target=self.info, probe=probe, family_imports=imports)

    def run_script(
        self,
        argv: Sequence[str],
        *,
        what: str,
        source: str,
        timeout: float,
        max_output: int,
        gpus: Gpus = "none",
    ) -> bytes:
        """``argv`` as a child process (Target.run_script; this machine's GPUs are its own).

        Raises:
            ProbeError: no such interpreter, or the script failed, hung or flooded its output.
        """
        return run_probe_subprocess(list(argv), source, timeout=timeout, max_output=max_output)

    def files(self) -> Files:
        """This machine's own filesystem (evidence from inside: the environment lockd runs
        beside)."""
        return Files(host=HostFiles(kind="local", roots=("/",), description="the local filesystem"))

    def running(self) -> None:
        """A local Python is no container: nothing is kept for it."""
