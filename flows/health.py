"""Backup health at a glance: `dbbackup status`, and the backup-health artifacts that every
backup, verify and prune run refreshes (docs/operations.md, "Backup health").

The rows come from tasks/health.py; the schedule interval that makes a backup `late`
comes from the server's backup-server deployment (what the scheduler really runs).
"""

from __future__ import annotations

import hashlib
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import DeploymentSchedule
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.blocks.storage import BackupStorage
from prefect_dbbackup.flows.artifacts import artifact_key, md
from prefect_dbbackup.flows.fleet import backup_deployments
from prefect_dbbackup.flows.text import printable
from prefect_dbbackup.tasks.health import DEFAULT_INTERVAL, HealthRow, health_rows, summary
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.sizes import size

FLEET_KEY = "backup-health"  # the fleet's table; a server's is backup-health-{server}
FIRES = 32  # schedule fire times looked at for the longest gap between two


def health_key(server: str) -> str:
    """The artifact key of a server's health: backup-health-{server} in the characters a key
    allows, with 8 hex digits of the name's sha256 when the name had to change, so that two
    names never share a key and no name gives the fleet's key."""
    key = artifact_key(FLEET_KEY, server)
    if key == f"{FLEET_KEY}-{server}":
        return key
    return f"{key}-{hashlib.sha256(server.encode()).hexdigest()[:8]}"


def _longest_gap(schedule: DeploymentSchedule, now: datetime) -> timedelta | None:
    """The longest time between two fire times of an active cron or interval schedule."""
    from prefect.server.schemas.schedules import CronSchedule

    raw = schedule.schedule
    if not schedule.active:
        return None
    if hasattr(raw, "interval"):
        return raw.interval
    if hasattr(raw, "cron"):
        dates = CronSchedule.model_validate(raw.model_dump()).get_dates(FIRES, start=now)
        return max((b - a for a, b in zip(dates, dates[1:], strict=False)), default=None)
    return None  # an rrule: the default interval


def backup_intervals(now: datetime | None = None) -> dict[str, timedelta]:
    """Per server with a scheduled backup-server deployment, the longest time between two of
    its scheduled runs."""
    now = now or datetime.now(UTC)
    intervals = {}
    for deployment in run_coro_as_sync(backup_deployments()) or []:
        gaps = [g for s in deployment.schedules if (g := _longest_gap(s, now)) is not None]
        if gaps:
            intervals[deployment.name] = max(gaps)
    return intervals


def age(seconds: float | None) -> str:
    """An age for people: 45 s, 12 min, 5 h 3 min, 2 d 4 h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def _change(row: HealthRow) -> str:
    if row.change_bytes is None or not row.stored_bytes:
        return "-"
    previous = row.stored_bytes - row.change_bytes
    percent = f" ({row.change_bytes / previous:+.0%})" if previous else ""
    sign = "+" if row.change_bytes >= 0 else "-"
    return f"{sign}{size(abs(row.change_bytes))}{percent}"


def _verify(row: HealthRow) -> str:
    if row.verify == "ok" and row.verified_at is not None:
        return f"ok {row.verified_at:%Y-%m-%d}"
    return row.verify if row.kind != "server" else "-"


def _name(row: HealthRow) -> str:
    if row.kind == "users":
        return "(users/roles)"
    if row.kind == "server":
        return "(no backups)"
    return row.database


def cells(row: HealthRow) -> dict[str, str]:
    """The row as the text and markdown tables show it (names not yet escaped)."""
    return {
        "server": row.server,
        "database": _name(row),
        "state": row.state,
        "age": age(row.age_seconds),
        "size": size(row.stored_bytes) if row.stored_bytes is not None else "-",
        "change": _change(row),
        "took": age(row.seconds),
        "verify": _verify(row),
        "trust": row.trust,
        "backup": row.backup_id or "-",
        "note": row.note,
    }


COLUMNS = ("database", "state", "age", "size", "change", "took", "verify", "trust", "backup")


def text_lines(rows: list[HealthRow], fleet: bool) -> list[str]:
    """The terminal table: one line per row, names printable, notes on their own line."""
    columns = ("server", *COLUMNS) if fleet else COLUMNS
    table = [{c: printable(cells(r)[c]) for c in columns} for r in rows]
    widths = {c: max([len(c), *(len(t[c]) for t in table)]) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns).rstrip()]
    for row, t in zip(rows, table, strict=True):
        lines.append("  ".join(t[c].ljust(widths[c]) for c in columns).rstrip())
        if row.note:
            lines.append(f"    note: {printable(row.note)}")
    return lines


def markdown(rows: list[HealthRow], title: str, fleet: bool) -> str:
    """The artifact's markdown table (every cell escaped)."""
    columns = ("server", *COLUMNS, "note") if fleet else (*COLUMNS, "note")
    body = [f"| {' | '.join(md(cells(r)[c]) for c in columns)} |" for r in rows]
    return "\n".join(
        [
            f"## {md(title)}",
            "",
            f"{md(summary(rows))}; as of {datetime.now(UTC):%Y-%m-%d %H:%M}Z",
            "",
            f"| {' | '.join(columns)} |",
            "|" + "---|" * len(columns),
            *body,
        ]
    )


