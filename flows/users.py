"""The restore_users flow: replay a users/roles backup (the `_globals` series) into a server."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.registry import (
    block_name,
    load_encryption,
    load_server,
    load_storage,
    name_of,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.tasks.catalog import find_backup
from prefect_dbbackup.tasks.users import UsersResult, find_users_backup, restore_users_task
from prefect_dbbackup.tasks.workdir import private_workdir


def _run_name() -> str:
    return f"restore-users-{name_of(flow_run.parameters['server'])}"


@flow(name="restore-users", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def restore_users(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    backup_id: str = "latest",
    users: list[str] | None = None,
    dry_run: bool = False,
    identity_file: str | None = None,
    source_server: str | None = None,
    for_database: str | None = None,
    allow_unsigned: bool = False,
) -> UsersResult:
    """Restore users/roles and their grants into `server`, idempotently.

    backup_id picks the users/roles backup (default: the newest). With
    for_database, backup_id is that database's backup instead, and the users/roles
    taken with it (or the newest before it) are restored. users limits the restore
    to these accounts (MySQL: `name` for every host, or `name@host`). dry_run only
    lists the statements, passwords and hashes masked. source_server reads the
    backups of another (e.g. lost) server. allow_unsigned also accepts a backup named by
    backup_id whose manifest is unsigned (from before signing; a ConfigError with 'latest').

    Example:
        ```python
        from prefect_dbbackup import restore_users

        planned = restore_users("local-pg", users=["app"], dry_run=True)
        print(planned.accounts)
        ```
    """
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    series = source_server or block_name(srv)
    if for_database is None:
        manifest = find_users_backup(sto, series, backup_id, allow_unsigned=allow_unsigned)
    else:
        database_backup = find_backup(
            sto, series, for_database, backup_id, allow_unsigned=allow_unsigned
        )
        manifest = find_users_backup(
            sto, series, database_backup.backup_id, at_or_before=True, allow_unsigned=allow_unsigned
        )
    with private_workdir() as workdir:
        result = restore_users_task(
            srv,
            sto,
            enc,
            manifest,
            workdir,
            users=users,
            dry_run=dry_run,
            identity_file=identity_file,
        )
    verb = "Would restore" if dry_run else "Restored"
    create_markdown_artifact(
        key="restore-users",
        markdown=(
            f"{verb} {len(result.accounts)} users/roles from backup `{result.backup_id}` of "
            f"`{series}` into `{srv.describe()}`: {result.applied} statements applied, "
            f"{len(result.skipped)} skipped." + (f"\n\nNote: {result.note}" if result.note else "")
        ),
    )
    return result
