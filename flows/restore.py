"""The restore_database flow: restore one backup, into its own or a new name."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from prefect_dbbackup.blocks.process import stop_on_signals
from prefect_dbbackup.blocks.registry import load_encryption, load_server, load_storage
from prefect_dbbackup.flows.artifacts import artifact_key
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.users import restore_users
from prefect_dbbackup.tasks.catalog import find_backup
from prefect_dbbackup.tasks.restore import RestoreResult, RestoreStopped, restore_task
from prefect_dbbackup.tasks.users import UsersPartlyRestored, UsersResult
from prefect_dbbackup.tasks.workdir import private_workdir


class RestoreReport(RestoreResult):
    """A restore and, with with_users, the users/roles restored with it."""

    users: UsersResult | None = None


def _run_name() -> str:
    p = flow_run.parameters
    target = p.get("target_database") or p["database"]
    when = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return f"restore-{p['server']}-{p['database']}-to-{target}-{when}"


@flow(
    name="restore-database",
    flow_run_name=_run_name,
    validate_parameters=True,
)
@recorded_run
def restore_database(
    server: str,
    database: str,
    storage: str = "default",
    encryption: str = "default",
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
    """
    log = get_run_logger()
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    manifest = find_backup(
        sto, source_server or server, database, backup_id, allow_unsigned=allow_unsigned
    )
    target = target_database or database
    log.info(
        "restoring backup %s of %r (%.1f MB stored) into %r on %s",
        manifest.backup_id,
        database,
        manifest.stats.stored_bytes / 1e6,
        target,
        srv.describe(),
    )

    incomplete: list[UsersPartlyRestored] = []

    def users() -> UsersResult | None:
        """The users/roles restore; one that some statements were refused to is kept and
        reported at the end, so that the database is still restored."""
        if not with_users:
            return None
        try:
            return restore_users(
                server=server,
                storage=storage,
                encryption=encryption,
                backup_id=manifest.backup_id,
                identity_file=identity_file,
                source_server=source_server,
                for_database=database,
                allow_unsigned=allow_unsigned,
            )
        except UsersPartlyRestored as exc:
            incomplete.append(exc)
            return exc.report

    accounts = users() if srv.engine.users_before_database else None
    with stop_on_signals(), private_workdir() as workdir:
        try:
            result = restore_task(
                srv,
                sto,
                enc,
                manifest,
                target,
                workdir,
                replace=replace,
                identity_file=identity_file,
                jobs=jobs,
            )
        except RestoreStopped as exc:  # its message says what the databases hold now
            log.warning(str(exc))
            return Cancelled(message=str(exc))
    if not srv.engine.users_before_database:
        accounts = users()
    report = RestoreReport(**result.model_dump(), users=accounts)
    create_markdown_artifact(
        key=artifact_key("restore", f"{server}-{target}"),
        markdown=(
            f"Restored backup `{result.backup_id}` of `{database}` from `{sto.describe()}` "
            f"into `{target}` on `{srv.describe()}` in {result.seconds:.1f} s"
            + (" (replaced the existing database)." if result.replaced else ".")
            + "".join(f"\n\n- skipped {reason}" for reason in result.skipped)
        ),
    )
    if incomplete:
        raise UsersPartlyRestored(f"restored {database!r} into {target!r}; {incomplete[0]}", report)
    return report
