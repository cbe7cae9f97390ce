"""Prefect block types of dbbackup.

`prefect block register -m prefect_dbbackup.blocks` registers them all.
"""

from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.mysql import MySQLServer
from prefect_dbbackup.blocks.postgres import PostgresServer
from prefect_dbbackup.blocks.s3 import S3BackupStorage
from prefect_dbbackup.blocks.storage import LocalBackupStorage

__all__ = [
    "AgeEncryption",
    "LocalBackupStorage",
    "MySQLServer",
    "PostgresServer",
    "S3BackupStorage",
]
