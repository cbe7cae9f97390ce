"""Per-host global concurrency limits: created from the config, honoured by the dump task.

The server block here uses host `localhost` (the other tests use 127.0.0.1), so
the limit this module creates throttles only its own dumps.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName
from prefect.concurrency.sync import concurrency
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.postgres import DUMP_APPLICATION
from prefect_dbbackup.flows.backup import backup_server

from tests.helpers import stored_objects

LIMIT = "dbbackup-host-localhost"


@pytest.fixture
def localhost_limit(prefect_api: None):
    yield LIMIT
    with get_client(sync_client=True) as client:
        client.delete_global_concurrency_limit_by_name(LIMIT)


def _limit(name: str):
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def test_limits_apply_creates_then_updates_each_host_limit(env, tmp_path: Path, localhost_limit):
    config = tmp_path / "dbbackup.yaml"
    config.write_text(
        "servers:\n  a: {type: postgres, host: localhost, user: postgres}\n"
        "limits: {dumps_per_host: 2}\n"
    )
    first = env.cli("limits", "apply", "--config", str(config))
    again = env.cli("limits", "apply", "--config", str(config))
    config.write_text(config.read_text().replace("dumps_per_host: 2", "hosts: {localhost: 3}"))
    changed = env.cli("limits", "apply", "--config", str(config))
    assert (first.exit_code, first.stdout) == (0, f"created   {LIMIT} = 2\n")
    assert (again.exit_code, again.stdout) == (0, f"unchanged {LIMIT} = 2\n")
    assert (changed.exit_code, changed.stdout) == (0, f"updated   {LIMIT} = 3\n")
    assert _limit(LIMIT).limit == 3


def test_limits_apply_without_a_limits_section_is_a_config_error(env, tmp_path: Path):
    config = tmp_path / "dbbackup.yaml"
    config.write_text("servers:\n  a: {type: postgres, host: localhost, user: postgres}\n")
    result = env.cli("limits", "apply", "--config", str(config))
    assert result.exit_code == 3 and "no `limits` section" in result.stderr


def _poll(what: str, check, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def _slot_events(since: datetime) -> list[str]:
    """The acquired/released events of LIMIT since `since`, in the order they happened."""
    with get_client(sync_client=True) as client:
        page = client.read_events(
            EventFilter(
                occurred=EventOccurredFilter(
                    since=since, until=datetime.now(UTC) + timedelta(hours=1)
                ),
                event=EventNameFilter(prefix=["prefect.concurrency-limit."]),
            ),
            limit=50,
        )
    mine = sorted((e.occurred, e.event) for e in page.events if e.resource.name == LIMIT)
    phases = [name.rsplit(".", 1)[1] for _, name in mine]
    return [p for p in phases if p in ("acquired", "released")]


def test_a_dump_waits_for_a_free_slot_of_its_host(env, pg_db, pg_admin, localhost_limit):
    since = datetime.now(UTC)  # events are stamped by this process: the same clock
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LIMIT, 1)
    server = f"lh-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="localhost", port=5432, user="postgres").save(server)
    db = pg_db()
    pg_admin.execute(db, "CREATE TABLE t AS SELECT 1 AS x")
    outcome: list[object] = []

    def dumps_of(database: str) -> list[Path]:
        return [p for p in stored_objects(env.storage_path) if p.parent.parent.name == database]

    def run() -> None:
        outcome.append(
            backup_server(
                server=server, storage=env.storage, encryption=env.encryption, databases=[db]
            )
        )

    def dump_running() -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[f"backup-{db}"]))
            )
        return bool(runs) and runs[0].state is not None and runs[0].state.is_running()

    def sessions(application: str) -> int:
        """Sessions on db whose application_name is LIKE `application` (\\ escapes)."""
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
            "AND application_name LIKE %s ESCAPE '\\' AND pid <> pg_backend_pid()"
        )
        return pg_admin.query("postgres", query, (db, application))[0][0]

    # pg_dump runs as `dbbackup-dump-<random>` (DUMP_APPLICATION); `_` is a LIKE wildcard
    dump_session = (
        DUMP_APPLICATION.replace("\\", "\\\\").replace("_", "\\_").replace("%", "\\%") + "%"
    )

    with concurrency(LIMIT, occupy=1):  # another dump of that host holds the only slot
        backup = threading.Thread(target=run)
        backup.start()
        _poll("the dump task to start", dump_running)
        # the task's own connection to db (it reads the database's options, then waits
        # for the slot): from here a dump that did not wait starts within milliseconds
        _poll("the dump task's connection to the database", lambda: sessions("%") > 0)
        seen: list[int] = []
        watch_until = time.monotonic() + 3
        while time.monotonic() < watch_until:  # a fixed window: what must NOT happen
            seen.append(sessions(dump_session))
            if seen[-1] or dumps_of(db):
                break
            time.sleep(0.1)
        assert backup.is_alive() and dump_running()
        assert max(seen) == 0, f"pg_dump connected while the host's only slot was taken: {seen}"
        assert not dumps_of(db)
    backup.join(timeout=120)
    assert not backup.is_alive()
    assert outcome and outcome[0].outcomes[0].status == "ok"
    assert len(dumps_of(db)) == 1
    # the slot went from this test to the dump, never to both at once
    events = _poll("both holders' events", lambda: (e := _slot_events(since)) and len(e) >= 3 and e)
    assert events[:3] == ["acquired", "released", "acquired"], events
