"""Prefect block types of dbbackup: `prefect block register -m blocks` registers them all."""

from blocks.encryption import AgeEncryption
from blocks.mysql import MySQLServer
from blocks.postgres import PostgresServer
from blocks.s3 import S3BackupStorage
from blocks.storage import LocalBackupStorage

__all__ = [
    "AgeEncryption",
    "LocalBackupStorage",
    "MySQLServer",
    "PostgresServer",
    "S3BackupStorage",
]
