"""End to end against a real `prefect server`: deploy prefect.yaml, a process worker runs it.

One server, work pool, deployment and worker for the whole module; each test backs
up a database of its own, so the tests pass in any order and alone. What is
asserted is what an operator relies on: the runs, task runs, artifacts and
events Prefect shows, the alerts sent, and that the stored backup restores.
This module's Prefect settings never leak: the server and worker get their own
environment, and in-process calls use `temporary_settings` for one test at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect_dbbackup.flows.cli import app
from typer.testing import CliRunner

from tests.helpers import session_signing_key, signing_fields
from tests.prefect_procs import ROOT, prefect_env, start_server
from tests.prefect_procs import free_port as _free_port
from tests.prefect_procs import start as _start
from tests.prefect_procs import stop as _stop
from tests.prefect_procs import wait_for as _wait_for

SERVER = "local-pg"  # the server the shipped deployments/prefect.yaml deploys
PREFIX = f"dbb_e2e_{uuid.uuid4().hex[:6]}_"  # server blocks here see only this module's databases
# one server, pool and worker for the module: its tests stay on one xdist worker
pytestmark = [pytest.mark.xdist_group("deployments_e2e"), pytest.mark.slow]


class Hook(BaseHTTPRequestHandler):
    """Receives what the custom-webhook notification block sends (into its server's list)."""

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@dataclass
class Real:
    """A running `prefect server` with the project deployed and a worker polling its pool."""

    url: str
    env: dict[str, str]
    tmp: Path
    storage_path: Path
    config: Path
    hook_url: str
    received: list[dict]

    @contextlib.contextmanager
    def api(self) -> Iterator[None]:
        """In-process Prefect calls go to this server inside the block, and only there."""
        from prefect.events.worker import EventsWorker
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # the process's events worker is not keyed by API URL: send what it holds to the API
        # it was started for, and let the next event start one for the current settings
        EventsWorker.drain_all(timeout=30)
        with temporary_settings(updates={PREFECT_API_URL: self.url}):
            try:
                yield
            finally:
                EventsWorker.drain_all(timeout=30)

    def run(self, cmd: list[str], cwd: Path = ROOT) -> str:
        done = subprocess.run(cmd, env=self.env, cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def post(self, path: str, body: dict) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def events(self, prefix: str, since: datetime) -> list[dict]:
        body = {
            "filter": {
                "event": {"prefix": [prefix]},
                "occurred": {"since": since.isoformat(), "until": _later()},
            },
            "limit": 50,
        }
        return self.post("/events/filter", body)["events"]


def _later() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory, identity_file: Path, recipient: str):
    """Server on a free loopback port; blocks, pool, `prefect deploy --all`, limits, worker."""
    tmp = tmp_path_factory.mktemp("prefect-e2e")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(
        tmp / "prefect-home",
        url,
        DBBACKUP_HOME=str(ROOT),
        DBBACKUP_WORK_DIR=str(tmp / "work"),
    )
    procs = []
    hook = HTTPServer(("127.0.0.1", 0), Hook)
    hook.received = []  # type: ignore[attr-defined]
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        procs.append(start_server(env, tmp / "server.log"))  # migrations: slow when loaded
        storage_path = tmp / "backups"
        (tmp / "signing.key").write_text(session_signing_key())
        config = tmp / "dbbackup.yaml"
        config.write_text(
            f"servers:\n  {SERVER}: {{type: postgres, user: postgres, include: ['{PREFIX}*']}}\n"
            f"  served-pg: {{type: postgres, user: postgres, include: ['{PREFIX}*']}}\n"
            f"storage:\n  default: {{type: local, path: {storage_path}, "
            f"manifest_signing_key_file: {tmp / 'signing.key'}}}\n"
            f"encryption:\n  default: {{identity_file: {identity_file}}}\n"
            "limits:\n  dumps_per_host: 1\n"
        )
        hook_url = f"http://127.0.0.1:{hook.server_port}/"
        r = Real(url, env, tmp, storage_path, config, hook_url, hook.received)
        with r.api():
            for command in (["apply", str(config)], ["limits", "apply", "--config", str(config)]):
                done = CliRunner().invoke(app, command, catch_exceptions=False)
                assert done.exit_code == 0, done.output
            _create_pool("dbbackup")
        r.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            ROOT / "deployments",
        )
        procs.append(
            _start(
                [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dbbackup"],
                env,
                tmp / "worker.log",
            )
        )
        yield r
    finally:
        for proc in reversed(procs):
            _stop(proc)
        hook.shutdown()


def _create_pool(name: str) -> None:
    """What `prefect work-pool create NAME --type process` does."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(name=name, type="process", base_job_template=template)
        )


def _trigger(real: Real, deployment: str, **parameters: Any):
    """Run a deployment through the worker and wait for the run to end; the finished run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    with real.api():
        run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False)

        def final():
            with get_client(sync_client=True) as client:
                current = client.read_flow_run(run.id)
            return current if current.state and current.state.is_final() else None

        return _wait_for(f"the run of {deployment} to end (see worker.log)", final)


