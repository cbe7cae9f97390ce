"""Events and the markdown summary of a backup run, read back through the Prefect API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
from prefect_dbbackup.flows.artifacts import md
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.backup_report import BackupFailed


async def _read_events(server: str, prefix: str) -> list:
    async with get_client() as client:
        page = await client.read_events(
            filter=EventFilter(
                event=EventNameFilter(prefix=[prefix]),
                resource=EventResourceFilter(id_prefix=[f"dbbackup.database.{server}."]),
            ),
            limit=50,
        )
        return page.events


def wait_for_events(
    server: str,
    count: int,
    prefix: str = "dbbackup.",
    deadline: float = 60.0,
    until: Callable[[list], bool] | None = None,
) -> list:
    """The events of server named prefix* once `count` have arrived (they are written
    async) and, if given, `until(events)` holds. Fails at the deadline, saying what came."""
    stop = time.monotonic() + deadline
    while True:
        events = sorted(
            asyncio.run(_read_events(server, prefix)),
            key=lambda e: (e.resource["dbbackup.database"], e.event),
        )
        if len(events) >= count and (until is None or until(events)):
            return events
        if time.monotonic() > stop:
            seen = [(e.event, e.payload.get("backup_id")) for e in events]
            raise AssertionError(
                f"waited {deadline:.0f} s for {count} event(s) {prefix}* of server {server!r}"
                f"{' matching the condition' if until else ''}; {len(events)} arrived: {seen}"
            )
        time.sleep(0.3)


def assert_database_event(event, server: str, database: str) -> None:
    """The fixed resource and related-server schema every dbbackup event carries."""
    assert event.resource.root == {
        "prefect.resource.id": f"dbbackup.database.{server}.{database}",
        "prefect.resource.name": f"{server}/{database}",
        "dbbackup.server": server,
        "dbbackup.database": database,
    }
    servers = [r.root for r in event.related if r.root.get("prefect.resource.role") == "server"]
    assert servers == [
        {
            "prefect.resource.id": f"dbbackup.server.{server}",
            "prefect.resource.role": "server",
            "prefect.resource.name": server,
        }
    ]


async def _summary(server_key: str):
    async with get_client() as client:
        # filtered on the server: an unfiltered read returns only the first page
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[server_key]))
        )


def test_a_backup_run_emits_one_event_per_database_and_a_summary(env, my_db, my_admin):
    good, broken = my_db(), my_db()
    my_admin.execute(good, "CREATE TABLE t (id INT PRIMARY KEY)", "INSERT INTO t VALUES (1), (2)")
    # a view over a dropped table makes mariadb-dump fail (not retried)
    my_admin.execute(broken, "CREATE TABLE gone (x INT)", "CREATE VIEW v AS SELECT x FROM gone")
    my_admin.execute(broken, "DROP TABLE gone")
    with pytest.raises(BackupFailed) as failure:
        backup_server(
            server=env.my, storage=env.storage, encryption=env.encryption, databases=[good, broken]
        )
    report = failure.value.report
    # every row of the report (including a `_globals` row, if the run has one) has its event
    outcomes = {o.database: o for o in report.outcomes}
    assert outcomes[good].status == "ok" and outcomes[broken].status == "failed"

    events = wait_for_events(env.my, len(outcomes))
    by_db = {e.resource["dbbackup.database"]: e for e in events}
    assert len(events) == len(by_db) == len(outcomes)
    for database, o in outcomes.items():
        event = by_db[database]
        assert event.event == f"dbbackup.backup.{'completed' if o.status == 'ok' else 'failed'}"
        assert_database_event(event, env.my, database)
        expected = {
            "backup_id": o.backup_id,
            "raw_bytes": o.raw_bytes,
            "stored_bytes": o.stored_bytes,
            "seconds": round(o.seconds, 3),
            "storage": report.storage,
        }
        if o.status != "ok":
            expected["error"] = o.error.strip().splitlines()[0]
        assert event.payload == expected
    ok = outcomes[good]
    assert ok.stored_bytes > 0 and ok.backup_id and str(env.storage_path) in report.storage
    error = by_db[broken].payload["error"]
    assert error.startswith("mariadb-dump exited 2") and "\n" not in error

    [summary] = asyncio.run(_summary(f"backup-summary-{env.my}"))
    text = summary.data
    assert summary.type == "markdown"
    # the users/roles row is said apart, never counted as a database
    assert "## Backup of" in text and "1 of 2 databases ok; users/roles ok" in text
    assert str(env.storage_path) in text and ok.backup_id in text and "for the run" in text
    assert f"| {md(good)} | ok |" in text and f"| {md(broken)} | failed |" in text
    assert f"- {md(broken)}: mariadb-dump exited 2" in text


def test_events_and_summary_carry_no_secret(env, pg_db, pg_admin):
    """A server block with a password: it is in no event or summary of its run."""
    from prefect_dbbackup.blocks import PostgresServer

    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT 1 AS x")
    secret = "s3cret-" + env.pg
    server = f"{env.pg}-pw"
    PostgresServer(host="127.0.0.1", user="postgres", password=secret).save(server)
    report = backup_server(
        server=server, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    events = wait_for_events(server, len(report.outcomes))
    assert len(events) == len(report.outcomes)
    [event] = [e for e in events if e.resource["dbbackup.database"] == db]
    assert event.event == "dbbackup.backup.completed"
    assert_database_event(event, server, db)
    assert not [e for e in events if secret in e.model_dump_json()]
    [summary] = asyncio.run(_summary(f"backup-summary-{server}"))
    assert secret not in summary.data and f"| {md(db)} | ok |" in summary.data


def test_a_deduplicated_backup_reports_its_new_and_reused_chunks(env, pg_db, pg_admin):
    """Event payload and table artifact: chunks uploaded and reused, bytes uploaded."""
    env = env.with_dedup()
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t AS SELECT g, repeat(md5(g::text), 8) AS v FROM generate_series(1, 30000) g",
    )
    for _ in range(2):
        report = backup_server(
            server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db]
        )
    second = {o.database: o for o in report.outcomes}[db]
    assert second.chunks_reused >= 1 and second.chunks_new <= 1
    events = wait_for_events(env.pg, 4, prefix="dbbackup.backup.completed")
    payloads = [e.payload for e in events if e.resource["dbbackup.database"] == db]
    latest = next(p for p in payloads if p["backup_id"] == second.backup_id)
    assert latest["chunks_new"] == second.chunks_new
    assert latest["chunks_reused"] == second.chunks_reused
    assert latest["stored_bytes"] == second.stored_bytes  # bytes this backup uploaded

    async def table():  # noqa: ANN202
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"backup-{env.pg}"]))
            )

    tables = [
        json.loads(a.data) if isinstance(a.data, str) else a.data for a in asyncio.run(table())
    ]
    rows = [r for t in tables for r in t if r["backup id"] == second.backup_id]
    assert rows[0]["chunks new/reused"] == f"{second.chunks_new}/{second.chunks_reused}"
