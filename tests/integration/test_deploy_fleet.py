"""`dbbackup deploy`, and the fleet setup on Prefect itself (#26 items 2 and 3).

One `prefect server` on PostgreSQL (a database of its own on the machine's server,
dropped at the end), the config's deployments written by `dbbackup deploy` into the
pool it creates, and two process workers (`--limit 1` each) polling that pool. What is
asserted is what an operator relies on: the runs Completed on the workers, the stored
backup restores equal, a second deploy writes nothing (the deployments' `updated`
read back), and one database host never serves two dumps at once across workers
(pg_stat_activity polled all along).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from prefect_dbbackup.blocks.postgres import DUMP_APPLICATION

from tests.helpers import PG, PgAdmin, session_signing_key
from tests.prefect_procs import free_port, prefect_env, start, start_server, stop, wait_for

MAIN = "from prefect_dbbackup.flows.cli import main; main()"
PREFIX = f"dbb_fleet_{uuid.uuid4().hex[:6]}_"  # the server blocks here see only these databases
SERVERS = ("fleet-a", "fleet-b")  # both on 127.0.0.1: one host, one limit
WORKERS = ("worker-a", "worker-b")
_FLOWS = ("backup-server", "verify-backups", "prune-backups", "check-backups")
pytestmark = [pytest.mark.xdist_group("deploy_fleet"), pytest.mark.slow]


@dataclass
class Fleet:
    """A PostgreSQL-backed Prefect server, the config deployed, two workers on its pool."""

    url: str
    env: dict[str, str]
    tmp: Path
    config: Path
    deployed: subprocess.CompletedProcess

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """`dbbackup ARGS` in its own process against this server."""
        return subprocess.run(
            [sys.executable, "-c", MAIN, *args],
            env=self.env,
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", timeout=30)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict) -> Any:
        response = httpx.post(f"{self.url}{path}", json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def deployment(self, name: str) -> dict:
        return self.get(f"/deployments/name/{name}")

    def run(self, deployment: str, **parameters: Any) -> str:
        """Start a run of the deployment (the workers pick it up); its flow run id."""
        dep = self.deployment(deployment)
        return self.post(f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})[
            "id"
        ]

    def flow_run(self, run_id: str) -> dict:
        return self.get(f"/flow_runs/{run_id}")

    def wait_final(self, run_id: str) -> dict:
        def final() -> dict | None:
            run = self.flow_run(run_id)
            state = run["state"]["type"]
            return run if state in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        return wait_for(f"flow run {run_id} to end (see worker-*.log)", final)


def _config(tmp: Path, identity_file: Path) -> Path:
    (tmp / "signing.key").write_text(session_signing_key())
    servers = "".join(
        f"  {name}: {{type: postgres, host: 127.0.0.1, user: postgres, include: ['{PREFIX}*']}}\n"
        for name in SERVERS
    )
    config = tmp / "dbbackup.yaml"
    config.write_text(
        f"servers:\n{servers}"
        f"storage:\n  default: {{type: local, path: {tmp / 'backups'}, "
        f"manifest_signing_key_file: {tmp / 'signing.key'}}}\n"
        f"encryption:\n  default: {{identity_file: {identity_file}}}\n"
        "limits:\n  hosts: {127.0.0.1: 1}\n"
    )
    return config


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, identity_file: Path) -> Iterator[Fleet]:
    """Server on its own PostgreSQL database; blocks, limits, `dbbackup deploy`, two workers."""
    tmp = tmp_path_factory.mktemp("deploy-fleet")
    admin = PgAdmin()
    prefect_db = f"dbb_prefect_{uuid.uuid4().hex[:8]}"
    admin.create(prefect_db)
    url = f"http://127.0.0.1:{free_port()}/api"
    env = prefect_env(
        tmp / "prefect-home",
        url,
        PREFECT_API_DATABASE_CONNECTION_URL=(
            f"postgresql+asyncpg://postgres@127.0.0.1:5432/{prefect_db}"
        ),
        DBBACKUP_WORK_DIR=str(tmp / "work"),
    )
    procs = []
    try:
        procs.append(start_server(env, tmp / "server.log"))
        worker_env = {k: v for k, v in env.items() if k != "PREFECT_API_DATABASE_CONNECTION_URL"}
        fleet = Fleet(url, worker_env, tmp, _config(tmp, identity_file), None)  # type: ignore[arg-type]
        for args in (
            ["apply", str(fleet.config)],
            ["limits", "apply", "--config", str(fleet.config)],
        ):
            done = fleet.cli(*args)
            assert done.returncode == 0, done.stdout + done.stderr
        fleet.deployed = fleet.cli("deploy", str(fleet.config))  # the default pool: dbbackup
        assert fleet.deployed.returncode == 0, fleet.deployed.stdout + fleet.deployed.stderr
        for name in WORKERS:
            argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "dbbackup"]
            argv += ["--name", name, "--limit", "1"]
            procs.append(start(argv, worker_env, tmp / f"{name}.log"))
        yield fleet
    finally:
        for proc in reversed(procs):
            stop(proc)
        admin.drop(prefect_db)


@pytest.fixture
def databases(pg_admin: PgAdmin) -> Iterator[list[str]]:
    """Two databases with data, for this test alone (the deployed blocks see PREFIX*)."""
    names = [f"{PREFIX}{uuid.uuid4().hex[:6]}" for _ in SERVERS]
    try:
        for name in names:
            pg_admin.create(name)
            pg_admin.execute(
                name,
                "CREATE TABLE items (id int PRIMARY KEY, name text);"
                "INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 300) g;",
            )
        yield names
    finally:
        for name in names:
            if pg_admin.exists(name):
                pg_admin.drop(name)


def test_deploy_creates_the_pool_and_a_worker_runs_a_deployed_backup_that_restores(
    fleet: Fleet, databases: list[str], cleanup_pg: list[str], pg_admin: PgAdmin
) -> None:
    lines = fleet.deployed.stdout.splitlines()
    assert lines[0] == "created   work pool dbbackup  (type process)"
    assert lines[-1] == "8 created, 0 updated, 0 unchanged, 0 stale"
    expected = {f"created   {flow}/{s}" for s in SERVERS for flow in _FLOWS}
    assert set(lines[1:-1]) == expected

    pool = fleet.get("/work_pools/dbbackup")
    assert pool["type"] == "process"
    dep = fleet.deployment("backup-server/fleet-a")
    assert dep["work_pool_name"] == "dbbackup"
    assert dep["entrypoint"] == "prefect_dbbackup.flows.backup.backup_server"
    assert not dep["pull_steps"] and dep["path"] is None  # runs from the installed package
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["30 2 * * *"]
    assert dep["tags"] == ["dbbackup", "backup", "server:fleet-a"]
    check = fleet.deployment("check-backups/fleet-b")
    assert [s["schedule"]["cron"] for s in check["schedules"]] == ["0 4 * * 3"]

    db = databases[0]
    run = fleet.wait_final(fleet.run("backup-server/fleet-a", databases=[db]))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["work_pool_name"] == "dbbackup"
    listed = fleet.cli("list", "fleet-a", "--database", db, "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["database"] == db and entry["server"] == "fleet-a"
    target = f"{db}_restored"
    cleanup_pg.append(target)
    restored = fleet.cli("restore", "fleet-a", db, "--into", target)
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert pg_admin.table_fingerprints(target)["public.items"][0] == 300


def _updated(fleet: Fleet, servers: tuple[str, ...]) -> dict[str, str]:
    """The `updated` time of each deployment of these servers, read from the API."""
    found = fleet.post(
        "/deployments/filter",
        {"deployments": {"tags": {"any_": [f"server:{s}" for s in servers]}}, "limit": 200},
    )
    names = {f["id"]: f for f in fleet.post("/flows/filter", {"limit": 200})}
    return {f"{names[d['flow_id']]['name']}/{d['name']}": d["updated"] for d in found}


def test_deploy_again_writes_nothing_then_only_what_changed_and_reports_a_removed_server(
    fleet: Fleet,
) -> None:
    tag = uuid.uuid4().hex[:6]
    a, b = f"re-a-{tag}", f"re-b-{tag}"
    pool = f"re-{tag}"
    config = fleet.tmp / f"re-{tag}.yaml"
    servers = f"servers:\n  {a}: {{type: postgres}}\n  {b}: {{type: postgres}}\n"
    config.write_text(servers)
    first = fleet.cli("deploy", str(config), "--pool", pool)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.splitlines()[-1] == "8 created, 0 updated, 0 unchanged, 0 stale"
    before = _updated(fleet, (a, b))
    assert len(before) == 8

    again = fleet.cli("deploy", str(config), "--pool", pool)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[0] == f"unchanged work pool {pool}  (type process)"
    assert again.stdout.splitlines()[-1] == "0 created, 0 updated, 8 unchanged, 0 stale"
    assert _updated(fleet, (a, b)) == before  # nothing written

    config.write_text(servers + f"schedules:\n  servers:\n    {b}: {{backup: '15 1 * * *'}}\n")
    changed = fleet.cli("deploy", str(config), "--pool", pool)
    assert changed.returncode == 0, changed.stdout + changed.stderr
    assert f"updated   backup-server/{b}  (schedules)" in changed.stdout.splitlines()
    assert changed.stdout.splitlines()[-1] == "0 created, 1 updated, 7 unchanged, 0 stale"
    after = _updated(fleet, (a, b))
    assert {n for n in after if after[n] != before[n]} == {f"backup-server/{b}"}
    dep = fleet.deployment(f"backup-server/{b}")
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == ["15 1 * * *"]

    config.write_text(f"servers:\n  {b}: {{type: postgres}}\n")  # a left the config
    removed = fleet.cli("deploy", str(config), "--pool", pool)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    stale = [line for line in removed.stdout.splitlines() if line.startswith("stale")]
    assert sorted(line.split()[1] for line in stale) == sorted(f"{f}/{a}" for f in _FLOWS)
    assert all(f"server {a} is not in {config}" in line for line in stale)
    # b's backup schedule went back to the default; a's deployments are reported, not deleted
    assert removed.stdout.splitlines()[-1] == "0 created, 1 updated, 3 unchanged, 4 stale"
    assert set(_updated(fleet, (a,))) == {f"{f}/{a}" for f in _FLOWS}
    # the other pool's deployments (fleet-a, fleet-b) are not this pool's business
    assert "fleet-" not in removed.stdout


class DumpWatch:
    """Polls pg_stat_activity for dbbackup's dump sessions on some databases, all along."""

    def __init__(self, databases: list[str]) -> None:
        self.databases = databases
        self.most_at_once = 0
        self.seen: set[str] = set()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def now(self, conn: psycopg.Connection) -> list[str]:
        rows = conn.execute(
            "SELECT datname FROM pg_stat_activity "
            "WHERE starts_with(application_name, %s) AND datname = ANY(%s)",
            (DUMP_APPLICATION, self.databases),
        ).fetchall()
        return [r[0] for r in rows]

    def _poll(self) -> None:
        with psycopg.connect(**PG, dbname="postgres", autocommit=True) as conn:
            while not self.done.is_set():
                dumping = self.now(conn)
                self.most_at_once = max(self.most_at_once, len(dumping))
                self.seen |= set(dumping)
                time.sleep(0.05)


