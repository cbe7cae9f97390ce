"""Per-database outcomes of a backup run, its exit code, and the artifact that shows them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect_dbbackup.blocks.errors import ReportedFailure
from prefect_dbbackup.flows.artifacts import artifact_key, first_line, md
from prefect_dbbackup.tasks.events import emit_backup_event
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.sizes import size
from pydantic import BaseModel

SUMMARY_ROWS = 50  # rows of succeeded databases in the markdown summary (all failures are shown)
NAMED_FAILURES = 10  # failed databases an error message names one by one


class DatabaseOutcome(BaseModel):
    """One database of one backup run."""

    database: str
    status: str
    kind: str = "database"  # "globals": the users/roles row, not a database
    backup_id: str | None = None
    key: str | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None  # e.g. the _globals row: passwords left out
    chunks_new: int | None = None  # deduplicated storage: chunks uploaded by this backup
    chunks_reused: int | None = None  # ... and chunks it named that were already stored

    @classmethod
    def stored(cls, manifest: Manifest, key: str, note: str | None = None) -> DatabaseOutcome:
        """The row of a backup that was stored (the _globals series shows as '_globals')."""
        return cls(
            database=manifest.database,
            status="ok",
            kind=manifest.kind,
            backup_id=manifest.backup_id,
            key=key,
            raw_bytes=manifest.stats.raw_bytes,
            stored_bytes=manifest.stats.stored_bytes,
            seconds=manifest.seconds,
            note=note,
            chunks_new=manifest.chunks.new if manifest.chunks else None,
            chunks_reused=manifest.chunks.reused if manifest.chunks else None,
        )

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / 1e6 / self.seconds if self.seconds else 0.0


class BackupReport(BaseModel):
    """All databases of one backup run."""

    server: str
    storage: str
    outcomes: list[DatabaseOutcome]
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def failed(self) -> list[DatabaseOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    def counted(self) -> str:
        """'N of M databases ok', the users/roles backup said apart (it is no database)."""
        return counted(self.outcomes)

    def failures_first(self) -> list[DatabaseOutcome]:
        """The outcomes, failed ones first (a 1,000-database run shows what needs action)."""
        return self.failed + [o for o in self.outcomes if o.status == "ok"]

    def table(self) -> list[dict[str, object]]:
        """Rows of the run's table artifact, failures first."""
        return [
            {
                "database": o.database,
                "status": o.status,
                "raw MB": round(o.raw_bytes / 1e6, 3),
                "stored MB": round(o.stored_bytes / 1e6, 3),
                "ratio": round(o.ratio, 2),
                "seconds": round(o.seconds, 2),
                "MB/s": round(o.mb_per_s, 1),
                "backup id": o.backup_id or "",
                "chunks new/reused": ""
                if o.chunks_new is None
                else f"{o.chunks_new}/{o.chunks_reused}",
                "error": first_line(o.error)[:200],
                "note": o.note or "",
            }
            for o in self.failures_first()
        ]

    def publish(self) -> None:
        """Create the table artifact of this run in Prefect."""
        create_table_artifact(
            key=artifact_key("backup", self.server),
            table=self.table(),
            description=f"{self.server} to {self.storage}: {self.counted()}",
        )

    def summary(self) -> str:
        """Markdown: what was backed up, where, how big, how long, what failed and why."""
        ok = [o for o in self.outcomes if o.status == "ok"]
        raw, stored = sum(o.raw_bytes for o in ok), sum(o.stored_bytes for o in ok)
        ids = sorted({o.backup_id for o in ok if o.backup_id})
        took = (
            f"{(self.finished_at - self.started_at).total_seconds():.1f} s"
            if self.started_at and self.finished_at
            else "n/a"
        )
        lines = [
            f"## Backup of {md(self.server)}: {self.counted()}",
            "",
            f"- **Where:** {md(self.storage)}" + (f", backup id {', '.join(ids)}" if ids else ""),
            f"- **Size:** {size(raw)} raw, {size(stored)} stored",
            f"- **Time:** {took} for the run"
            + (f"; started {self.started_at:%Y-%m-%d %H:%M:%S} UTC" if self.started_at else ""),
        ]
        if self.failed:
            lines += ["", f"### Failed ({len(self.failed)})", ""]
            lines += [f"- {md(o.database)}: {md(first_line(o.error))}" for o in self.failed]
        shown = self.failures_first()[: len(self.failed) + SUMMARY_ROWS]
        lines += [
            "",
            "| database | status | raw | stored | seconds | MB/s |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {md(o.database)} | {o.status} | {size(o.raw_bytes)} | "
            f"{size(o.stored_bytes)} | {o.seconds:.1f} | {o.mb_per_s:.1f} |"
            for o in shown
        ]
        if hidden := len(self.outcomes) - len(shown):
            lines += [
                "",
                f"... and {hidden} more databases ok: every row is in the table "
                f"artifact {artifact_key('backup', self.server)}",
            ]
        return "\n".join(lines) + "\n"

    def publish_summary(self) -> None:
        """Create the run's markdown summary artifact (key backup-summary-SERVER)."""
        create_markdown_artifact(
            key=artifact_key("backup-summary", self.server),
            markdown=self.summary(),
            description=f"backup of {self.server}",
        )

    def emit_events(self) -> None:
        """One dbbackup.backup.completed/.failed event per database (see tasks/events.py)."""
        for o in self.outcomes:
            emit_backup_event(
                self.server,
                o.database,
                backup_id=o.backup_id,
                raw_bytes=o.raw_bytes,
                stored_bytes=o.stored_bytes,
                seconds=o.seconds,
                storage=self.storage,
                error=first_line(o.error) if o.status != "ok" else None,
                chunks=None if o.chunks_new is None else (o.chunks_new, o.chunks_reused or 0),
            )


