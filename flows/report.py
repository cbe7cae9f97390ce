"""Per-database outcomes of a backup run and the artifact that shows them."""

from __future__ import annotations

import re

from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.errors import DbBackupError
from tasks.manifest import Manifest


def first_line(text: str | None) -> str:
    """The first line of an error message ('' for none)."""
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else ""


class DatabaseOutcome(BaseModel):
    """One database of one backup run."""

    database: str
    status: str
    backup_id: str | None = None
    key: str | None = None
    raw_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    note: str | None = None  # e.g. the _globals row: passwords left out

    @classmethod
    def stored(cls, manifest: Manifest, key: str, note: str | None = None) -> DatabaseOutcome:
        """The row of a backup that was stored (the _globals series shows as '_globals')."""
        return cls(
            database=manifest.database,
            status="ok",
            backup_id=manifest.backup_id,
            key=key,
            raw_bytes=manifest.stats.raw_bytes,
            stored_bytes=manifest.stats.stored_bytes,
            seconds=manifest.seconds,
            note=note,
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

    @property
    def failed(self) -> list[DatabaseOutcome]:
        return [o for o in self.outcomes if o.status != "ok"]

    def table(self) -> list[dict[str, object]]:
        """Rows of the run's table artifact."""
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
                "error": first_line(o.error)[:200],
                "note": o.note or "",
            }
            for o in self.outcomes
        ]

    def publish(self) -> None:
        """Create the table artifact of this run in Prefect."""
        key = "backup-" + re.sub(r"[^a-z0-9-]+", "-", self.server.lower()).strip("-")
        ok = len(self.outcomes) - len(self.failed)
        create_table_artifact(
            key=key or "backup",
            table=self.table(),
            description=f"{ok}/{len(self.outcomes)} databases of {self.server} backed up to "
            f"{self.storage}",
        )


class BackupFailed(DbBackupError):
    """Some (exit 1) or all (exit 2) databases of a backup run failed."""

    def __init__(self, report: BackupReport) -> None:
        self.report = report
        failed = report.failed
        self.exit_code = 2 if len(failed) == len(report.outcomes) else 1
        details = "; ".join(f"{o.database!r}: {first_line(o.error)}" for o in failed)
        total = len(report.outcomes)
        super().__init__(f"{len(failed)} of {total} databases of {report.server} failed: {details}")

    def __reduce__(self):  # noqa: ANN204
        return (BackupFailed, (self.report,))
