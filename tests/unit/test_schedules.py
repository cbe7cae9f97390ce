"""The `schedules`/`limits` sections of dbbackup.yaml, and prefect.yaml agreeing with serve."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.operations import (
    FLOWS,
    ONE_AT_A_TIME,
    deployment_plans,
    host_limits,
    read_operations,
)
from prefect_dbbackup.tasks.limits import host_limit_name

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dbbackup.yaml"
    path.write_text(text)
    return path


SERVERS = """
servers:
  pg1: {type: postgres, host: db1.example.com, user: postgres}
  my1: {type: mysql, host: /run/mysqld, user: root}
"""


def test_prefect_yaml_declares_what_serve_serves_for_the_example_config() -> None:
    """`prefect deploy --all` and `dbbackup serve dbbackup.example.yaml` give the same deployments."""
    declared = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    by_name = {
        (d["entrypoint"], d["name"]): d
        for d in declared["deployments"]
        if d["entrypoint"] != "prefect_dbbackup.flows.fleet.backup_fleet"
    }
    plans = deployment_plans(read_operations(ROOT / "dbbackup.example.yaml"))
    assert {(FLOWS[p.job][1], p.server) for p in plans} == set(by_name)
    for plan in plans:
        d = by_name[(FLOWS[plan.job][1], plan.server)]
        assert d["parameters"] == plan.parameters
        assert d["tags"] == plan.tags
        assert d["schedules"] == [{"cron": plan.cron, "timezone": plan.timezone}]
        assert d["concurrency_limit"] == {
            "limit": ONE_AT_A_TIME.limit,
            "collision_strategy": ONE_AT_A_TIME.collision_strategy.value,
        }
        assert d["work_pool"]["name"] == "dbbackup"
    assert declared["pull"] == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $DBBACKUP_HOME }}"}}
    ]


def test_defaults_overrides_and_disabled_jobs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        SERVERS
        + """
schedules:
  timezone: Europe/Berlin
  backup: "0 1 * * *"
  storage: s3
  servers:
    my1: {backup: "15 3 * * *", verify: null}
""",
    )
    plans = {(p.job, p.server): p for p in deployment_plans(read_operations(path))}
    assert plans["backup", "pg1"].cron == "0 1 * * *"
    assert plans["backup", "my1"].cron == "15 3 * * *"
    assert plans["verify", "my1"].cron is None  # disabled for that server only
    assert plans["verify", "pg1"].cron == "0 4 * * 0"
    assert plans["prune", "my1"].cron == "30 5 * * *"
    assert {p.timezone for p in plans.values()} == {"Europe/Berlin"}
    assert plans["backup", "pg1"].parameters == {
        "server": "pg1",
        "storage": "s3",
        "encryption": "default",
    }
    assert plans["prune", "pg1"].parameters == {"server": "pg1", "storage": "s3"}
    assert plans["backup", "my1"].name == "backup-server/my1"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("schedules: {backup: 'every night'}", "schedules (backup of pg1)"),
        ("schedules: {timezone: Mars/Olympus}", "schedules (backup of pg1)"),
        ("schedules: {servers: {nope: {backup: '0 1 * * *'}}}", "no server named nope"),
        ("schedules: {backups: '0 1 * * *'}", "schedules.backups: Extra inputs"),
        ("schedules: {retries: -1}", "schedules.retries"),
        ("limits: {dumps_per_host: 0}", "limits.dumps_per_host"),
    ],
)
def test_bad_sections_are_config_errors(tmp_path: Path, section: str, message: str) -> None:
    path = write(tmp_path, SERVERS + section + "\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        deployment_plans(read_operations(path))


def test_host_limits_cover_every_server_host_and_explicit_hosts(tmp_path: Path) -> None:
    path = write(
        tmp_path, SERVERS + "limits: {dumps_per_host: 2, hosts: {db1.example.com: 5, db9: 1}}\n"
    )
    assert host_limits(read_operations(path)) == {
        "db1.example.com": 5,
        "/run/mysqld": 2,
        "db9": 1,
    }
    assert host_limits(read_operations(write(tmp_path, SERVERS))) == {}


def test_limit_names_are_valid_prefect_names() -> None:
    assert host_limit_name("db1.example.com") == "dbbackup-host-db1.example.com"
    assert host_limit_name("/run/mysqld") == "dbbackup-host-_run_mysqld"


@pytest.mark.parametrize("name", ["50%", "a/b", '"line\\nbreak"', "a<b"])
def test_deploy_refuses_a_server_name_prefect_cannot_take_before_any_api_call(
    tmp_path: Path, name: str
) -> None:
    """`dbbackup deploy` checks every name first: no API is configured here, so any call
    would fail differently (or start a server)."""
    import asyncio

    from prefect_dbbackup.flows.deploy import deploy_async

    path = write(tmp_path, f"servers:\n  {name}: {{type: postgres}}\n")
    with pytest.raises(ConfigError, match="cannot name a deployment"):
        asyncio.run(deploy_async(path, "pool"))


def test_only_pitr_servers_get_an_archive_deployment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
servers:
  my1: {type: mysql, host: db1, pitr: true}
  my2: {type: mysql, host: db2}
schedules:
  servers:
    my1: {archive: "*/5 * * * *"}
""",
    )
    plans = {(p.job, p.server): p for p in deployment_plans(read_operations(path))}
    assert plans["archive", "my1"].cron == "*/5 * * * *"
    assert plans["archive", "my1"].name == "archive/my1"
    assert plans["archive", "my1"].parameters == {
        "server": "my1",
        "storage": "default",
        "encryption": "default",
    }
    assert ("archive", "my2") not in plans and ("backup", "my2") in plans


def test_only_postgres_pitr_servers_get_a_weekly_base_backup_deployment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
servers:
  pg1: {type: postgres, host: db1, pitr: true}
  pg2: {type: postgres, host: db2}
  my1: {type: mysql, host: db3, pitr: true}
""",
    )
    plans = {(p.job, p.server): p for p in deployment_plans(read_operations(path))}
    assert plans["base_backup", "pg1"].cron == "0 1 * * 0"
    assert plans["base_backup", "pg1"].name == "base-backup/pg1"
    assert ("archive", "pg1") in plans and ("archive", "pg2") not in plans
    assert ("base_backup", "pg2") not in plans and ("base_backup", "my1") not in plans
