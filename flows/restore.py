"""The restore_database flow: restore one backup, into its own or a new name."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.process import stop_on_signals
from prefect_dbbackup.blocks.registry import (
    block_name,
    load_encryption,
    load_server,
    load_storage,
    name_of,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.users import restore_users
from prefect_dbbackup.tasks.catalog import find_backup
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.restore import RestoreResult, RestoreStopped, restore_task
from prefect_dbbackup.tasks.sizes import size
from prefect_dbbackup.tasks.users import UsersPartlyRestored, UsersResult
from prefect_dbbackup.tasks.workdir import private_workdir


class RestoreReport(RestoreResult):
    """A restore and, with with_users, the users/roles restored with it."""

    users: UsersResult | None = None


def _run_name() -> str:
    p = flow_run.parameters
    target = p.get("target_database") or p["database"]
    when = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return f"restore-{name_of(p['server'])}-{p['database']}-to-{target}-{when}"


class _UsersRestore:
    """restore --with-users: the users/roles restore (the restore_users flow, as a subflow),
    before or after the database as the engine needs. One that some statements were
    refused to is kept and reported at the end, so that the database is still restored."""

    def __init__(self, wanted: bool, **params: Any) -> None:
        self.wanted, self.params = wanted, params
        self.incomplete: UsersPartlyRestored | None = None

    def run(self) -> UsersResult | None:
        """The users/roles restore's result (None without --with-users)."""
        if not self.wanted:
            return None
        try:
            return restore_users(**self.params)
        except UsersPartlyRestored as exc:
            self.incomplete = exc
            return exc.report


def _announce(manifest: Manifest, target: str, srv: DatabaseServer) -> None:
    """The run's first log line: which backup goes where."""
    get_run_logger().info(
        "restoring backup %s of %r (%s stored) into %r on %s",
        manifest.backup_id,
        manifest.database,
        size(manifest.stats.stored_bytes),
        target,
        srv.describe(),
    )


def _restore_or_cancelled(
    srv: DatabaseServer,
    sto: BackupStorage,
    enc: AgeEncryption,
    manifest: Manifest,
    target: str,
    **options: Any,
) -> RestoreResult | State:
    """The restore task (options: restore_backup's) in a private work dir; a stop signal
    ends the run Cancelled, saying what the databases hold now."""
    with stop_on_signals(), private_workdir() as workdir:
        try:
            return restore_task(srv, sto, enc, manifest, target, workdir, **options)
        except RestoreStopped as exc:  # its message says what the databases hold now
            get_run_logger().warning(str(exc))
            return Cancelled(message=str(exc))


def _publish_artifact(
    result: RestoreResult, server: str, storage: BackupStorage, srv: DatabaseServer
) -> None:
    """The run's markdown artifact: what was restored from where into where."""
    create_markdown_artifact(
        key=artifact_key("restore", f"{server}-{result.target_database}"),
        markdown=(
            f"Restored backup `{result.backup_id}` of `{result.database}` from "
            f"`{storage.describe()}` into `{result.target_database}` on `{srv.describe()}` "
            f"in {result.seconds:.1f} s"
            + (" (replaced the existing database)." if result.replaced else ".")
            + "".join(f"\n\n- skipped {reason}" for reason in result.skipped)
        ),
    )


@flow(
    name="restore-database",
    flow_run_name=_run_name,
    validate_parameters=True,
)
@recorded_run
def restore_database(
    server: str | DatabaseServer,
    database: str,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    backup_id: str = "latest",
    target_database: str | None = None,
    replace: bool = False,
    identity_file: str | None = None,
    jobs: int = 1,
    source_server: str | None = None,
    allow_unsigned: bool = False,
    with_users: bool = False,
) -> RestoreReport | State:
    """Restore a backup of `database` (default: the latest) into `target_database`.

    The stored object is checked against its manifest (size, sha256) and the
    identity against the header before the target is created or dropped.
    An existing target is replaced only with replace=True. jobs > 1 (PostgreSQL)
    decrypts into the private work dir first so pg_restore can run in parallel.
    source_server picks the backups of another server (e.g. one that is gone)
    to restore into `server`. Only backups whose manifest is signed by a key the storage
    trusts are restored; allow_unsigned also accepts an unsigned one (from before signing)
    named by backup_id (a ConfigError with 'latest').
    with_users also restores the users/roles backed up with it, before the database or
    after it as the engine needs (the restore_users flow, as a subflow).

    Example:
        ```python
        from prefect_dbbackup import restore_database

        result = restore_database("local-pg", "shop", target_database="shop_copy")
        print(result.backup_id, result.seconds)
        ```
    """
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    series = block_name(srv)  # the saved block's name, or an unsaved one's describe()
    manifest = find_backup(
        sto, source_server or series, database, backup_id, allow_unsigned=allow_unsigned
    )
    target = target_database or database
    _announce(manifest, target, srv)
    users = _UsersRestore(
        with_users,
        server=server,
        storage=storage,
        encryption=encryption,
        backup_id=manifest.backup_id,
        identity_file=identity_file,
        source_server=source_server,
        for_database=database,
        allow_unsigned=allow_unsigned,
    )
    accounts = users.run() if srv.engine.users_before_database else None
    result = _restore_or_cancelled(
        srv, sto, enc, manifest, target, replace=replace, identity_file=identity_file, jobs=jobs
    )
    if isinstance(result, State):
        return result
    if not srv.engine.users_before_database:
        accounts = users.run()
    report = RestoreReport(**result.model_dump(), users=accounts)
    _publish_artifact(result, series, sto, srv)
    if users.incomplete:
        raise UsersPartlyRestored(
            f"restored {database!r} into {target!r}; {users.incomplete}", report
        )
    return report
