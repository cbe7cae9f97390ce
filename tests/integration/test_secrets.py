"""Database passwords stay in the blocks.

With a password-protected login (scram-sha-256 on a private PostgreSQL cluster,
a MariaDB user with a password), a backup and a restore must not put the
password in any child process's argv or environment, any log line (local or
in the Prefect API), any flow run's parameters, any task run, artifact or
result. The clients read it from 0600 files in a 0700 work dir that exist only
while they run.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Importing the flows imports prefect.main, which configures logging and replaces the root
# logger's handlers: do it at collection, not inside the test where caplog already listens.
from prefect_dbbackup.flows.backup import backup_server
from prefect_dbbackup.flows.restore import restore_database

from tests.integration.pg_auth import my_password_user, pg_password_server  # noqa: F401

DUMP_TOOLS = {"pg_dump", "mariadb-dump", "mysqldump"}
RESTORE_TOOLS = {"pg_restore", "mariadb", "mysql"}


@dataclass
class CredFile:
    path: str
    mode: int | None
    dir_mode: int | None
    content: str


@dataclass
class Spawn:
    argv: list[str]
    env: dict[str, str]
    cred_files: list[CredFile] = field(default_factory=list)

    @property
    def tool(self) -> str:
        return os.path.basename(self.argv[0])

    @property
    def is_version_probe(self) -> bool:
        return self.argv[1:] == ["--version"]


@pytest.fixture
def popen_spy(monkeypatch: pytest.MonkeyPatch) -> list[Spawn]:
    """Record every child process (argv, environment, credentials files) and start it."""
    from prefect_dbbackup.blocks import process

    real_popen = subprocess.Popen
    spawns: list[Spawn] = []

    class SpyPopen(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, args, *rest, **kwargs):  # noqa: ANN001, ANN002, ANN003
            argv = [os.fsdecode(args)] if isinstance(args, str | bytes | os.PathLike) else args
            argv = [os.fsdecode(a) for a in argv]
            if os.path.basename(argv[0]) == "setpriv":  # the client is what setpriv runs
                argv = argv[argv.index("--") + 1 :]
            env = kwargs.get("env")
            env = dict(os.environ if env is None else env)
            paths = [a.split("=", 1)[1] for a in argv if a.startswith("--defaults-extra-file=")]
            if env.get("PGPASSFILE"):
                paths.append(env["PGPASSFILE"])
            files = []
            for path in paths:
                try:
                    mode = stat.S_IMODE(os.stat(path).st_mode)
                    dir_mode = stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)
                    content = Path(path).read_text()
                except OSError as exc:
                    mode, dir_mode, content = None, None, f"unreadable: {exc}"
                files.append(CredFile(path, mode, dir_mode, content))
            spawns.append(Spawn(argv, env, files))
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(process.subprocess, "Popen", SpyPopen)
    return spawns


@dataclass
class Login:
    """One password-protected server, as the test sees it."""

    block: str
    user: str
    password: str
    core: str
    database: str
    admin: object  # PgAdmin-like: execute, table_fingerprints, exists, drop

    def leaks(self, text: str) -> bool:
        """Whether text holds the password, or its unique core (an escaped or partial copy)."""
        return self.password in text or self.core in text


@pytest.fixture(params=["postgres", "mysql"])
def login(request, env, my_db, my_admin, cleanup_my) -> Login:
    """A block with a password login and a database with data, on both engines."""
    from prefect_dbbackup.blocks import MySQLServer, PostgresServer

    tag = uuid.uuid4().hex[:8]
    if request.param == "postgres":
        srv = request.getfixturevalue("pg_password_server")
        db = f"dbb_{uuid.uuid4().hex[:10]}"
        srv.create(db)
        request.addfinalizer(lambda: [srv.drop(n) for n in (db, db + "_a", db + "_b")])
        srv.execute(
            db,
            "CREATE TABLE t (id int PRIMARY KEY, v text);"
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 3000) g;",
        )
        block = f"pg-secret-{tag}"
        PostgresServer(host=srv.host, port=srv.port, user=srv.user, password=srv.password).save(
            block
        )
        return Login(block, srv.user, srv.password, srv.password_core, db, srv)
    u = request.getfixturevalue("my_password_user")
    db = my_db()
    cleanup_my.extend([db + "_a", db + "_b"])
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        "INSERT INTO t SELECT seq, md5(seq) FROM seq_1_to_3000",
    )
    block = f"my-secret-{tag}"
    MySQLServer(host=u.host, port=u.port, user=u.user, password=u.password).save(block)
    return Login(block, u.user, u.password, u.password_core, db, my_admin)


def read_back_runs(block: str):  # noqa: ANN201
    """Flow runs, their task runs, logs and artifacts from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send the queued logs and wait
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_=block))
        )
        ids = [r.id for r in runs]
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
        logs = []
        while True:
            page = client.read_logs(
                LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=len(logs)
            )
            logs += page
            if len(page) < 200:
                break
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
    return runs, task_runs, logs, artifacts