def _run_details(real: Real, flow_run_id: uuid.UUID):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, FlowRunFilter

    with real.api(), get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run_id]}))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]})
        )
    return task_runs, artifacts


def _events_of(real: Real, prefix: str, database: str, since: datetime, count: int = 1):
    def mine():
        found = [
            e
            for e in real.events(prefix, since)
            if e["resource"].get("dbbackup.database") == database
        ]
        return found if len(found) >= count else None

    return _wait_for(f"{prefix} events of {database}", mine, 30)


@dataclass
class Backup:
    database: str
    fingerprints: dict
    run: Any
    started: datetime


@pytest.fixture
def database() -> Iterator[str]:
    """A new database with data, for this test alone (the deployed blocks see PREFIX*)."""
    from tests.helpers import PgAdmin

    admin = PgAdmin()
    name = f"{PREFIX}{uuid.uuid4().hex[:6]}"
    admin.create(name)
    try:
        admin.execute(
            name,
            "CREATE TABLE items (id int PRIMARY KEY, name text);"
            "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 500) g;"
            "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('a'), ('b');",
        )
        yield name
    finally:
        admin.drop(name)


@pytest.fixture
def backup(real: Real, database: str) -> Backup:
    """One run of the deployed backup-server/local-pg for this test's own database."""
    from tests.helpers import PgAdmin

    started = datetime.now(UTC)
    run = _trigger(real, f"backup-server/{SERVER}", databases=[database])
    return Backup(database, PgAdmin().table_fingerprints(database), run, started)


