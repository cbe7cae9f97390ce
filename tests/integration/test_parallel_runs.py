"""Two backup runs of the same server at once: each stores complete backups of its own."""

from __future__ import annotations

import json
import threading
import time

from prefect_dbbackup.flows.backup import backup_server


def test_two_backups_of_one_server_at_once_each_restore_to_the_source(
    env, pg_db, pg_admin, cleanup_pg
):
    dbs = [pg_db(), pg_db()]
    for n, db in enumerate(dbs):
        pg_admin.execute(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            f"INSERT INTO t SELECT g, md5((g * {n + 7})::text) FROM generate_series(1, 4000) g;",
        )
    states: list = []

    def run() -> None:
        states.append(
            backup_server(
                server=env.pg,
                storage=env.storage,
                encryption=env.encryption,
                databases=dbs,
                return_state=True,
            )
        )

    runs = [threading.Thread(target=run) for _ in range(2)]
    waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name LIKE 'dbbackup-dump-%%'"
    with pg_admin.connect(dbs[0]) as locker, locker.transaction():
        # both runs' dumps of the first database wait here: the runs are certainly in flight
        # at the same time, not one after the other
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        for thread in runs:
            thread.start()
        deadline = time.monotonic() + 120
        while pg_admin.query("postgres", waiting, (dbs[0],)) != [(2,)]:
            assert time.monotonic() < deadline, "the two runs never dumped at the same time"
            time.sleep(0.2)
    for thread in runs:
        thread.join(timeout=180)
    assert len(states) == 2 and all(s.is_completed() for s in states), states
    reports = [s.result() for s in states]
    ids = [{o.database: o.backup_id for o in r.outcomes} for r in reports]
    assert ids[0][dbs[0]] != ids[1][dbs[0]]  # two backups, not one overwritten
    for report in reports:
        assert [o.status for o in report.outcomes] == ["ok", "ok", "ok"]  # + _globals

    listed = env.cli("list", env.pg, "--json")
    assert listed.exit_code == 0, listed.output
    stored = [(b["database"], b["backup_id"]) for b in json.loads(listed.stdout)]
    assert sorted(b for b in stored if b[0] in dbs) == sorted(
        (db, run_ids[db]) for run_ids in ids for db in dbs
    )
    source = {db: pg_admin.table_fingerprints(db) for db in dbs}
    for run_ids in ids:
        for db in dbs:
            target = f"{db}_{run_ids[db][-4:]}"
            cleanup_pg.append(target)
            result = env.cli("restore", env.pg, db, "--backup-id", run_ids[db], "--into", target)
            assert result.exit_code == 0, result.output
            assert pg_admin.table_fingerprints(target) == source[db]
