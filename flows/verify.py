"""The verify_backups flow: restore the latest backups into scratch databases and check them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.blocks.registry import (
    block_name,
    load_encryption,
    load_server,
    load_storage,
    name_of,
)
from prefect_dbbackup.blocks.server import DatabaseServer
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key, first_line
from prefect_dbbackup.flows.backup_report import DatabasesFailed
from prefect_dbbackup.flows.crashed_runs import recorded_run
from prefect_dbbackup.flows.health import refresh_health
from prefect_dbbackup.tasks.catalog import refused_latest
from prefect_dbbackup.tasks.events import emit_verify_event
from prefect_dbbackup.tasks.verify import drop_stale_scratch, latest_backups, verify_task
from prefect_dbbackup.tasks.verify_record import record_signer
from prefect_dbbackup.tasks.workdir import private_workdir
from pydantic import BaseModel


class VerifyOutcome(BaseModel):
    """One database of one verify run."""

    database: str
    status: str
    backup_id: str | None = None
    checked: str = ""
    tables: int = 0
    rows: int = 0
    seconds: float = 0.0
    error: str | None = None


class VerifyReport(BaseModel):
    """All databases of one verify run."""

    server: str
    storage: str
    outcomes: list[VerifyOutcome]

    @property
    def failed(self) -> list[VerifyOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    def publish(self) -> None:
        """The run's table artifact (key verify-SERVER)."""
        ok = len(self.outcomes) - len(self.failed)
        create_table_artifact(
            key=artifact_key("verify", self.server),
            table=[
                {
                    "database": o.database,
                    "status": o.status,
                    "backup id": o.backup_id or "",
                    "checked": o.checked,
                    "tables": o.tables,
                    "rows": o.rows,
                    "seconds": round(o.seconds, 2),
                    "error": first_line(o.error)[:200],
                }
                for o in self.outcomes
            ],
            description=f"{ok}/{len(self.outcomes)} backups of {self.server} in {self.storage} "
            "restored and matched their manifests",
        )

    def emit_events(self) -> None:
        """One dbbackup.verify.completed/.failed event per database (see tasks/events.py)."""
        for o in self.outcomes:
            emit_verify_event(
                self.server,
                o.database,
                backup_id=o.backup_id,
                tables=o.tables,
                rows=o.rows,
                error=first_line(o.error) if o.status != "ok" else None,
            )


class VerifyRunFailed(DatabasesFailed):
    """Some (exit 1) or all (exit 2) verifications of a run failed."""


def _run_name() -> str:
    return f"verify-{name_of(flow_run.parameters['server'])}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"


@flow(name="verify-backups", flow_run_name=_run_name, validate_parameters=True)
@recorded_run
def verify_backups(
    server: str | DatabaseServer,
    storage: str | BackupStorage = "default",
    encryption: str | AgeEncryption = "default",
    databases: list[str] | None = None,
    identity_file: str | None = None,
    stale_after_hours: float | None = None,
) -> VerifyReport:
    """Restore the latest backup of each database into a scratch database and check it.

    `databases`: the named ones, default every database with a backup of `server`
    in storage. PostgreSQL must match the manifest's tables and exact row counts,
    MySQL/MariaDB its table list. Scratch databases are dropped afterwards; ones
    left by killed runs are dropped at start once older than `stale_after_hours`
    (default: the server's dump_timeout plus one hour). Ends Failed if any failed.

    Example:
        ```python
        from prefect_dbbackup import verify_backups

        report = verify_backups("local-pg", databases=["shop"])
        print([(o.database, o.status, o.rows) for o in report.outcomes])
        ```
    """
    log = get_run_logger()
    srv, sto, enc = load_server(server), load_storage(storage), load_encryption(encryption)
    series = block_name(srv)  # the saved block's name, or an unsaved one's describe()
    enc.identities(identity_file)  # no identity: a configuration error before anything runs
    record_signer(sto)  # nor without the key that signs the records retention trusts
    manifests = latest_backups(sto, series, databases)
    refused = [
        VerifyOutcome(
            database=e.database,
            status="refused",
            backup_id=e.backup_id,
            error=str(e.refusal()),
        )
        for e in refused_latest(sto, series, databases)
    ]
    hours = stale_after_hours if stale_after_hours is not None else srv.dump_timeout / 3600 + 1
    try:
        drop_stale_scratch(srv, timedelta(hours=hours))
    except DbBackupError as exc:  # each verification below reports the server's trouble itself
        log.warning("could not look for stale scratch databases: %s", exc)
    outcomes = list(refused)  # newer than what is verified: a planted or tampered backup
    with private_workdir() as workdir:
        for m in manifests:
            state = verify_task(
                srv, sto, enc, m, workdir, identity_file=identity_file, return_state=True
            )
            result = state.result(raise_on_failure=False)
            if isinstance(result, BaseException):
                outcome = VerifyOutcome(
                    database=m.database,
                    status="failed",
                    backup_id=m.backup_id,
                    tables=getattr(result, "tables", 0),
                    rows=getattr(result, "rows", 0),
                    error=str(result) or type(result).__name__,
                )
                log.error("verification of %r failed: %s", m.database, outcome.error)
            else:
                outcome = VerifyOutcome(
                    database=m.database,
                    status="ok",
                    backup_id=m.backup_id,
                    checked=result.checked,
                    tables=result.tables,
                    rows=result.rows,
                    seconds=result.seconds,
                )
            outcomes.append(outcome)
    report = VerifyReport(server=series, storage=sto.describe(), outcomes=outcomes)
    report.publish()
    report.emit_events()
    refresh_health(sto, series)
    if report.failed:
        raise VerifyRunFailed(report)
    return report
