"""The source installs under the prefect_dbbackup namespace only: no top-level
`blocks`/`tasks`/`flows` imports (other Prefect projects use those names)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OWN_FOLDERS = ("blocks", "tasks", "flows", "deployments", "tests")
OLD_NAMES = {"blocks", "tasks", "flows", "deployments"}


def _imported_modules(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


SOURCES = sorted(p for folder in OWN_FOLDERS for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_top_level_package_imports(path: Path) -> None:
    bad = [m for m in _imported_modules(path) if m.split(".")[0] in OLD_NAMES]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: use prefect_dbbackup.<name>"


def test_the_scan_sees_an_old_import(tmp_path: Path) -> None:
    """The check above can fail: an old-style import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\nfrom tasks.errors import X\nimport flows.cli\n")
    assert _imported_modules(sample) == ["os", "tasks.errors", "flows.cli"]
