"""`prefect_dbbackup` (api/__init__.py) exports the Python API lazily: importing it, or the
command line that lives under it, loads no Prefect; every exported name resolves to the
object its module defines; type checkers see the same names (docs/python-api.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import import_module
from pathlib import Path

import prefect_dbbackup
import pytest

PROBE = """
import sys
import prefect_dbbackup
import prefect_dbbackup.flows.cli
print(sorted(m for m in sys.modules if m.split(".")[0] in ("prefect", "sqlalchemy", "boto3")))
"""


def test_importing_the_package_or_the_cli_loads_no_prefect() -> None:
    """In a fresh interpreter (the CLI answers usage errors without Prefect)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True
    )
    assert ast.literal_eval(done.stdout.strip()) == []


@pytest.mark.parametrize("name", prefect_dbbackup.__all__)
def test_every_exported_name_resolves_to_its_modules_object(name: str) -> None:
    module = import_module(f"prefect_dbbackup.{prefect_dbbackup._EXPORTS[name]}")
    assert getattr(prefect_dbbackup, name) is getattr(module, name)
    assert name in dir(prefect_dbbackup)


def test_the_issue_names_are_exported_and_nothing_else_is_made_up() -> None:
    wanted = {
        "backup_server",
        "restore_database",
        "restore_users",
        "verify_backups",
        "prune_backups",
        "check_backups",
        "PostgresServer",
        "MySQLServer",
        "LocalBackupStorage",
        "S3BackupStorage",
        "AgeEncryption",
        "DbBackupError",
        "BackupReport",
        "RestoreReport",
        "UsersResult",
        "VerifyReport",
        "CheckReport",
        "PruneItem",
    }
    assert wanted <= set(prefect_dbbackup.__all__)
    with pytest.raises(AttributeError, match="no attribute 'MemoryBackupStorage'"):
        _ = prefect_dbbackup.MemoryBackupStorage
    from prefect_dbbackup import DbBackupError

    errors = [n for n in prefect_dbbackup.__all__ if isinstance(getattr(prefect_dbbackup, n), type)]
    catchable = [n for n in errors if issubclass(getattr(prefect_dbbackup, n), Exception)]
    assert all(issubclass(getattr(prefect_dbbackup, n), DbBackupError) for n in catchable)


def test_type_checkers_see_the_same_names_from_the_same_modules() -> None:
    from tests.unit.test_kinds import type_checking_imports

    static = type_checking_imports(Path(prefect_dbbackup.__file__))
    assert static == {n: f"prefect_dbbackup.{m}" for n, m in prefect_dbbackup._EXPORTS.items()}


def _examples(doc: str) -> list[str]:
    """The ```python blocks of a docstring's Example: section, dedented."""
    import re
    import textwrap

    section = doc[doc.index("Example:") :]
    return [textwrap.dedent(code) for code in re.findall(r"```python\n(.*?)```", section, re.S)]


@pytest.mark.parametrize("name", [*prefect_dbbackup._FLOWS, *prefect_dbbackup._BLOCKS])
def test_every_public_flow_and_block_has_an_example_that_imports_what_exists(name: str) -> None:
    obj = getattr(prefect_dbbackup, name)
    doc = getattr(obj, "fn", obj).__doc__ or ""
    assert "Example:" in doc, f"{name} has no Example: section"
    (code,) = _examples(doc)
    tree = ast.parse(code)  # it is Python
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "prefect_dbbackup"
        for alias in node.names
    }
    assert name in imported and imported <= set(prefect_dbbackup.__all__)
