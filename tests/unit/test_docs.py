"""The README is a front door and docs/ holds the reference: the README stays small, names every
command and every check, docs/index.md maps every page, and no relative link is broken."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

import lockd.cli
from lockd.judgement.checks import CHECK_IDS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_LIMIT = 10_240  # bytes

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def _prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code, where `[a](b)` is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _section(text: str, heading: str) -> str:
    """The body of the level-2 section ``heading`` of a markdown text."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no '## {heading}' section"
    return match.group(1)


def _first_cells(section: str) -> list[str]:
    """The first cell of every body row of the tables in ``section``."""
    cells = []
    for line in section.splitlines():
        if not line.startswith("|") or re.match(r"^\|\s*-", line):
            continue
        cells.append(line.split("|")[1].strip())
    return cells[1:] if cells else cells  # the header row


def test_the_readme_is_a_front_door_of_at_most_10_kib() -> None:
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (
        f"README.md is {size} bytes, over {README_LIMIT}: move reference material to docs/"
    )


def test_docs_index_links_every_page_in_docs() -> None:
    linked = {Path(target.split("#")[0]).name for target in _links(DOCS / "index.md")}
    missing = [page.name for page in _pages() if page.name not in linked]
    assert not missing, f"docs/index.md does not link {missing}: add a line for each"


def _anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``path``: lower case, punctuation dropped,
    spaces as hyphens, a repeated heading numbered."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for match in re.finditer(r"^#{1,6} +(.+?) *#*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", match.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


@pytest.mark.parametrize("path", [README, *_pages()], ids=lambda p: str(Path(p).relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_and_heading_that_exist(path: Path) -> None:
    broken = []
    for target in _links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):
            continue  # a URL: http:, mailto:...
        file, _, anchor = target.partition("#")
        linked = path.parent / file if file else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.relative_to(ROOT)} has broken links: {broken}"


def test_the_readme_checks_table_lists_exactly_the_check_ids() -> None:
    section = _section(README.read_text(encoding="utf-8"), "Checks")
    listed = [cell.strip("`") for cell in _first_cells(section)]
    assert listed == list(CHECK_IDS), (
        f"README.md's checks table lists {listed}; lockd.judgement.checks.CHECK_IDS is {list(CHECK_IDS)}"
    )


def _subcommands(command: object) -> dict[str, object] | None:
    """A group's commands by name; None for a command that is no group. (Typer's groups are
    not click's classes in every Typer release, so this goes by the attribute.)"""
    commands = getattr(command, "commands", None)
    return dict(commands) if commands is not None else None


def _cli() -> dict[str, object]:
    """The CLI's top-level commands by name."""
    commands = _subcommands(typer.main.get_command(lockd.cli.app))
    assert commands, "lockd.cli.app has no commands"
    return commands


def _cli_commands() -> set[str]:
    """Every command of the CLI, a group's as ``group sub``."""
    names = set()
    for name, command in _cli().items():
        subs = _subcommands(command)
        names.update([f"{name} {sub}" for sub in subs] if subs is not None else [name])
    return names


def _table_commands() -> set[str]:
    """The commands README.md's command table names: `lockd record TARGET` is ``record``, `lockd
    audit verify` (a group's command) ``audit verify``."""
    groups = {name for name, command in _cli().items() if _subcommands(command) is not None}
    section = _section(README.read_text(encoding="utf-8"), "Commands")
    names = set()
    for cell in _first_cells(section):
        words = cell.strip("`").split()
        assert words[:1] == ["lockd"] and len(words) > 1, f"not a lockd command: {cell!r}"
        names.add(" ".join(words[1:3]) if words[1] in groups else words[1])
    return names


def test_the_readme_command_table_lists_every_command_of_the_cli() -> None:
    cli, table = _cli_commands(), _table_commands()
    assert table == cli, (
        f"README.md's command table lacks {sorted(cli - table)} and lists {sorted(table - cli)}, "
        "which the CLI does not have"
    )