def test_two_workers_share_the_pool_and_the_host_limit_holds_across_them(
    fleet: Fleet, databases: list[str]
) -> None:
    """fleet-a's dump waits on a table lock while holding the host's one slot; fleet-b's
    run goes to the other worker (each takes one run at a time) and must not dump
    until the slot is free."""
    watch = DumpWatch(databases)
    watch.thread.start()
    holder = psycopg.connect(**PG, dbname=databases[0])
    try:
        holder.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")  # open transaction
        first = fleet.run("backup-server/fleet-a", databases=[databases[0]])
        wait_for("fleet-a's dump to start (see worker-*.log)", lambda: databases[0] in watch.seen)
        held = fleet.get("/v2/concurrency_limits/dbbackup-host-127.0.0.1")
        assert (held["limit"], held["active_slots"]) == (1, 1)  # fleet-a's dump holds it
        second = fleet.run("backup-server/fleet-b", databases=[databases[1]])

        def dump_task() -> dict | None:
            """fleet-b's dump task, once it has started (it then waits for the slot)."""
            runs = fleet.post(
                "/task_runs/filter",
                {"flow_runs": {"id": {"any_": [second]}}, "limit": 50},
            )
            return next(
                (
                    t
                    for t in runs
                    if t["name"] == f"backup-{databases[1]}"
                    and t["state"]["type"] not in ("PENDING", "SCHEDULED")
                ),
                None,
            )

        wait_for("fleet-b's dump task to start on the other worker", dump_task)
        time.sleep(3)  # long enough for an unlimited pg_dump to show up
        assert databases[1] not in watch.seen, "fleet-b dumped while fleet-a held the slot"
        waiting = dump_task()["state"]
        assert waiting["type"] == "RUNNING", waiting  # still waiting for the slot
    finally:
        holder.close()  # the lock goes: fleet-a's dump goes on, then fleet-b's
    try:
        ended = [fleet.wait_final(run) for run in (first, second)]
    finally:
        watch.done.set()
        watch.thread.join()
    assert [r["state"]["type"] for r in ended] == ["COMPLETED", "COMPLETED"], ended
    assert watch.seen == set(databases)  # both dumped, and never at the same time
    assert watch.most_at_once == 1
    # the worker that ran each run labels it
    assert {r["labels"]["prefect.worker.name"] for r in ended} == set(WORKERS)
    stored = {p.parent.parent.name for p in (fleet.tmp / "backups").rglob("manifest.json")}
    assert set(databases) <= stored
