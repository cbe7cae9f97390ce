"""`dbbackup status --prometheus FILE`: the health rows in Prometheus's text exposition
format, written whole for node_exporter's textfile collector (docs/operations.md)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.files import replace_file
from prefect_dbbackup.tasks.health import HealthRow

Value = Callable[[HealthRow], float | None]


def _when(row: HealthRow) -> float | None:
    return row.finished_at.timestamp() if row.finished_at else None


# name, type, help, value of a row (None: the series is left out for that row)
METRICS: tuple[tuple[str, str, str, Value], ...] = (
    (
        "dbbackup_last_success_timestamp_seconds",
        "gauge",
        "When the newest good (trusted, not future-dated) backup finished (Unix time).",
        _when,
    ),
    (
        "dbbackup_backup_age_seconds",
        "gauge",
        "Age of the newest good backup when the file was written.",
        lambda r: r.age_seconds,
    ),
    (
        "dbbackup_backup_size_bytes",
        "gauge",
        "Stored (compressed, encrypted) size of the newest good backup.",
        lambda r: r.stored_bytes,
    ),
    (
        "dbbackup_backup_size_change_bytes",
        "gauge",
        "Stored size of the newest good backup minus that of the previous good one.",
        lambda r: r.change_bytes,
    ),
    (
        "dbbackup_backup_duration_seconds",
        "gauge",
        "How long the dump of the newest good backup took.",
        lambda r: r.seconds,
    ),
    (
        "dbbackup_verify_ok",
        "gauge",
        "1 when the newest good backup passed verify (its signed verify record counts).",
        lambda r: None if r.kind == "server" else float(r.verify == "ok"),
    ),
    (
        "dbbackup_backup_signed",
        "gauge",
        "1 when the newest good backup's manifest is signed, 0 when the storage is unsigned.",
        lambda r: None if r.backup_id is None else float(r.trust == "signed"),
    ),
    (
        "dbbackup_backup_late",
        "gauge",
        "1 when there is no good backup newer than the schedule's interval plus the margin.",
        lambda r: float(r.late),
    ),
    (
        "dbbackup_backup_future_dated",
        "gauge",
        "1 when a trusted backup of the series is dated in the future (a fast clock, or planted).",
        lambda r: float(r.future_dated),
    ),
    (
        "dbbackup_schedule_interval_seconds",
        "gauge",
        "The longest time between two scheduled backups that `late` is judged by.",
        lambda r: r.interval_seconds,
    ),
)


def label_value(text: str) -> str:
    """A label value escaped as the exposition format asks: backslash, double quote, newline."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(row: HealthRow) -> str:
    pairs = (("server", row.server), ("database", row.database), ("kind", row.kind))
    return ",".join(f'{name}="{label_value(value)}"' for name, value in pairs)


def exposition(rows: list[HealthRow]) -> str:
    """The metrics of every row, each metric's HELP and TYPE once."""
    lines = []
    for name, kind, text, value in METRICS:
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for row in rows:
            number = value(row)
            if number is not None:
                lines.append(f"{name}{{{_labels(row)}}} {float(number)!r}")
    return "\n".join(lines) + "\n"


def write_textfile(path: Path, text: str) -> None:
    """Write path whole (FILE.tmp in the same directory, flows/files.replace_file); 0644, for
    the collector's user to read."""
    try:
        replace_file(path, text, 0o644, path.with_name(path.name + ".tmp"))
    except OSError as exc:
        raise ConfigError(f"cannot write the metrics file {path}: {exc.strerror}") from None
