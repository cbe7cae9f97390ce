"""dbbackup's Python API: the flows, blocks, result models and errors to compose with.

Example:
    ```python
    from prefect import flow
    from prefect_dbbackup import backup_server, verify_backups

    @flow
    def nightly() -> None:
        backup_server("local-pg", databases=["shop"])
        verify_backups("local-pg", databases=["shop"])
    ```

Every name is imported on first access (PEP 562): `import prefect_dbbackup` (which
`prefect_dbbackup.flows.cli` runs first) imports neither Prefect nor any block, so the
command line answers a usage error without loading them. docs/python-api.md shows a
composed flow; the source folder is `api/` (pyproject.toml maps it to this package).
"""

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers only; a unit test keeps it equal to _EXPORTS
    from prefect_dbbackup.blocks import AgeEncryption as AgeEncryption
    from prefect_dbbackup.blocks import LocalBackupStorage as LocalBackupStorage
    from prefect_dbbackup.blocks import MySQLServer as MySQLServer
    from prefect_dbbackup.blocks import PostgresServer as PostgresServer
    from prefect_dbbackup.blocks import S3BackupStorage as S3BackupStorage
    from prefect_dbbackup.blocks.errors import AuthError as AuthError
    from prefect_dbbackup.blocks.errors import BackupNotFound as BackupNotFound
    from prefect_dbbackup.blocks.errors import ConfigError as ConfigError
    from prefect_dbbackup.blocks.errors import ConnectionFailed as ConnectionFailed
    from prefect_dbbackup.blocks.errors import DatabaseNotFound as DatabaseNotFound
    from prefect_dbbackup.blocks.errors import DbBackupError as DbBackupError
    from prefect_dbbackup.blocks.errors import DiskFull as DiskFull
    from prefect_dbbackup.blocks.errors import IntegrityError as IntegrityError
    from prefect_dbbackup.blocks.errors import Interrupted as Interrupted
    from prefect_dbbackup.blocks.errors import ObjectLocked as ObjectLocked
    from prefect_dbbackup.blocks.errors import PermissionDenied as PermissionDenied
    from prefect_dbbackup.blocks.errors import ReportedFailure as ReportedFailure
    from prefect_dbbackup.blocks.errors import StorageError as StorageError
    from prefect_dbbackup.blocks.errors import TargetExists as TargetExists
    from prefect_dbbackup.blocks.errors import ToolFailed as ToolFailed
    from prefect_dbbackup.blocks.retention import RetentionPolicy as RetentionPolicy
    from prefect_dbbackup.flows.archive import ArchiveGap as ArchiveGap
    from prefect_dbbackup.flows.archive import archive_server as archive_server
    from prefect_dbbackup.flows.backup import backup_server as backup_server
    from prefect_dbbackup.flows.backup_report import BackupFailed as BackupFailed
    from prefect_dbbackup.flows.backup_report import BackupReport as BackupReport
    from prefect_dbbackup.flows.backup_report import DatabaseOutcome as DatabaseOutcome
    from prefect_dbbackup.flows.backup_report import DatabasesFailed as DatabasesFailed
    from prefect_dbbackup.flows.base_backup import base_backup_server as base_backup_server
    from prefect_dbbackup.flows.check import CheckFailed as CheckFailed
    from prefect_dbbackup.flows.check import check_backups as check_backups
    from prefect_dbbackup.flows.prune import prune_backups as prune_backups
    from prefect_dbbackup.flows.restore import RestoreReport as RestoreReport
    from prefect_dbbackup.flows.restore import restore_database as restore_database
    from prefect_dbbackup.flows.restore_cluster import ClusterRestoreReport as ClusterRestoreReport
    from prefect_dbbackup.flows.restore_cluster import restore_cluster as restore_cluster
    from prefect_dbbackup.flows.restore_to_time import PitrRestoreReport as PitrRestoreReport
    from prefect_dbbackup.flows.restore_to_time import restore_to_time as restore_to_time
    from prefect_dbbackup.flows.users import restore_users as restore_users
    from prefect_dbbackup.flows.verify import VerifyOutcome as VerifyOutcome
    from prefect_dbbackup.flows.verify import VerifyReport as VerifyReport
    from prefect_dbbackup.flows.verify import VerifyRunFailed as VerifyRunFailed
    from prefect_dbbackup.flows.verify import verify_backups as verify_backups
    from prefect_dbbackup.tasks.archive_manifest import ArchiveManifest as ArchiveManifest
    from prefect_dbbackup.tasks.base_backup import BaseBackupManifest as BaseBackupManifest
    from prefect_dbbackup.tasks.dedup.check import CheckReport as CheckReport
    from prefect_dbbackup.tasks.dedup.check import Finding as Finding
    from prefect_dbbackup.tasks.prune import PruneItem as PruneItem
    from prefect_dbbackup.tasks.restore import RestoreResult as RestoreResult
    from prefect_dbbackup.tasks.restore import RestoreStopped as RestoreStopped
    from prefect_dbbackup.tasks.users import UsersPartlyRestored as UsersPartlyRestored
    from prefect_dbbackup.tasks.users import UsersResult as UsersResult

_FLOWS = {
    "backup_server": "flows.backup",
    "restore_database": "flows.restore",
    "restore_users": "flows.users",
    "verify_backups": "flows.verify",
    "prune_backups": "flows.prune",
    "check_backups": "flows.check",
    "archive_server": "flows.archive",
    "restore_to_time": "flows.restore_to_time",
    "base_backup_server": "flows.base_backup",
    "restore_cluster": "flows.restore_cluster",
}
_BLOCKS = {
    name: "blocks"
    for name in (
        "PostgresServer",
        "MySQLServer",
        "LocalBackupStorage",
        "S3BackupStorage",
        "AgeEncryption",
    )
}
_MODELS = {
    "RetentionPolicy": "blocks.retention",
    "BackupReport": "flows.backup_report",
    "DatabaseOutcome": "flows.backup_report",
    "RestoreReport": "flows.restore",
    "RestoreResult": "tasks.restore",
    "PitrRestoreReport": "flows.restore_to_time",
    "ArchiveManifest": "tasks.archive_manifest",
    "ClusterRestoreReport": "flows.restore_cluster",
    "BaseBackupManifest": "tasks.base_backup",
    "UsersResult": "tasks.users",
    "VerifyReport": "flows.verify",
    "VerifyOutcome": "flows.verify",
    "PruneItem": "tasks.prune",
    "CheckReport": "tasks.dedup.check",
    "Finding": "tasks.dedup.check",
}
_ERRORS = {
    **{
        name: "blocks.errors"
        for name in (
            "DbBackupError",
            "ReportedFailure",
            "ConfigError",
            "AuthError",
            "PermissionDenied",
            "ConnectionFailed",
            "DatabaseNotFound",
            "TargetExists",
            "BackupNotFound",
            "IntegrityError",
            "Interrupted",
            "ToolFailed",
            "StorageError",
            "ObjectLocked",
            "DiskFull",
        )
    },
    "DatabasesFailed": "flows.backup_report",
    "BackupFailed": "flows.backup_report",
    "VerifyRunFailed": "flows.verify",
    "CheckFailed": "flows.check",
    "ArchiveGap": "flows.archive",
    "RestoreStopped": "tasks.restore",
    "UsersPartlyRestored": "tasks.users",
}
# exported name -> module under prefect_dbbackup that defines (or lazily exports) it
_EXPORTS: dict[str, str] = {**_FLOWS, **_BLOCKS, **_MODELS, **_ERRORS}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value  # asked once: later lookups do not come back here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