def publish_health(rows: list[HealthRow], server: str | None) -> None:
    """The backup-health-{server} artifact of one server, or the fleet's backup-health."""
    title = f"Backup health of {server}" if server is not None else "Backup health of the fleet"
    create_markdown_artifact(
        key=health_key(server) if server is not None else FLEET_KEY,
        markdown=markdown(rows, title, fleet=server is None),
        description=f"{title}: {summary(rows)}",
    )


def refresh_health(storage: BackupStorage, server: str) -> None:
    """Publish the health of `server` (the end of a backup, verify or prune run: only its
    own series is read, whatever the size of the fleet); a failure is logged, never
    raised: the run's work is done. The fleet's table is `dbbackup status`'s."""
    try:
        rows = health_rows(storage, server, intervals=backup_intervals(), also_servers=[server])
        publish_health(rows, server)
    except Exception as exc:  # noqa: BLE001 - the health table must never fail a backup
        run_logger().warning("could not refresh the backup health artifacts: %s", exc)


def _publish_outside_a_run(rows: list[HealthRow]) -> None:
    """The fleet's table from `dbbackup status`: no flow run (a status every 5 minutes from
    cron would fill the UI with runs). Prefect 3.9 warns that an artifact made outside a run
    is deprecated; should it be refused one day, status says so and goes on."""
    try:
        with warnings.catch_warnings(action="ignore", category=FutureWarning):
            publish_health(rows, None)
    except Exception as exc:  # noqa: BLE001 - the table on the terminal is status's answer
        run_logger().warning("could not publish the backup-health artifact: %s", exc)


def health_status(
    storage: BackupStorage,
    server: str | None,
    names: list[str] | None,
    interval_hours: float | None,
    margin_hours: float,
    prometheus: Path | None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """`dbbackup status`: the rows (as --json prints them) and the text lines; `names` the
    server blocks (None: asked here); the metrics file written when asked."""
    from prefect_dbbackup.blocks.registry import server_names
    from prefect_dbbackup.flows.prometheus import exposition, write_textfile

    override = timedelta(hours=interval_hours) if interval_hours is not None else None
    rows = health_rows(
        storage,
        server,
        intervals={} if override else backup_intervals(),
        default_interval=override or DEFAULT_INTERVAL,
        margin=timedelta(hours=margin_hours),
        also_servers=server_names() if names is None else names,
    )
    if prometheus is not None:
        write_textfile(prometheus, exposition(rows))
    if server is None:  # the whole fleet was read: its table in the UI too
        _publish_outside_a_run(rows)
    lines = [*text_lines(rows, fleet=server is None), summary(rows)]
    return [r.model_dump(mode="json") for r in rows], lines


def archive_lines(storage: BackupStorage, names: list[str]) -> tuple[list[str], bool]:
    """`dbbackup status` of the point-in-time archives: per server with pitr, the newest
    archive run and what the server holds back for the archive (PostgreSQL: its slot's WAL,
    which fills the server's disk while no run takes it); False when a server lost log it
    held for the archive (the slot is `lost`)."""
    from prefect_dbbackup.blocks.registry import load_server
    from prefect_dbbackup.tasks.archive import newest_runs

    lines, ok = [], True
    for name in names:
        try:
            srv = load_server(name)
        except DbBackupError:
            continue
        if not srv.pitr:
            continue
        trusted, _ = newest_runs(storage, name)
        newest = max(trusted, key=lambda m: m.finished_at, default=None)
        if newest is None:
            ran = "no archive run stored yet"
        else:
            ago = (datetime.now(UTC) - newest.finished_at).total_seconds()
            ran = (
                f"newest archive run {age(ago)} ago, up to {newest.end.file}:{newest.end.position}"
            )
        try:
            held = srv.log_held()
        except DbBackupError as exc:
            lines.append(f"archive  {name}: {ran}; the server could not be asked: {exc}")
            continue
        if held is not None:
            held_bytes, state = held
            ran += f"; its slot holds {size(held_bytes)} of WAL on the server ({state})"
            if state == "lost":
                ok = False
                ran += ": WAL was lost before it was archived, see docs/pitr.md"
        lines.append(f"archive  {name}: {ran}")
    return lines, ok
