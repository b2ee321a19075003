"""Every claim of ``docs/threat-model.md`` names tests that exist: a claim whose test was renamed or
deleted would otherwise go on promising what nothing checks."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "threat-model.md"


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _resolve(name: str) -> Path:
    if "/" in name:
        return ROOT / name
    found = list((ROOT / "tests").rglob(name))
    assert len(found) == 1, f"{name} names {len(found)} test files"
    return found[0]


def _claims() -> list[tuple[str, str]]:
    """(claim, test cell) of every row of the claim tables."""
    rows = []
    in_claims = False
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            in_claims = False
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] == "claim":
            in_claims = True
        elif in_claims and not set(cells[0]) <= {"-"}:
            rows.append((cells[0], cells[-1]))
    return rows


def test_every_claim_names_tests_that_exist() -> None:
    claims = _claims()
    assert len(claims) >= 15
    for claim, cell in claims:
        references = re.findall(r"`([^`]+)`", cell)
        current: Path | None = None
        named = 0
        for reference in references:
            target, _, function = reference.partition("::")
            if target:
                if not target.endswith(".py"):
                    continue
                current = _resolve(target)
                assert current.is_file(), f"{claim[:60]}: {target} does not exist"
                named += 1
            if function:
                assert current is not None, f"{claim[:60]}: {reference} names no file"
                assert function in _test_functions(current), f"{claim[:60]}: no {function} in {current.name}"
                named += 1
        assert named, f"claim without a test: {claim[:80]}"
