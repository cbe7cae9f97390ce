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


# flows -> tasks -> blocks: a layer imports only the layers below it
LAYERS = ("blocks", "tasks", "flows")


def _upward_imports(path: Path, layer: str) -> list[str]:
    above = {f"prefect_dbbackup.{name}" for name in LAYERS[LAYERS.index(layer) + 1 :]}
    return [m for m in _imported_modules(path) if ".".join(m.split(".")[:2]) in above]


@pytest.mark.parametrize(
    "path",
    [p for layer in LAYERS for p in sorted((ROOT / layer).rglob("*.py"))],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_imports_point_down_only(path: Path) -> None:
    layer = path.relative_to(ROOT).parts[0]
    upward = _upward_imports(path, layer)
    assert not upward, f"{path.relative_to(ROOT)} ({layer}) imports the layer above: {upward}"


def test_the_layer_scan_sees_an_upward_import(tmp_path: Path) -> None:
    """The check above can fail: a block importing a task is found, even inside a function."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from prefect_dbbackup.blocks.errors import X\n"
        "def f():\n    from prefect_dbbackup.tasks.manifest import Manifest\n"
    )
    assert _upward_imports(sample, "blocks") == ["prefect_dbbackup.tasks.manifest"]
    assert _upward_imports(sample, "tasks") == []
