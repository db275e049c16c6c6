"""The probe: stdlib-only code that runs INSIDE a target and prints one JSON document.

``environment.py`` is streamed into the target as source text (it must run on any Python
>= 3.8 with nothing of lockd installed); this package only hands that text to the targets.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["probe_source"]


@functools.cache
def probe_source() -> str:
    """The source text of the environment probe, to run as ``python3 -c <source>``, with
    lockd/fatbin.py embedded (the probe's record of what the process loaded)."""
    from lockd.libraries import embed_reader

    source = Path(__file__).with_name("environment.py").read_text(encoding="utf-8")
    return embed_reader(source, "lockd/probe/environment.py")
