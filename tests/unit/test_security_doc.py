"""docs/security.md: every claim of the security model names the test that backs it, and every
test it names exists (a renamed or deleted test must not leave a claim standing unbacked)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "security.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")


def _claim_rows(text: str) -> list[str]:
    """The rows of the doc's claim tables: tables whose header has a 'backed by' column."""
    rows: list[str] = []
    in_claims = False
    for line in text.splitlines():
        if not line.startswith("|"):
            in_claims = False
            continue
        if "backed by" in line.lower():
            in_claims = True
            continue
        if in_claims and not re.fullmatch(r"\|[\s\-:|]+\|", line):
            rows.append(line)
    return rows


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def test_every_claim_names_a_test() -> None:
    rows = _claim_rows(DOC.read_text(encoding="utf-8"))
    assert len(rows) >= 10, "the security model's claim tables are missing"
    unbacked = [row for row in rows if not REFERENCE.search(row)]
    assert not unbacked, f"claims without a test: {unbacked}"


def test_every_named_test_exists() -> None:
    references = REFERENCE.findall(DOC.read_text(encoding="utf-8"))
    missing = []
    for file, name in references:
        path = REPO / file
        if not path.is_file() or name not in _test_names(path):
            missing.append(f"{file}::{name}")
    assert not missing, f"docs/security.md names tests that do not exist: {missing}"


def test_the_checker_sees_a_missing_test(tmp_path: Path) -> None:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_real():\n    pass\n")
    assert _test_names(tmp_path / "tests" / "test_x.py") == {"test_real"}
    row = "| a claim | `tests/test_x.py::test_gone[param]` |"
    assert REFERENCE.findall(row) == [("tests/test_x.py", "test_gone")]
    assert _claim_rows(f"| claim | backed by |\n| --- | --- |\n{row}\n") == [row]
