"""`lockd --help` and every command's help read cleanly at 80 columns: nothing wider, and no
sentence cut where a docstring was wrapped (a line that ends mid-sentence and a next line that
starts at the left margin of the panel again)."""

from __future__ import annotations

import itertools
import re

import pytest
import typer
from typer.testing import CliRunner

from lockd.cli import app

COMMANDS = [
    [],
    *[[name] for name in ("keygen", "record", "verify", "observe", "show", "diff", "compat")],
    *[[name] for name in ("lock", "sbom", "schema", "serve", "push", "status", "attach", "fetch")],
    ["gate"],
    ["watch"],
    ["token", "create"],
    ["audit", "verify"],
    ["audit", "export"],
]


def _help(argv: list[str]) -> str:
    runner = CliRunner()
    result = runner.invoke(app, [*argv, "--help"], env={"COLUMNS": "80", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_is_listed() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    listed = {tuple(argv[:1]) for argv in COMMANDS if argv}
    assert {(name,) for name in group.commands} == listed


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv) or "lockd")
def test_help_fits_80_columns_without_cut_sentences(argv: list[str]) -> None:
    text = _help(argv)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    # In the commands panel a wrapped description continues in the description column; a
    # docstring's own line break used to restart there after a short line.
    rows = [re.sub(r"^│ ?|│$", "", line).rstrip() for line in lines if line.startswith("│")]
    short_then_more = [
        (a, b)
        for a, b in itertools.pairwise(rows)
        if a
        and b
        and len(a) < 55
        and b.startswith(" " * 9)
        and not a.endswith((".", ")", ":"))
        and not b.strip().startswith(("-", "[", "<"))
        and re.match(r"^ {9}[a-z(]", b)
        and re.match(r"^[a-z]", a.split()[-1])
    ]
    assert not short_then_more, short_then_more
