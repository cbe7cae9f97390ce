"""Retention applied to stored backups: the same tests on local storage and on real S3."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.blocks.retention import BackupRef, RetentionPolicy, plan
from prefect_dbbackup.tasks.layout import backup_key, new_backup_id
from prefect_dbbackup.tasks.prune import backup_time

from tests.helpers import plant_manifest


def _server_with(policy: dict) -> str:
    name = f"pg-ret-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", user="postgres", retention=policy).save(name)
    return name


def _plant(storage, server: str, database: str, when: datetime, complete: bool = True) -> str:
    """A stored backup at a chosen time (prune reads keys and ids only, never the data)."""
    backup_id = new_backup_id(when)
    storage.put_bytes(backup_key(server, database, backup_id, "dump.pgc.zst.age"), b"x")
    if complete:
        plant_manifest(storage, server, database, backup_id)
    return backup_id


def _ids(storage, server: str, database: str) -> set[str]:
    return {k.split("/")[2] for k in storage.list_keys(f"{server}/{database}/")}


def test_dry_run_shows_every_decision_then_prune_removes_exactly_those(any_env):
    env = any_env
    policy = {"keep_daily": 7, "keep_weekly": 3, "timezone": "Europe/Berlin"}
    server = _server_with(policy)
    storage = load_storage(env.storage)
    now = datetime.now(UTC)
    daily = [_plant(storage, server, "shop", now - timedelta(days=d, hours=1)) for d in range(30)]
    old_garbage = _plant(storage, server, "shop", now - timedelta(days=3), complete=False)
    fresh_garbage = _plant(storage, server, "shop", now - timedelta(minutes=5), complete=False)
    other = [_plant(storage, server, "other", now - timedelta(days=d)) for d in range(10)]
    before = _ids(storage, server, "shop")

    result = env.cli("prune", server, "--database", "shop", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    shown = {d["backup_id"]: d for d in json.loads(result.stdout)}
    assert set(shown) == before
    assert _ids(storage, server, "shop") == before  # a dry run deletes nothing

    refs = [BackupRef(b, backup_time(b)) for b in daily]
    expected = {d.backup_id for d in plan(refs, RetentionPolicy(**policy), now) if d.keep}
    assert set(daily[:7]) < expected  # 7 days, plus the newest of older ISO weeks
    assert {b for b, d in shown.items() if d["keep"]} == expected | {fresh_garbage}
    assert shown[daily[0]]["reasons"][0] == "newest"
    weekly_only = expected - set(daily[:7])
    # the ISO week each planted backup falls in, in the policy's zone (never today's year)
    zone = ZoneInfo(policy["timezone"])
    for b in weekly_only:
        year, week, _ = backup_time(b).astimezone(zone).isocalendar()
        assert shown[b]["reasons"][0] == f"weekly {year}-W{week:02d}", shown[b]
    assert shown[old_garbage]["reasons"] == ["incomplete, older than 24h"]
    assert {d["outcome"] for b, d in shown.items() if not d["keep"]} == {"would remove"}

    text = env.cli("prune", server, "--database", "shop", "--dry-run")
    assert text.exit_code == 0
    assert "keep   shop" in text.stdout and "remove shop" in text.stdout

    result = env.cli("prune", server, "--database", "shop", "--json")
    assert result.exit_code == 0, result.output
    assert _ids(storage, server, "shop") == expected | {fresh_garbage}
    assert _ids(storage, server, "other") == set(other)  # outside the series: untouched

    again = env.cli("prune", server, "--database", "shop", "--json")
    assert [d["outcome"] for d in json.loads(again.stdout) if not d["keep"]] == []
    assert _ids(storage, server, "shop") == expected | {fresh_garbage}


def test_no_policy_removes_nothing(any_env):
    env = any_env
    server = _server_with({})
    storage = load_storage(env.storage)
    now = datetime.now(UTC)
    planted = {_plant(storage, server, "db", now - timedelta(days=d)) for d in range(5)}
    planted.add(_plant(storage, server, "db", now - timedelta(days=9), complete=False))
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
