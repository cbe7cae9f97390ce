"""Each block type is named once (blocks/kinds.py): the lazy exports of
prefect_dbbackup.blocks, loading by name and the kinds of `dbbackup apply` derive from the
table, and a class is imported only when a block of its type is used."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import prefect_dbbackup.blocks as blocks
import pytest
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.kinds import KINDS, BlockKind, by_config_name
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.config import load_config

BASES = {"server": DatabaseServer, "storage": BackupStorage, "encryption": AgeEncryption}


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.slug)
def test_each_record_names_its_class_and_the_class_agrees(kind: BlockKind) -> None:
    cls = kind.block_class()
    assert cls.__name__ == kind.class_name
    assert cls.get_block_type_slug() == kind.slug
    assert issubclass(cls, BASES[kind.role])


def test_names_are_unique() -> None:
    for key in ("slug", "class_name"):
        names = [getattr(k, key) for k in KINDS]
        assert len(names) == len(set(names)), key
    for role in BASES:
        named = [k.config_name for k in KINDS if k.role == role and k.config_name]
        assert len(named) == len(set(named)), role


def test_the_exports_are_the_tables_and_what_type_checkers_see() -> None:
    """`prefect block register -m prefect_dbbackup.blocks` sees the exported kinds (not the
    memory storage); the TYPE_CHECKING imports of blocks/__init__.py name the same classes
    from the same modules."""
    exported = {k.class_name: k for k in KINDS if k.exported}
    assert sorted(blocks.__all__) == sorted(exported)
    registered = {name for name, value in inspect.getmembers(blocks) if inspect.isclass(value)}
    assert registered == set(exported)
    assert "MemoryBackupStorage" not in dir(blocks)
    with pytest.raises(AttributeError):
        _ = blocks.MemoryBackupStorage

    static = type_checking_imports(Path(blocks.__file__))
    assert static == {n: f"prefect_dbbackup.blocks.{k.module}" for n, k in exported.items()}


def type_checking_imports(path: Path) -> dict[str, str]:
    """name -> module of the `from M import N` lines under a module's `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    (guarded,) = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    return {
        alias.name: str(node.module)
        for node in guarded.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }


def test_apply_accepts_the_config_kinds_and_not_the_memory_storage(tmp_path: Path) -> None:
    assert list(by_config_name("server")) == ["postgres", "mysql"]
    assert list(by_config_name("storage")) == ["local", "s3"]
    config = tmp_path / "dbbackup.yaml"
    config.write_text("storage:\n  scratch: {type: memory, space: x}\n")
    with pytest.raises(ConfigError, match="storage.scratch: type must be one of local, s3$"):
        load_config(config)


HEAVY = ("boto3", "botocore", "prefect_aws", "sqlalchemy")
PROBE = """
import sys
def heavy():
    print(sorted(set(HEAVY) & set(sys.modules)))
import prefect_dbbackup.blocks
import prefect_dbbackup.blocks.registry
import prefect_dbbackup.flows.config
from prefect_dbbackup.blocks import LocalBackupStorage
from prefect_dbbackup.blocks.kinds import by_slug
by_slug("storage")["memory-backup-storage"].block_class()
heavy()
from prefect_dbbackup.blocks import S3BackupStorage
heavy()
"""


def test_a_local_storage_imports_neither_boto3_nor_sqlalchemy() -> None:
    """In a fresh interpreter: the table, the registry, apply's config and the local and
    memory storages import none of HEAVY; the S3 storage does (the probe sees imports)."""
    done = subprocess.run(
        [sys.executable, "-c", f"HEAVY = {HEAVY!r}\n{PROBE}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    local, s3 = (ast.literal_eval(line) for line in done.stdout.splitlines()[-2:])
    assert local == []
    assert s3 == ["boto3", "botocore", "prefect_aws"]
