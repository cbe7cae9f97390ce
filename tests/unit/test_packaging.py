"""Import rules, each checked by one scan of every source file (all offenders reported at once):
the source installs under the prefect_dbbackup namespace only (no top-level
`blocks`/`tasks`/`flows`/`deployments` imports: other Prefect projects use those names), and
imports point down only: the package's own exports (api/__init__.py) -> flows -> tasks ->
blocks (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OWN_FOLDERS = ("blocks", "tasks", "flows", "deployments", "tests")
OLD_NAMES = {"blocks", "tasks", "flows", "deployments"}
LAYERS = ("blocks", "tasks", "flows")  # each imports only the layers before it
TOP = "prefect_dbbackup"  # the package's exports (api/__init__.py): above every layer


def _imported_modules(path: Path) -> list[str]:
    """Every absolute import of a file, at any depth (inside functions too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _sources(root: Path, folders: tuple[str, ...]) -> list[Path]:
    return sorted(p for folder in folders for p in (root / folder).rglob("*.py"))


def old_name_imports(root: Path) -> list[str]:
    """One line per file of the tree that imports a bare `blocks`/`tasks`/... module."""
    found = []
    for path in _sources(root, OWN_FOLDERS):
        bad = [m for m in _imported_modules(path) if m.split(".")[0] in OLD_NAMES]
        if bad:
            found.append(f"{path.relative_to(root)} imports {bad}: use prefect_dbbackup.<name>")
    return found


def upward_imports(root: Path) -> list[str]:
    """One line per file of a layer that imports a layer above it."""
    found = []
    for index, layer in enumerate(LAYERS):
        above = {TOP} | {f"prefect_dbbackup.{name}" for name in LAYERS[index + 1 :]}
        for path in _sources(root, (layer,)):
            up = [m for m in _imported_modules(path) if ".".join(m.split(".")[:2]) in above]
            if up:
                found.append(f"{path.relative_to(root)} ({layer}) imports the layer above: {up}")
    return found


def test_no_top_level_package_imports() -> None:
    offenders = old_name_imports(ROOT)
    assert not offenders, "\n".join(offenders)


def test_imports_point_down_only() -> None:
    offenders = upward_imports(ROOT)
    assert not offenders, "\n".join(offenders)


def test_the_scans_see_every_offender_in_a_tree(tmp_path: Path) -> None:
    """The two checks above can fail: in a tree laid out like the project, every bad import
    is reported, even inside a function, and good ones are not."""
    files = {
        "blocks/ok.py": "import os\nfrom prefect_dbbackup.blocks.errors import X\n",
        "blocks/up.py": "def f():\n    from prefect_dbbackup.tasks.manifest import Manifest\n",
        "tasks/up.py": "import prefect_dbbackup.flows.cli\nfrom prefect_dbbackup.blocks import A\n",
        "flows/ok.py": "from prefect_dbbackup.tasks import backup\nimport prefect_dbbackup.blocks\n",
        "flows/top.py": "from prefect_dbbackup import backup_server\n",
        "tests/old.py": "from tasks.errors import X\nimport flows.cli\n",
        "deployments/old.py": "import deployments.serve\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert upward_imports(tmp_path) == [
        "blocks/up.py (blocks) imports the layer above: ['prefect_dbbackup.tasks.manifest']",
        "tasks/up.py (tasks) imports the layer above: ['prefect_dbbackup.flows.cli']",
        "flows/top.py (flows) imports the layer above: ['prefect_dbbackup']",
    ]
    assert old_name_imports(tmp_path) == [
        "deployments/old.py imports ['deployments.serve']: use prefect_dbbackup.<name>",
        "tests/old.py imports ['tasks.errors', 'flows.cli']: use prefect_dbbackup.<name>",
    ]
