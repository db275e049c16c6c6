"""Servers the tests start (``lockd serve``, the OCI registry) die with the test process: a
test run killed midway must not leave a server behind that keeps working on the shared test
database (a stray webhook worker claimed the next run's events)."""

from __future__ import annotations

from collections.abc import Sequence


def dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the test process ends (util-linux setpriv
    sets the parent-death signal, then execs it: the same process)."""
    return ["setpriv", "--pdeathsig", "TERM", "--", *argv]
