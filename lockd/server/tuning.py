"""The garbage collector tuned for a long-running server: a module of its own, so the app
factory (lockd.server.app) and the runner (lockd.server.run) both use it without importing each
other."""

from __future__ import annotations

import gc

GC_THRESHOLD = 50_000
"""Allocations (net of frees) between young collections of the cyclic garbage collector."""


def tune_gc() -> None:
    """For a long-running server, once its app is built: everything alive now (modules, the
    app, pydantic's schemas: ~100k objects) moves out of the collector's sight (gc.freeze), and
    young collections wait for 50k net allocations instead of 700. A request allocates and
    frees thousands of objects (a parsed observation), so the default thresholds ran a
    collection for nearly every request and a full one, over everything, every ~200; that was
    about a fifth of a verification's CPU time."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 100)
