"""Future-dated backups (a worker a year fast, planted manifests) cannot make runs prune
themselves, take retention slots, or become `latest`."""

from __future__ import annotations

import json
import sys
import uuid
from datetime import UTC, datetime, timedelta

from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.flows import backup as backup_flow
from prefect_dbbackup.tasks.layout import new_backup_id

from tests.integration.test_events import wait_for_events


def _ids(storage, server: str, db: str) -> set[str]:
    return {k.split("/")[2] for k in storage.list_keys(f"{server}/{db}/")}


def _plant_copy(storage, server: str, db: str, backup_id: str, when: datetime) -> str:
    """Copy a real backup (manifest and object) under a future-dated id, as an attacker could."""
    planted = new_backup_id(when)
    for key in storage.list_keys(f"{server}/{db}/{backup_id}/"):
        storage.put_bytes(key.replace(backup_id, planted), storage.get_bytes(key))
    return planted


def test_a_year_fast_clock_and_planted_future_backups_push_out_nothing(
    any_env, pg_db, pg_admin, cleanup_pg, monkeypatch, caplog
):
    env = any_env
    server = f"pg-skew-{uuid.uuid4().hex[:6]}"
    PostgresServer(
        host="127.0.0.1", user="postgres", retention={"keep_last": 2}, backup_users=False
    ).save(server)
    storage = load_storage(env.storage)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t (run int)")

    # one run on a worker whose clock is a year fast
    year_ahead = datetime.now(UTC) + timedelta(days=365)
    with monkeypatch.context() as patch:
        patch.setattr(backup_flow, "new_backup_id", lambda: new_backup_id(year_ahead))
        skewed = env.cli("backup", server, "-d", db)
    assert skewed.exit_code == 0, skewed.output
    [fast] = _ids(storage, server, db)
    assert fast.startswith(f"{year_ahead:%Y%m%d}")  # kept: this run wrote it
    planted = _plant_copy(storage, server, db, fast, year_ahead + timedelta(days=30))

    normal = []
    for run in range(1, 4):  # three normal runs, keep_last: 2
        pg_admin.execute(db, f"INSERT INTO t VALUES ({run})")
        result = env.cli("backup", server, "-d", db)
        assert result.exit_code == 0, result.output
        normal.append(max(_ids(storage, server, db) - {fast, planted}))
    assert f"backup {fast} of {db!r} is dated" in caplog.text  # the runs' logs say so
    assert "ahead of this worker's clock" in caplog.text
    assert _ids(storage, server, db) == {fast, planted, normal[-1], normal[-2]}

    decisions = json.loads(env.cli("prune", server, "--dry-run", "--json").stdout)
    shown = {d["backup_id"]: d for d in decisions}
    assert shown[fast]["future_dated"] and shown[fast]["keep"]
    assert "future-dated" in shown[fast]["reasons"]
    # the planted copy's signed manifest names the id it was copied from: refused, kept
    assert shown[planted]["keep"] and not shown[planted]["complete"]
    assert shown[planted]["reasons"][0].startswith("invalid manifest")
    newest = next(d for d in decisions if d["backup_id"] == normal[-1])
    assert newest["reasons"][:2] == ["newest", "last"]
    # every prune (each run's, the dry run's) emits one event per future-dated backup
    future = {fast, planted}
    events = wait_for_events(
        server,
        2,
        prefix="dbbackup.backup.future-dated",
        until=lambda got: {e.payload["backup_id"] for e in got} >= future,
    )
    assert {e.payload["backup_id"] for e in events} == future
    assert {e.resource["dbbackup.database"] for e in events} == {db}

    # `latest` is the newest real backup, not the one from the fast clock
    target = db + "_latest"
    cleanup_pg.append(target)
    restored = env.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert pg_admin.query(target, "SELECT run FROM t ORDER BY run") == [(1,), (2,), (3,)]


class _YearFast(datetime):
    """The clock of a worker a year fast: what dbbackup's modules see as `datetime`."""

    @classmethod
    def now(cls, tz=None):  # noqa: ANN001, ANN206
        return datetime.now(tz) + timedelta(days=365)


def _year_fast_worker(patch) -> None:  # noqa: ANN001
    for name, module in list(sys.modules.items()):
        if name.startswith("prefect_dbbackup") and getattr(module, "datetime", None) is datetime:
            patch.setattr(module, "datetime", _YearFast)


def test_a_worker_a_year_fast_prunes_nothing_and_the_real_newest_backup_survives(
    any_env, pg_db, pg_admin, cleanup_pg, monkeypatch, caplog
):
    env = any_env
    server = f"pg-fast-{uuid.uuid4().hex[:6]}"
    PostgresServer(
        host="127.0.0.1", user="postgres", retention={"keep_last": 1}, backup_users=False
    ).save(server)
    storage = load_storage(env.storage)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g")
    for _ in range(2):
        assert env.cli("backup", server, "-d", db).exit_code == 0
    [real] = _ids(storage, server, db)  # keep_last 1 pruned the first
    snapshot = pg_admin.table_fingerprints(db)

    pg_admin.execute(db, "DELETE FROM t WHERE g > 10")
    with monkeypatch.context() as patch:
        _year_fast_worker(patch)
        skewed = env.cli("backup", server, "-d", db)  # stored, then its prune refuses
        assert skewed.exit_code == 0, skewed.output
        [fast] = _ids(storage, server, db) - {real}
        assert real in _ids(storage, server, db)  # the real newest backup survives
        pruned = env.cli("prune", server)
    assert "all backups stored, but pruning failed" in caplog.text
    assert pruned.exit_code == 2, pruned.output
    assert "h ahead of the clock of storage" in pruned.stderr
    assert "prune deleted nothing" in pruned.stderr
    assert _ids(storage, server, db) == {real, fast}

    # a worker with the right clock: the fast backup is future-dated, the real one newest
    result = env.cli("prune", server, "--json")
    assert result.exit_code == 0, result.output
    shown = {d["backup_id"]: d for d in json.loads(result.stdout)}
    assert shown[fast]["future_dated"] and shown[fast]["keep"]
    assert shown[real]["reasons"] == ["newest", "last"] and shown[real]["outcome"] == "kept"

    target = db + "_latest"
    cleanup_pg.append(target)
    restored = env.cli("restore", server, db, "--into", target)
    assert restored.exit_code == 0, restored.output
    assert f"backup {real}" in restored.stdout
    assert pg_admin.table_fingerprints(target) == snapshot
