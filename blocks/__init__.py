"""Prefect block types of dbbackup.

`prefect block register -m prefect_dbbackup.blocks` registers them all. The classes are
imported on first access (PEP 562), so a command that needs one block type does not pay
for the others (the S3 storage pulls in boto3 and prefect-aws).
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_dbbackup.blocks.encryption import AgeEncryption
    from prefect_dbbackup.blocks.mysql import MySQLServer
    from prefect_dbbackup.blocks.postgres import PostgresServer
    from prefect_dbbackup.blocks.s3 import S3BackupStorage
    from prefect_dbbackup.blocks.storage import LocalBackupStorage

_MODULES = {
    "AgeEncryption": "encryption",
    "LocalBackupStorage": "storage",
    "MySQLServer": "mysql",
    "PostgresServer": "postgres",
    "S3BackupStorage": "s3",
}

__all__ = [
    "AgeEncryption",
    "LocalBackupStorage",
    "MySQLServer",
    "PostgresServer",
    "S3BackupStorage",
]


def __getattr__(name: str) -> type:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_MODULES[name]}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
