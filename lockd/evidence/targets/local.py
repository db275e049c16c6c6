"""The local target: a Python environment on this machine, probed in a child process.

The interpreter runs as the user runs it (no ``-I``): PYTHONPATH, user site-packages and
.pth files shape sys.path, and they are part of the environment being recorded.
"""

from __future__ import annotations

import sys

from lockd.errors import ProbeError
from lockd.evidence.targets.base import (
    MAX_PROBE_OUTPUT,
    PROBE_TIMEOUT,
    WITH_FAMILY_IMPORTS,
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
        self.probe_args: tuple[str, ...] = ()  # options of the probe (lockd.evidence.smoke)
        self.info = TargetInfo(kind="local", ref=interpreter)

    def observe(self) -> Observation:
        """Run the probe with this interpreter; there is no host evidence for a local target.

        Raises:
            ProbeError: the interpreter does not exist, or the probe failed, hung, flooded
                its output or printed garbage (exit 3).
        """
        source = f"local Python {self.python}"
        output = run_probe_subprocess(
            [self.python, *probe_arguments(self.probe_args)],
            source,
            timeout=self.timeout,
            max_output=self.max_output,
        )
        probe, imports = parse_probe_document(
            output, source, family_imports=WITH_FAMILY_IMPORTS in self.probe_args
        )
        return Observation(target=self.info, probe=probe, family_imports=imports)