def test_the_deployed_backup_runs_on_the_worker_and_shows_in_prefect(
    real: Real, backup: Backup, cleanup_pg: list[str], pg_admin
) -> None:
    db, run = backup.database, backup.run
    assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
    assert run.name.startswith(f"backup-{SERVER}-")  # found by id: its time part may change
    assert run.work_pool_name == "dbbackup"
    assert run.parameters["databases"] == [db] and run.parameters["encryption"] == "default"

    task_runs, artifacts = _run_details(real, run.id)
    names = {t.name for t in task_runs}
    assert f"backup-{db}" in names, names  # (+ the server's globals, if any)
    assert all(t.state.is_completed() for t in task_runs)
    by_type = {a.type: a for a in artifacts}
    table = by_type["table"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    [row] = [r for r in rows if r["database"] == db]
    assert table.key == f"backup-{SERVER}"
    assert row["status"] == "ok" and row["raw MB"] > 0
    assert db in by_type["markdown"].data

    # the event an automation matches on, with the fixed schema
    [event] = _events_of(real, "dbbackup.backup.", db, backup.started)
    assert event["event"] == "dbbackup.backup.completed"
    assert event["resource"]["prefect.resource.id"] == f"dbbackup.database.{SERVER}.{db}"
    assert event["resource"]["dbbackup.server"] == SERVER
    assert {
        "prefect.resource.id": f"dbbackup.server.{SERVER}",
        "prefect.resource.role": "server",
        "prefect.resource.name": SERVER,
    } in event["related"]
    assert event["payload"]["backup_id"] == row["backup id"]
    assert event["payload"]["raw_bytes"] > event["payload"]["stored_bytes"] > 0

    # the dump held a slot of the per-host limit `dbbackup limits apply` created
    acquired = [
        e
        for e in real.events("prefect.concurrency-limit.acquired", backup.started)
        if e["resource"]["prefect.resource.name"] == "dbbackup-host-127.0.0.1"
    ]
    assert acquired and acquired[0]["resource"]["limit"] == "1"

    # the backup in storage restores to the same table contents
    from prefect_dbbackup.flows.restore import restore_database

    target = f"{db}_restored"
    cleanup_pg.append(target)
    with real.api():
        restore_database(server=SERVER, database=db, target_database=target)
    assert pg_admin.table_fingerprints(target) == backup.fingerprints
    assert backup.fingerprints["public.items"][0] == 500


@dataclass
class Applied:
    first: Any
    again: Any
    block_id: uuid.UUID


@pytest.fixture(scope="module")
def applied(real: Real) -> Applied:
    """`dbbackup automations apply` twice, notifying through a webhook block to Hook."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    with real.api():
        block_id = CustomWebhookNotificationBlock(
            name="e2e", url=real.hook_url, json_data={"subject": "{{subject}}", "body": "{{body}}"}
        ).save("e2e-hook", overwrite=True)
        args = ["automations", "apply", "--config", str(real.config)]
        args += ["--notify", "custom-webhook/e2e-hook"]
        first = CliRunner().invoke(app, args, catch_exceptions=False)
        again = CliRunner().invoke(app, args, catch_exceptions=False)
    return Applied(first, again, block_id)


def test_automations_are_applied_from_the_shipped_files_idempotently(
    real: Real, applied: Applied
) -> None:
    from prefect.client.orchestration import get_client

    with real.api(), get_client(sync_client=True) as client:
        failed = client.read_automations_by_name("dbbackup backup failed")
        missing = client.read_automations_by_name(f"dbbackup no backup of {SERVER} in 26h")
        verify = client.read_automations_by_name("dbbackup verification failed")
    assert applied.first.exit_code == 0, applied.first.output
    assert sorted(applied.first.stdout.splitlines()) == [
        "created   dbbackup backup failed",
        f"created   dbbackup no backup of {SERVER} in 26h",
        "created   dbbackup no backup of served-pg in 26h",
        "created   dbbackup verification failed",
    ]
    assert applied.again.exit_code == 0, applied.again.output
    assert applied.again.stdout.count("unchanged") == 4, applied.again.output
    assert len(failed) == len(missing) == len(verify) == 1  # updated in place, not duplicated
    trigger = missing[0].trigger
    assert trigger.posture == "Proactive" and trigger.expect == {"dbbackup.backup.completed"}
    assert trigger.match.model_dump() == {"dbbackup.server": SERVER}
    assert trigger.within == timedelta(hours=26)
    assert failed[0].trigger.posture == "Reactive"
    assert failed[0].trigger.expect == {"dbbackup.backup.failed"}
    assert verify[0].trigger.expect == {"dbbackup.verify.failed"}
    for automation in (failed, missing, verify):
        [action] = automation[0].actions
        assert action.type == "send-notification" and action.block_document_id == applied.block_id


def test_the_verify_deployment_passes_then_fails_on_a_corrupted_backup(
    real: Real, backup: Backup, applied: Applied
) -> None:
    db = backup.database
    since = datetime.now(UTC)
    ok = _trigger(real, f"verify-backups/{SERVER}", databases=[db])
    assert ok.state.is_completed(), f"{ok.state.name}: {ok.state.message}"
    [passed] = _events_of(real, "dbbackup.verify.", db, since)
    assert passed["event"] == "dbbackup.verify.completed"
    assert passed["payload"]["tables"] == 2 and passed["payload"]["rows"] == 502

    [stored] = list((real.storage_path / SERVER / db).rglob("dump.pgc.zst.age"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    since = datetime.now(UTC)
    bad = _trigger(real, f"verify-backups/{SERVER}", databases=[db])
    assert bad.state.is_failed()
    [failed] = _events_of(real, "dbbackup.verify.", db, since)
    assert failed["event"] == "dbbackup.verify.failed"
    assert "sha256" in failed["payload"]["error"]

    # the verification-failed automation (applied above) sent its notification
    def notified():
        return [m for m in real.received if db in m.get("subject", "")]

    [message] = _wait_for("the verify-failed notification", notified, 30)
    assert message["subject"] == f"dbbackup: verification of {SERVER}/{db} failed"
    assert "sha256" in message["body"]


def test_the_fleet_runs_each_server_deployment_and_names_the_ones_that_failed(
    real: Real, backup: Backup
) -> None:
    from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
    from prefect_dbbackup.flows.fleet import FleetFailed, backup_deployment_servers, backup_fleet
    from prefect_dbbackup.tasks.catalog import list_backups

    with real.api(), pytest.raises(FleetFailed) as failed:
        asyncio.run(backup_fleet(servers=[SERVER, "no-such-server"], max_parallel=2))
    runs = {r.server: r for r in failed.value.report}
    assert runs[SERVER].state == "Completed", runs[SERVER]
    assert runs[SERVER].flow_run.startswith(f"backup-{SERVER}-")
    assert runs["no-such-server"].state == "NotStarted"
    assert "1 of 2 server backups did not complete: no-such-server" in str(failed.value)
    storage = LocalBackupStorage(path=str(real.storage_path), **signing_fields())
    assert len(list_backups(storage, SERVER, backup.database)) == 2  # the fixture's and this one
    with real.api():  # what the fleet runs by default: every backup-server deployment, paged
        servers = asyncio.run(backup_deployment_servers(page=1))
    # the shipped deployments (and served-pg's, when the serve test ran first), each once
    assert {"local-my", "local-pg"} <= set(servers) <= {"local-my", "local-pg", "served-pg"}
    assert servers == sorted(set(servers))


def test_serve_runs_the_schedules_of_the_config_without_a_work_pool(
    real: Real, database: str, cleanup_pg: list[str], pg_admin
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
    from prefect_dbbackup.tasks.catalog import list_backups

    config = real.tmp / "serve.yaml"
    config.write_text(
        "servers:\n  served-pg: {type: postgres, user: postgres}\n"
        "schedules:\n  timezone: Europe/Berlin\n  backup: '15 1 * * *'\n  verify: null\n"
        "  retries: 1\n  retry_delay_seconds: 5\n"
    )
    serving = _start(
        [sys.executable, "deployments/serve.py", str(config)], real.env, real.tmp / "serve.log"
    )
    try:

        def served(name: str):
            def check():
                with (
                    real.api(),
                    get_client(sync_client=True) as client,
                    contextlib.suppress(ObjectNotFound),
                ):
                    return client.read_deployment_by_name(name)

            return _wait_for(f"{name} to be served (see serve.log)", check, 60)

        backup_dep = served("backup-server/served-pg")
        verify_dep = served("verify-backups/served-pg")
        prune_dep = served("prune-backups/served-pg")
        [schedule] = backup_dep.schedules
        assert (schedule.schedule.cron, schedule.schedule.timezone) == (
            "15 1 * * *",
            "Europe/Berlin",
        )
        assert verify_dep.schedules == []
        assert [s.schedule.cron for s in prune_dep.schedules] == ["30 5 * * *"]
        assert backup_dep.work_pool_name is None
        assert backup_dep.global_concurrency_limit.limit == 1
        assert backup_dep.concurrency_options.collision_strategy == "CANCEL_NEW"
        assert backup_dep.parameters == {
            "server": "served-pg",
            "storage": "default",
            "encryption": "default",
        }

        run = _trigger(real, "backup-server/served-pg", databases=[database])
        assert run.state.is_completed(), f"{run.state.name}: {run.state.message}"
        assert run.work_pool_name is None
        assert (run.empirical_policy.retries, run.empirical_policy.retry_delay) == (1, 5)
        storage = LocalBackupStorage(path=str(real.storage_path), **signing_fields())
        [manifest] = list_backups(storage, "served-pg", database)
        assert manifest.stats.raw_bytes > 0

        # what the served run stored restores to the same table contents
        from prefect_dbbackup.flows.restore import restore_database

        target = f"{database}_served"
        cleanup_pg.append(target)
        with real.api():
            restore_database(server="served-pg", database=database, target_database=target)
        assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(database)
        assert pg_admin.table_fingerprints(target)["public.items"][0] == 500
    finally:
        _stop(serving)


def _pg_dump_pids(database: str) -> list[int]:
    """PIDs of the pg_dump processes dumping this database."""
    pids = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if argv[0].endswith(b"pg_dump") and any(database.encode() in a for a in argv):
                pids.append(int(entry.name))
    return pids


def test_cancelling_a_run_in_the_ui_kills_its_dump_and_stores_nothing(
    real: Real, database: str
) -> None:
    """What the UI's Cancel button does (state Cancelling), while the dump waits on a lock
    that is never released: the worker stops the run, its pg_dump dies, nothing is stored."""
    import psycopg
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    from tests.helpers import PG

    holder = psycopg.connect(**PG, dbname=database)
    try:
        holder.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  # open transaction
        with real.api():
            run = run_deployment(
                f"backup-server/{SERVER}",
                parameters={"databases": [database]},
                timeout=0,
                as_subflow=False,
            )
        [dump] = _wait_for("pg_dump to start (see worker.log)", lambda: _pg_dump_pids(database))
        with real.api(), get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelling(), force=True)

            def final():
                current = client.read_flow_run(run.id)
                return current if current.state and current.state.is_final() else None

            ended = _wait_for("the cancelled run to end (see worker.log)", final)
        assert ended.state.is_cancelled(), f"{ended.state.name}: {ended.state.message}"
        assert not Path(f"/proc/{dump}").exists() and not _pg_dump_pids(database)
        assert not (real.storage_path / SERVER / database).exists()
        assert not any((real.tmp / "work").glob("dbbackup-*")), "a work dir was left"
    finally:
        holder.close()
        for pid in _pg_dump_pids(database):
            os.kill(pid, signal.SIGKILL)
