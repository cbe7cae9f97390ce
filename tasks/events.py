"""Prefect events, one per database per run, for automations and alerting.

The schema is fixed (automations and tests match on it):
- event: `dbbackup.{backup|verify}.{completed|failed}`
- resource: `dbbackup.database.{server}.{database}` with `dbbackup.server`/`dbbackup.database`
- related: the server, `dbbackup.server.{server}`, role `server`
- payload: small numbers and the first line of an error; never a secret.
"""

from __future__ import annotations

from typing import Any

from prefect.events import Event, emit_event


def database_resource(server: str, database: str) -> dict[str, str]:
    """The resource an event about one database of one server is attached to."""
    return {
        "prefect.resource.id": f"dbbackup.database.{server}.{database}",
        "prefect.resource.name": f"{server}/{database}",
        "dbbackup.server": server,
        "dbbackup.database": database,
    }


def server_related(server: str) -> list[dict[str, str]]:
    """The server as a related resource (automations can match every database of it)."""
    return [
        {
            "prefect.resource.id": f"dbbackup.server.{server}",
            "prefect.resource.role": "server",
            "prefect.resource.name": server,
        }
    ]


def emit_database_event(
    action: str, server: str, database: str, error: str | None, payload: dict[str, Any]
) -> Event | None:
    """Emit `dbbackup.{action}.completed`, or `.failed` when error (its first line) is given."""
    if error is not None:
        payload = {**payload, "error": error}
    return emit_event(
        event=f"dbbackup.{action}.{'failed' if error is not None else 'completed'}",
        resource=database_resource(server, database),
        related=server_related(server),
        payload=payload,
    )


def emit_backup_event(
    server: str,
    database: str,
    *,
    backup_id: str | None,
    raw_bytes: int,
    stored_bytes: int,
    seconds: float,
    storage: str,
    error: str | None = None,
    chunks: tuple[int, int] | None = None,
) -> Event | None:
    """dbbackup.backup.completed / .failed for one database of a backup run. `chunks`: (new,
    reused) of a deduplicated backup, whose stored_bytes are the bytes it uploaded."""
    payload = {
        "backup_id": backup_id,
        "raw_bytes": raw_bytes,
        "stored_bytes": stored_bytes,
        "seconds": round(seconds, 3),
        "storage": storage,
    }
    if chunks is not None:
        payload |= {"chunks_new": chunks[0], "chunks_reused": chunks[1]}
    return emit_database_event("backup", server, database, error, payload)


def emit_verify_event(
    server: str,
    database: str,
    *,
    backup_id: str | None,
    tables: int,
    rows: int,
    error: str | None = None,
) -> Event | None:
    """dbbackup.verify.completed / .failed for one database of a verify run."""
    payload = {"backup_id": backup_id, "tables": tables, "rows": rows}
    return emit_database_event("verify", server, database, error, payload)


def emit_archive_event(
    server: str, *, run_id: str | None, pieces: int, raw_bytes: int, end: str, error: str | None
) -> Event | None:
    """dbbackup.archive.completed / .failed for one archive run of a server (error: a gap
    found, or why the run failed)."""
    return emit_event(
        event=f"dbbackup.archive.{'failed' if error is not None else 'completed'}",
        resource={
            "prefect.resource.id": f"dbbackup.server.{server}",
            "prefect.resource.name": server,
            "dbbackup.server": server,
        },
        payload={"run_id": run_id, "pieces": pieces, "raw_bytes": raw_bytes, "end": end}
        | ({"error": error} if error is not None else {}),
    )