def failure_exit_code(outcomes: list[BaseModel]) -> int:
    """Exit code of a run with failures: 2 when every requested database failed, else 1.

    The users/roles row (`_globals`) is not a database here: a run whose only
    database failed exits 2 even though `_globals` succeeded, and a run where only
    `_globals` failed exits 1.
    """
    databases = [o for o in outcomes if _is_database(o)]
    return 2 if all(o.status != "ok" for o in databases) else 1


def _is_database(outcome: BaseModel) -> bool:
    return getattr(outcome, "kind", "database") != "globals"


def counted(outcomes: list[Any]) -> str:
    """'1 of 2 databases ok' (+ '; users/roles ok' or 'failed' when the run had them)."""
    databases = [o for o in outcomes if _is_database(o)]
    ok = sum(o.status == "ok" for o in databases)
    users = [o.status for o in outcomes if not _is_database(o)]
    said = f"{ok} of {len(databases)} database{'s' * (len(databases) != 1)} ok"
    return said + (f"; users/roles {'ok' if users == ['ok'] else 'failed'}" if users else "")


class DatabasesFailed(ReportedFailure):
    """Some (exit 1) or all (exit 2) databases of a run failed (see failure_exit_code);
    `report` has the server, the outcomes and the failed ones."""

    def __init__(self, report: Any) -> None:  # a BackupReport or a VerifyReport
        failed = [o for o in report.failed if _is_database(o)]
        named = [f"{o.database!r}: {first_line(o.error)}" for o in failed[:NAMED_FAILURES]]
        if len(failed) > NAMED_FAILURES:
            named.append(f"and {len(failed) - NAMED_FAILURES} more (see the run's artifacts)")
        users = [first_line(o.error) for o in report.failed if not _is_database(o)]
        total = sum(_is_database(o) for o in report.outcomes)
        if failed:
            named += [f"the users/roles backup: {error}" for error in users]
            message = f"{len(failed)} of {total} databases of {report.server} failed: "
            message += "; ".join(named)
        else:
            message = f"the users/roles backup of {report.server} failed: {'; '.join(users)}"
        super().__init__(message, report)
        self.exit_code = failure_exit_code(report.outcomes)


class BackupFailed(DatabasesFailed):
    """Some or all requested databases of a backup run failed."""
