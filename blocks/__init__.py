"""Prefect block types of dbbackup.

`prefect block register -m prefect_dbbackup.blocks` registers them all. The classes are
imported on first access (PEP 562), so a command that needs one block type does not pay
for the others (the S3 storage pulls in boto3 and prefect-aws). Which classes are
exported, and from which module, is `blocks/kinds.py`'s table.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from prefect_dbbackup.blocks.kinds import exported_modules

if TYPE_CHECKING:  # for type checkers only; a unit test keeps it equal to the table
    from prefect_dbbackup.blocks.encryption import AgeEncryption as AgeEncryption
    from prefect_dbbackup.blocks.local_storage import LocalBackupStorage as LocalBackupStorage
    from prefect_dbbackup.blocks.mysql import MySQLServer as MySQLServer
    from prefect_dbbackup.blocks.postgres import PostgresServer as PostgresServer
    from prefect_dbbackup.blocks.s3 import S3BackupStorage as S3BackupStorage

_MODULES = exported_modules()

__all__ = sorted(_MODULES)


def __getattr__(name: str) -> type:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
