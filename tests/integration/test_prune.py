"""Retention applied to stored backups: the same tests on local storage and on real S3."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage

from tests.dates import check_decisions, daily_policy, plant, plant_daily_series


def _server_with(policy: dict) -> str:
    name = f"pg-ret-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", user="postgres", retention=policy).save(name)
    return name


def _ids(storage, server: str, database: str) -> set[str]:
    return {k.split("/")[2] for k in storage.list_keys(f"{server}/{database}/")}


def test_dry_run_shows_every_decision_then_prune_removes_exactly_those(any_env):
    """The scenario tests/unit/test_dates.py also runs at DST changes and other dates."""
    env = any_env
    storage = load_storage(env.storage)
    server = _server_with(daily_policy())
    series = plant_daily_series(storage, server, datetime.now(UTC))
    before = _ids(storage, server, "shop")
    assert before == series.shop

    result = env.cli("prune", server, "--database", "shop", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shown = {d["backup_id"]: d for d in json.loads(result.stdout)}
    assert _ids(storage, server, "shop") == before  # a dry run deletes nothing
    check_decisions(shown, series)
    assert {d["outcome"] for d in shown.values() if not d["keep"]} == {"would remove"}

    text = env.cli("prune", server, "--database", "shop", "--dry-run")
    assert text.exit_code == 0
    assert "keep   shop" in text.stdout and "remove shop" in text.stdout

    result = env.cli("prune", server, "--database", "shop", "--json")
    assert result.exit_code == 0, result.output
    assert _ids(storage, server, "shop") == series.kept()
    assert _ids(storage, server, "other") == set(series.other)  # outside the series: untouched

    again = env.cli("prune", server, "--database", "shop", "--json")
    assert [d["outcome"] for d in json.loads(again.stdout) if not d["keep"]] == []
    assert _ids(storage, server, "shop") == series.kept()


def test_no_policy_removes_nothing(any_env):
    env = any_env
    server = _server_with({})
    storage = load_storage(env.storage)
    now = datetime.now(UTC)
    planted = {plant(storage, server, "db", now - timedelta(days=d)) for d in range(5)}
    planted.add(plant(storage, server, "db", now - timedelta(days=9), complete=False))
    result = env.cli("prune", server, "--json")
    assert result.exit_code == 0, result.output
    assert all(d["keep"] and d["reasons"] == ["no policy"] for d in json.loads(result.stdout))
    assert _ids(storage, server, "db") == planted


def test_backup_prunes_its_series_after_success_only(any_env, pg_db, pg_admin, cleanup_pg):
    """keep_last=1: after a second successful run only its backup is left, and it restores."""
    env = any_env
    server = _server_with({"keep_last": 1})
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    pg_admin.execute(db, "INSERT INTO t SELECT g FROM generate_series(101, 150) g")
    assert env.cli("backup", server, "-d", db).exit_code == 0
    listed = json.loads(env.cli("list", server, "-d", db, "--json").stdout)
    assert len(listed) == 1

    target = db + "_pruned"
    cleanup_pg.append(target)
    assert env.cli("restore", server, db, "--into", target).exit_code == 0
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)

    # a run in which one database fails prunes nothing, not even the good one's series
    other = pg_db()
    pg_admin.execute(other, "CREATE TABLE t (id int)")
    PostgresServer(
        host="127.0.0.1", user="postgres", retention={"keep_last": 1}, dump_timeout=3
    ).save(server, overwrite=True)
    with pg_admin.connect(other) as locker:
        locker.autocommit = False
        locker.execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")  # pg_dump waits, then is killed
        result = env.cli("backup", server, "-d", db, "-d", other)
    assert result.exit_code == 1, result.output
    assert len(json.loads(env.cli("list", server, "-d", db, "--json").stdout)) == 2
