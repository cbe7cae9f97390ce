"""verify_backups / `dbbackup verify`: restore into scratch databases, compare, clean up."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

import pytest
from prefect_dbbackup.blocks import MySQLServer, PostgresServer
from prefect_dbbackup.blocks.engines import MYSQL, POSTGRES
from prefect_dbbackup.blocks.server import SCRATCH_PREFIX
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.backup_report import BackupFailed
from prefect_dbbackup.flows.verify import VerifyRunFailed, verify_backups
from prefect_dbbackup.tasks.manifest import Manifest
from prefect_dbbackup.tasks.verify import scratch_name

from tests.helpers import MyAdmin, PgAdmin
from tests.integration.test_events import assert_database_event, wait_for_events

VERIFY = "dbbackup.verify."

PG_SCHEMA = """
CREATE TABLE plain (id int PRIMARY KEY, v text);
INSERT INTO plain SELECT g, md5(g::text) FROM generate_series(1, 1234) g;
CREATE TABLE empty_one (id int);
CREATE TABLE measured (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE measured_2025 PARTITION OF measured FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE measured_2026 PARTITION OF measured FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO measured SELECT '2025-03-01'::date + (g % 500), g FROM generate_series(1, 700) g;
CREATE UNLOGGED TABLE scratchpad AS SELECT g AS n FROM generate_series(1, 42) g;
CREATE SCHEMA "Odd Schema";
CREATE TABLE "Odd Schema"."a.b C" AS SELECT 1 AS x UNION ALL SELECT 2;
CREATE MATERIALIZED VIEW summary AS SELECT count(*) AS n FROM plain;
CREATE VIEW plain_view AS SELECT * FROM plain;
"""


def _pg_source_counts(pg_admin, db: str) -> dict[str, int]:
    """Exact counts of the tables pg_dump writes data for, taken independently of dbbackup."""
    tables = pg_admin.query(
        db,
        "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
        "WHERE schemaname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS "
        "(SELECT FROM pg_partitioned_table WHERE partrelid = "
        "(quote_ident(schemaname) || '.' || quote_ident(tablename))::regclass)",  # a parent has no rows of its own
    )
    return {t: pg_admin.query(db, f"SELECT count(*) FROM {t}")[0][0] for (t,) in tables}


def _my_source_counts(my_admin, db: str) -> dict[str, int]:
    return {t: n for t, (n, _) in my_admin.table_fingerprints(db).items()}


def _scratch_left(admin: PgAdmin | MyAdmin, db: str) -> list[str]:
    """Scratch databases made for this test's database (other verify runs may be live)."""
    if isinstance(admin, PgAdmin):
        rows = admin.query("postgres", "SELECT datname FROM pg_database")
    else:
        rows = admin.query(None, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
    return [n for (n,) in rows if n.startswith(SCRATCH_PREFIX) and n.endswith(db.lower())]


def _manifest_path(env, server: str, db: str):
    [path] = [p for p in env.storage_path.rglob("manifest.json") if f"/{server}/{db}/" in str(p)]
    return path


def test_postgres_backup_verifies_with_exact_row_counts(env, pg_db, pg_admin):
    db = pg_db()
    pg_admin.execute(db, PG_SCHEMA)
    source = _pg_source_counts(pg_admin, db)
    backup_server(server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db])

    manifest = Manifest.from_bytes(_manifest_path(env, env.pg, db).read_bytes())
    # leaf partitions, unlogged and oddly named tables; not the partitioned parent, views
    assert manifest.row_counts == source
    assert manifest.tables == sorted(source)
    assert '"Odd Schema"."a.b C"' in source and "public.measured" not in source
    assert source["public.measured_2025"] + source["public.measured_2026"] == 700

    report = verify_backups(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    [outcome] = report.outcomes
    assert outcome.status == "ok" and outcome.checked == "row counts"
    assert outcome.backup_id == manifest.backup_id
    assert (outcome.tables, outcome.rows) == (len(source), sum(source.values()))
    assert _scratch_left(pg_admin, db) == []

    [event] = wait_for_events(env.pg, 1, prefix=VERIFY)
    assert event.event == "dbbackup.verify.completed"
    assert_database_event(event, env.pg, db)
    assert event.payload == {
        "backup_id": manifest.backup_id,
        "tables": len(source),
        "rows": sum(source.values()),
    }


def test_mariadb_backup_verifies_row_counts_counted_in_the_dump(env, my_db, my_admin):
    """MariaDB counts come from the dump stream itself (history rows included); a manifest
    without them still verifies its table list, and a count that differs fails."""
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE a (id INT PRIMARY KEY, v VARCHAR(20))",
        "INSERT INTO a VALUES (1, 'x'), (2, 'y),(z'), (3, '\\'),(\\n')",
        "CREATE TABLE `odd name` (x BLOB)",
        "INSERT INTO `odd name` VALUES (0x00ff), (NULL)",
        "CREATE TABLE hist (x INT) WITH SYSTEM VERSIONING",
        "INSERT INTO hist VALUES (7)",
        "UPDATE hist SET x = 8",
        "CREATE TABLE empty (x INT)",
        "CREATE VIEW av AS SELECT id FROM a",
        "CREATE SEQUENCE seq",
    )
    source = _my_source_counts(my_admin, db)
    source["hist"] = my_admin.query(db, "SELECT count(*) FROM hist FOR SYSTEM_TIME ALL")[0][0]
    assert source == {"a": 3, "odd name": 2, "hist": 2, "empty": 0}
    backup_server(server=env.my, storage=env.storage, encryption=env.encryption, databases=[db])
    path = _manifest_path(env, env.my, db)
    manifest = Manifest.from_bytes(path.read_bytes())
    assert manifest.tables == sorted(source) and manifest.row_counts == source

    def verify() -> tuple[int, dict]:
        result = env.cli(
            "verify", env.my, "--database", db, "--storage", env.storage,
            "--encryption", env.encryption, "--json",
        )  # fmt: skip
        return result.exit_code, json.loads(result.stdout)["databases"][0]

    code, outcome = verify()
    assert code == 0, outcome
    assert outcome["status"] == "ok" and outcome["checked"] == "row counts"
    assert (outcome["tables"], outcome["rows"]) == (4, sum(source.values()))
    assert _scratch_left(my_admin, db) == []

    doctored = json.loads(path.read_text())
    doctored["row_counts"]["hist"] = 1  # what a restore that lost the history would show
    path.write_text(json.dumps(doctored))
    env.resign(path)
    code, outcome = verify()
    assert code == 2 and outcome["status"] == "failed"
    assert "hist has 2 rows, 1 at backup time" in outcome["error"]

    del doctored["row_counts"]  # a manifest from before the counts
    path.write_text(json.dumps(doctored))
    env.resign(path)
    code, outcome = verify()
    assert code == 0 and outcome["checked"] == "table list"
    assert _scratch_left(my_admin, db) == []


def test_rows_written_during_the_dump_still_verify(env, pg_db, pg_admin, monkeypatch):
    """Counts and dump share one snapshot: rows committed after it was taken are in neither.

    The rows are committed at a fixed point (the snapshot exported and the counting
    started, pg_dump not yet begun), not by a thread racing the dump.
    """
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE busy (id bigserial PRIMARY KEY, pad text); "
        "INSERT INTO busy (pad) SELECT repeat('x', 200) FROM generate_series(1, 20000)",
    )
    original = PostgresServer.dump_command
    written: list[int] = []

    @contextlib.contextmanager
    def dump_command_after_a_write(self, database, workdir, snapshot=None):  # noqa: ANN001, ANN202
        assert snapshot, "the dump must run in the exported snapshot"
        pg_admin.execute(database, "INSERT INTO busy (pad) SELECT 'y' FROM generate_series(1, 500)")
        written.append(500)
        with original(self, database, workdir, snapshot) as cmd:
            yield cmd

    monkeypatch.setattr(PostgresServer, "dump_command", dump_command_after_a_write)
    backup_server(server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db])
    assert written == [500]
    assert pg_admin.query(db, "SELECT count(*) FROM busy") == [(20500,)]
    counted = Manifest.from_bytes(_manifest_path(env, env.pg, db).read_bytes()).row_counts
    assert counted["public.busy"] == 20000
    report = verify_backups(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    # verify restored the dump and found the same 20000 rows the counts promise
    assert report.outcomes[0].status == "ok" and report.outcomes[0].rows == 20000


def test_wrong_row_counts_fail_verify_with_event_and_no_scratch_left(env, pg_db, pg_admin):
    good, bad = pg_db(), pg_db()
    for db in (good, bad):
        pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 10) g")
    backup_server(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=[good, bad]
    )
    path = _manifest_path(env, env.pg, bad)
    doctored = json.loads(path.read_text())
    doctored["row_counts"]["public.t"] = 11
    path.write_text(json.dumps(doctored))
    env.resign(path)

    result = env.cli(
        "verify", env.pg, "-d", good, "-d", bad, "--storage", env.storage,
        "--encryption", env.encryption,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "public.t has 10 rows, 11 at backup time" in result.output
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert lines[good].startswith("ok") and "1 tables  10 rows  (row counts)" in lines[good]
    assert lines[bad].startswith("failed")
    assert _scratch_left(pg_admin, good) == [] and _scratch_left(pg_admin, bad) == []

    events = wait_for_events(env.pg, 2, prefix=VERIFY)
    by_db = {e.resource["dbbackup.database"]: e for e in events}
    assert by_db[good].event == "dbbackup.verify.completed"
    failed = by_db[bad]
    assert failed.event == "dbbackup.verify.failed"
    assert_database_event(failed, env.pg, bad)
    assert failed.payload["tables"] == 1 and failed.payload["rows"] == 10
    assert "public.t has 10 rows, 11 at backup time" in failed.payload["error"]
    assert set(failed.payload) == {"backup_id", "tables", "rows", "error"}


def test_a_corrupted_object_fails_verify_before_any_scratch_database(env, my_db, my_admin):
    db = my_db()
    my_admin.execute(db, "CREATE TABLE t (x INT)", "INSERT INTO t VALUES (1)")
    backup_server(server=env.my, storage=env.storage, encryption=env.encryption, databases=[db])
    [obj] = [p for p in env.storage_path.rglob("dump.sql.zst.age") if f"/{db}/" in str(p)]
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x01
    obj.write_bytes(bytes(data))

    with pytest.raises(VerifyRunFailed) as failure:
        verify_backups(
            server=env.my, storage=env.storage, encryption=env.encryption, databases=[db]
        )
    assert failure.value.exit_code == 2
    [outcome] = failure.value.report.outcomes
    assert "corrupted: its sha256 does not match the manifest" in outcome.error
    assert _scratch_left(my_admin, db) == []
    [event] = wait_for_events(env.my, 1, prefix=VERIFY)
    assert event.event == "dbbackup.verify.failed" and "sha256" in event.payload["error"]


@pytest.mark.parametrize("engine", ["pg", "my"])
def test_stale_scratch_databases_are_dropped_and_live_ones_kept(
    engine, env, pg_db, my_db, pg_admin, my_admin, cleanup_pg, cleanup_my
):
    admin, make, cleanup = (
        (pg_admin, pg_db, cleanup_pg) if engine == "pg" else (my_admin, my_db, cleanup_my)
    )
    server = env.pg if engine == "pg" else env.my
    db = make()
    admin.execute(db, "CREATE TABLE t (x INT)")
    backup_server(server=server, storage=env.storage, encryption=env.encryption, databases=[db])
    limit = (POSTGRES if engine == "pg" else MYSQL).name_limit
    killed = scratch_name(db, limit, datetime(2020, 1, 1, tzinfo=UTC))  # a run killed long ago
    live = scratch_name(db, limit)  # another verify run working right now
    for name in (killed, live):
        cleanup.append(name)
        admin.create(name)
    block = PostgresServer if engine == "pg" else MySQLServer
    assert not {killed, live} & set(block.load(server).list_databases())  # never discovered

    report = verify_backups(
        server=server, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    assert report.outcomes[0].status == "ok"
    assert not admin.exists(killed)
    assert admin.exists(live)


def test_a_manifest_from_before_verify_is_checked_by_restoring(env, pg_db, pg_admin):
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT 1 AS x")
    backup_server(server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db])
    path = _manifest_path(env, env.pg, db)
    old = json.loads(path.read_text())
    del old["tables"], old["row_counts"]
    path.write_text(json.dumps(old))
    env.resign(path)
    report = verify_backups(
        server=env.pg, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    [outcome] = report.outcomes
    assert outcome.status == "ok" and outcome.checked == "restore only"
    assert (outcome.tables, outcome.rows) == (1, 1)


def test_without_row_counts_postgres_compares_table_lists(env, pg_db, pg_admin):
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g AS x FROM generate_series(1, 5) g")
    server = f"{env.pg}-nocount"
    PostgresServer(host="127.0.0.1", user="postgres", count_rows=False).save(server)
    backup_server(server=server, storage=env.storage, encryption=env.encryption, databases=[db])
    manifest = Manifest.from_bytes(_manifest_path(env, server, db).read_bytes())
    assert manifest.row_counts is None and manifest.tables == ["public.t"]
    report = verify_backups(
        server=server, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    assert report.outcomes[0].checked == "table list" and report.outcomes[0].rows == 5


def test_verify_of_a_database_without_backup_is_a_usage_error(env):
    result = env.cli(
        "verify", env.pg, "-d", "never_backed_up", "--storage", env.storage,
        "--encryption", env.encryption,
    )  # fmt: skip
    assert result.exit_code == 3
    assert "no complete backup of 'never_backed_up'" in result.stderr


def test_counting_rows_of_a_locked_table_stops_at_the_dump_time_limit(env, pg_db, pg_admin):
    """count(*) waits for locks like pg_dump does, and runs beside it: both are bounded by
    dump_timeout, and whichever reports first names the time limit."""
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE held (x int)")
    server = f"{env.pg}-impatient"
    PostgresServer(host="127.0.0.1", user="postgres", dump_timeout=2).save(server)
    with pg_admin.connect(db) as conn, conn.transaction():
        conn.execute("LOCK TABLE held IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(BackupFailed) as failure:
            backup_server(
                server=server, storage=env.storage, encryption=env.encryption, databases=[db]
            )
    [outcome] = [o for o in failure.value.report.outcomes if o.database == db]
    assert "time limit of 2s" in outcome.error, outcome.error
    assert not [p for p in env.storage_path.rglob("*") if db in str(p)]
