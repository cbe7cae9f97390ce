"""docs/architecture.md names every module of the package in its module table, and no
module that is gone: a reader looking for where something lives finds it there."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("api", "blocks", "tasks", "flows", "deployments")


def test_the_module_table_names_every_module_and_only_modules_that_exist() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    table = doc[doc.index("## Modules") :]
    table = table[: table.find("\n## ", 1) if "\n## " in table[1:] else len(table)]
    pattern = "`((?:" + "|".join(PACKAGES) + r")/[\w/]+\.py)`"
    named = set(re.findall(pattern, table))
    modules = {
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
        if path.name != "__init__.py" or package == "api"  # api/__init__.py is the package
    }
    assert sorted(modules - named) == [], "modules missing from docs/architecture.md's table"
    assert sorted(named - modules) == [], "docs/architecture.md's table names modules that are gone"
