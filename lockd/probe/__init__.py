"""The probe: stdlib-only code that runs INSIDE a target and prints one JSON document.

``environment.py`` is streamed into the target as source text (it must run on any Python
>= 3.8 with nothing of lockd installed); this package only hands that text to the targets.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

from lockd.errors import ProbeError

__all__ = ["embed_reader", "probe_source", "reader_source", "suite_source"]

_PLACEHOLDER = re.compile(r"^FATBIN_SOURCE = None\b.*$", re.MULTILINE)


@functools.cache
def probe_source() -> str:
    """The source text of the environment probe, to run as ``python3 -c <source>``, with
    lockd/probe/fatbin.py embedded (the probe's record of what the process loaded)."""
    source = Path(__file__).with_name("environment.py").read_text(encoding="utf-8")
    return embed_reader(source, "lockd/probe/environment.py")


@functools.cache
def suite_source() -> str:
    """The source text of the GPU validation suite, to run as ``python3 -c <source> [options]``,
    with lockd/probe/fatbin.py embedded (the suite's record of what its process loaded)."""
    source = Path(__file__).with_name("gpu.py").read_text(encoding="utf-8")
    return embed_reader(source, "lockd/probe/gpu.py")


@functools.cache
def reader_source() -> str:
    """lockd/probe/fatbin.py's source text."""
    return Path(__file__).with_name("fatbin.py").read_text(encoding="utf-8")


def embed_reader(source: str, what: str) -> str:
    """``source`` (the probe's or the GPU suite's) with lockd/probe/fatbin.py's source in place of
    its ``FATBIN_SOURCE = None`` line, so that it runs self-contained inside a target. (Here, not in
    lockd.judgement.libraries, so that a probe can start before lockd's models are imported.)"""
    embedded, count = _PLACEHOLDER.subn(
        lambda _: "FATBIN_SOURCE = " + repr(reader_source()), source, count=1
    )
    if count != 1:
        raise ProbeError(
            f"{what}: no 'FATBIN_SOURCE = None' line to embed lockd/probe/fatbin.py into"
        )
    return embedded
