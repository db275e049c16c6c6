"""Another commit's lockd beside this checkout's, for a bench that prints a change's figures next
to the figures of the commit before it, measured in the same run on the same containers.

``lockd_at(commit)`` checks the commit out into a temporary git worktree and yields the argv
that runs its lockd (``python -m lockd`` with the worktree first on sys.path: this venv's
dependencies, that commit's code) and the folder it keeps its caches in (its own: cache formats
differ between commits). The worktree is removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class OtherLockd:
    commit: str  # the full commit ID
    argv: list[str]  # runs that commit's lockd
    env: dict[str, str]  # over os.environ: its sys.path and its own cache folder

    def environ(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` with this lockd's code first on sys.path and its own cache folder."""
        return {**base, **self.env}


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@contextlib.contextmanager
def lockd_at(commit: str) -> Iterator[OtherLockd]:
    """That commit's lockd, runnable beside this one; exits with a message for a bad commit."""
    try:
        full = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    except subprocess.CalledProcessError:
        sys.exit(f"--before {commit}: not a commit of this repository")
    with tempfile.TemporaryDirectory(prefix="lockd-before-") as tmp:
        tree = Path(tmp) / "tree"
        _git("worktree", "add", "--detach", str(tree), full)
        cache = Path(tmp) / "cache"
        cache.mkdir(mode=0o700)
        try:
            yield OtherLockd(
                commit=full,
                # -P: not the working directory first on sys.path (it may be this checkout)
                argv=[sys.executable, "-P", "-m", "lockd"],
                env={
                    "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
                    "LOCKD_CACHE_DIR": str(cache),
                },
            )
        finally:
            _git("worktree", "remove", "--force", str(tree))


def short(commit: str) -> str:
    return commit[:10]
