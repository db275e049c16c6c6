"""The lockd command line: thin commands by group (lockd.cli.app), each parsing its arguments,
calling an action and rendering the result (lockd.cli.render).

Exit codes: 0 verified, 1 not verified, 2 usage error or unreadable input,
3 the target could not be inspected.
"""

from __future__ import annotations

import os
import sys

import typer

from lockd.cli.app import app
from lockd.cli.early import start_early
from lockd.cli.shared import console

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point: LockdError becomes its message and exit code; anything else is a bug.

    Click runs in standalone mode, so usage errors exit 2 and typer.Exit codes pass through.
    """
    from lockd.errors import LockdError

    # pydantic scans every installed distribution for plugins at first use; lockd uses none,
    # and `lockd verify` start-up time matters (deploy pipelines run it).
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in args or "-v" in args
    args = [a for a in args if a not in ("--verbose", "-v")]
    command = typer.main.get_command(app)
    started = start_early(command, args)
    try:
        command.main(args=args, prog_name="lockd", standalone_mode=True, obj=started)
    except LockdError as e:
        if verbose:
            raise
        from rich.markup import escape

        console(stderr=True).print(f"[bold red]lockd: error:[/] {escape(e.diagnostics())}")
        sys.exit(e.exit_code)