def read_back_events(run_ids: list) -> list:
    """Events about the flow runs (their own and their task runs'), once every run's
    Completed event is in: the API stores events asynchronously."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventAnyResourceFilter, EventFilter

    wanted = {f"prefect.flow-run.{i}" for i in run_ids}
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                filter=EventFilter(any_resource=EventAnyResourceFilter(id=sorted(wanted))),
                limit=50,
            )
            events = list(page.events)
            while page.next_page:
                page = client.read_events_page(page.next_page)
                events += page.events
            done = {e.resource.id for e in events if e.event == "prefect.flow-run.Completed"}
            if done >= wanted or time.monotonic() > deadline:
                return events
            time.sleep(0.2)  # poll, bounded by the deadline


def test_password_never_leaves_the_block(env, login, popen_spy, caplog):
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="prefect")
    db = login.database

    # backup and restore, through the CLI and by calling the flows
    cli_backup = env.cli("backup", login.block, "--database", db, "--json")
    assert cli_backup.exit_code == 0, cli_backup.output
    report = backup_server(
        server=login.block, storage=env.storage, encryption=env.encryption, databases=[db]
    )
    cli_restore = env.cli("restore", login.block, db, "--into", db + "_a", "--json")
    assert cli_restore.exit_code == 0, cli_restore.output
    restored = restore_database(
        server=login.block,
        database=db,
        storage=env.storage,
        encryption=env.encryption,
        target_database=db + "_b",
    )
    expected = login.admin.table_fingerprints(db)
    assert expected and login.admin.table_fingerprints(db + "_a") == expected
    assert login.admin.table_fingerprints(db + "_b") == expected

    # child processes: the password is only in 0600 files in a 0700 dir, only while they run
    dumps = [s for s in popen_spy if s.tool in DUMP_TOOLS and not s.is_version_probe]
    restores = [s for s in popen_spy if s.tool in RESTORE_TOOLS and not s.is_version_probe]
    assert len(dumps) == 2 and len(restores) == 2, [s.argv for s in popen_spy]
    for spawn in dumps + restores:
        assert len(spawn.cred_files) == 1, spawn.argv
        cred = spawn.cred_files[0]
        assert cred.mode == 0o600, (spawn.tool, cred)
        assert cred.dir_mode == 0o700, (spawn.tool, cred)
        assert login.core in cred.content and login.user in cred.content
        assert "PGPASSWORD" not in spawn.env and "MYSQL_PWD" not in spawn.env
    for spawn in popen_spy:
        assert not any(login.leaks(a) for a in spawn.argv), spawn.argv
        leaked = [k for k, v in spawn.env.items() if login.leaks(k) or login.leaks(v)]
        assert leaked == [], (spawn.tool, leaked)
    for spawn in popen_spy:
        for cred in spawn.cred_files:
            assert not os.path.exists(cred.path), f"{cred.path} outlived its client"

    # what the commands print and what the flows return
    assert json.loads(cli_backup.stdout)["databases"][0]["status"] == "ok"
    assert json.loads(cli_restore.stdout)["target_database"] == db + "_a"
    for text in (
        cli_backup.output,
        cli_restore.output,
        report.model_dump_json(),
        repr(report),
        restored.model_dump_json(),
        repr(restored),
    ):
        assert not login.leaks(text), text

    # local log records, at DEBUG, of every logger
    messages = []
    for record in caplog.records:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        messages.append(text + (record.exc_text or "") + (record.stack_info or ""))
    assert any("backing up 1 database(s)" in m for m in messages), messages
    assert any("restoring backup" in m for m in messages), messages
    assert [m for m in messages if login.leaks(m)] == []
    assert not login.leaks(caplog.text)

    # the Prefect API: flow runs and their parameters, task runs, logs, artifacts, events
    runs, task_runs, logs, artifacts = read_back_runs(login.block)
    names = sorted(r.name for r in runs)
    assert len(runs) == 4, names
    assert sum(n.startswith(f"backup-{login.block}-") for n in names) == 2, names
    assert sum(n.startswith(f"restore-{login.block}-{db}-to-{db}_") for n in names) == 2, names
    assert len(set(names)) == 4, names  # every run has its own name
    for run in runs:
        assert run.parameters["server"] == login.block
        assert not login.leaks(json.dumps(run.parameters, default=str)), run.parameters
        assert not login.leaks(run.model_dump_json()), run.name
    task_names = sorted(t.name for t in task_runs)
    assert f"backup-{db}" in task_names, task_names
    assert f"restore-{db}_a" in task_names, task_names
    for task_run in task_runs:
        assert not login.leaks(task_run.model_dump_json()), task_run.name
    log_text = [log.message for log in logs]
    assert any("backing up 1 database(s)" in m for m in log_text), log_text
    assert any("restoring backup" in m for m in log_text), log_text
    assert [m for m in log_text if login.leaks(m)] == []
    assert len(artifacts) >= 4, [a.key for a in artifacts]
    for artifact in artifacts:
        assert not login.leaks(artifact.model_dump_json()), artifact.key
    events = read_back_events([r.id for r in runs])
    completed = {e.resource.id for e in events if e.event == "prefect.flow-run.Completed"}
    assert completed == {f"prefect.flow-run.{r.id}" for r in runs}
    assert any(e.event.startswith("prefect.task-run.") for e in events)
    for event in events:
        assert not login.leaks(event.model_dump_json()), event.event
