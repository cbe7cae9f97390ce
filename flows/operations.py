"""dbbackup.yaml's `schedules` and `limits` sections: deployments to serve and host limits.

`dbbackup serve` serves one deployment per (job, server) with the schedules
below; `dbbackup deploy` (flows/deploy.py) writes the same deployments into a
work pool, and deployments/prefect.yaml declares them for `prefect deploy`.
`dbbackup limits apply` creates the per-host limits (tasks/limits.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule
from prefect_dbbackup.blocks.bounds import validation_problems
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.config import expand_env, read_yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

JOBS = ("backup", "verify", "prune", "check", "archive", "base_backup")
# flow name and module-path entrypoint of each job (the deployment is FLOW_NAME/SERVER)
FLOWS = {
    "backup": ("backup-server", "prefect_dbbackup.flows.backup.backup_server"),
    "verify": ("verify-backups", "prefect_dbbackup.flows.verify.verify_backups"),
    "prune": ("prune-backups", "prefect_dbbackup.flows.prune.prune_backups"),
    "check": ("check-backups", "prefect_dbbackup.flows.check.check_backups"),
    "archive": ("archive", "prefect_dbbackup.flows.archive.archive_server"),
    "base_backup": ("base-backup", "prefect_dbbackup.flows.base_backup.base_backup_server"),
}
DESCRIPTIONS = {
    "backup": "Backup of every database of {server}.",
    "verify": "Restore check of the latest backup of each database of {server}.",
    "prune": "Retention (GFS) of the backups of {server}.",
    "check": "Check that every stored backup of {server} is whole.",
    "archive": "Archive of the transaction log (binlog, WAL) of {server} since the last run "
    "(point-in-time recovery).",
    "base_backup": "Physical base backup of the PostgreSQL cluster {server} (point-in-time "
    "recovery).",
}
# a run that starts while the previous one of the same deployment still runs is cancelled:
# stacking two dumps of one server never helps, and a queue could grow night after night
ONE_AT_A_TIME = ConcurrencyLimitConfig(
    limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobTimes(_Strict):
    """Cron expressions of the jobs; null means the job is not scheduled."""

    backup: str | None = "30 2 * * *"
    verify: str | None = "0 4 * * 0"
    prune: str | None = "30 5 * * *"
    check: str | None = "0 4 * * 3"
    archive: str | None = Field(
        default="* * * * *",
        description="servers with pitr: true only; every minute bounds the data a lost "
        "server takes with it to about a minute (docs/pitr.md)",
    )
    base_backup: str | None = Field(
        default="0 1 * * 0",
        description="PostgreSQL servers with pitr: true only: a restore-cluster replays the WAL "
        "since the newest base backup, at most a week of it with this weekly default",
    )


class Schedules(JobTimes):
    """The `schedules` section: times for every server, block names, flow retries."""

    timezone: str = "UTC"
    storage: str = "default"
    encryption: str = "default"
    retries: int = Field(default=0, ge=0)
    retry_delay_seconds: int = Field(default=600, ge=0)
    servers: dict[str, JobTimes] = Field(default_factory=dict)


class Limits(_Strict):
    """The `limits` section: dumps at once per database host."""

    dumps_per_host: int | None = Field(default=None, ge=1)
    hosts: dict[str, int] = Field(default_factory=dict)


@dataclass
class Operations:
    """What a config file says about running dbbackup: servers (name -> host) and the sections."""

    servers: dict[str, str]
    pitr: set[str] = field(default_factory=set)  # servers with pitr: true (archive runs)
    base_backup: set[str] = field(default_factory=set)  # of them, PostgreSQL's (base backups)
    schedules: Schedules = field(default_factory=Schedules)
    limits: Limits = field(default_factory=Limits)


@dataclass
class DeploymentPlan:
    """One deployment to create: which flow, for which server, when, with what parameters."""

    job: str
    server: str
    cron: str | None
    timezone: str
    parameters: dict[str, Any]

    @property
    def flow_name(self) -> str:
        return FLOWS[self.job][0]

    @property
    def name(self) -> str:
        """Full deployment name, as `run_deployment` and `prefect deployment run` take it."""
        return f"{self.flow_name}/{self.server}"

    @property
    def tags(self) -> list[str]:
        return ["dbbackup", self.job, f"server:{self.server}"]

    @property
    def description(self) -> str:
        """What the deployment does, as the UI's Deployments page shows it."""
        return DESCRIPTIONS[self.job].format(server=self.server)


def _section(model: type[BaseModel], raw: Any, where: str) -> Any:
    try:
        return model.model_validate(raw or {})
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, where)) from None


def read_operations(path: Path) -> Operations:
    """Read the servers, schedules and limits of a config file (no block is loaded or saved)."""
    config = read_yaml(path)
    if not isinstance(config, dict) or not isinstance(config.get("servers"), dict):
        raise ConfigError(f"{path} must be a mapping with a 'servers' section")
    servers = {
        str(name): str(expand_env((raw or {}).get("host", "127.0.0.1"), f"servers.{name}.host"))
        for name, raw in config["servers"].items()
    }
    ops = Operations(
        servers=servers,
        pitr={str(n) for n, raw in config["servers"].items() if (raw or {}).get("pitr") is True},
        base_backup={
            str(n)
            for n, raw in config["servers"].items()
            if (raw or {}).get("pitr") is True and (raw or {}).get("type") == "postgres"
        },
        schedules=_section(Schedules, config.get("schedules"), "schedules"),
        limits=_section(Limits, config.get("limits"), "limits"),
    )
    unknown = set(ops.schedules.servers) - set(servers)
    if unknown:
        raise ConfigError(f"schedules.servers: no server named {', '.join(sorted(unknown))}")
    return ops


def deployment_plans(ops: Operations) -> list[DeploymentPlan]:
    """One plan per job and server, with the server's overrides; crons and time zone checked."""
    s = ops.schedules
    plans = []
    for server in ops.servers:
        override = s.servers.get(server)
        for job in JOBS:
            if (job == "archive" and server not in ops.pitr) or (
                job == "base_backup" and server not in ops.base_backup
            ):
                continue
            if override is not None and job in override.model_fields_set:
                cron = getattr(override, job)
            else:
                cron = getattr(s, job)
            if cron is not None:
                try:
                    CronSchedule(cron=cron, timezone=s.timezone)
                except ValidationError as exc:
                    first = exc.errors()[0]["msg"]
                    raise ConfigError(f"schedules ({job} of {server}): {first}") from None
            parameters: dict[str, Any] = {"server": server, "storage": s.storage}
            if job != "prune":
                parameters["encryption"] = s.encryption
            plans.append(DeploymentPlan(job, server, cron, s.timezone, parameters))
    return plans


def host_limits(ops: Operations) -> dict[str, int]:
    """Dumps allowed at once per host of the configured servers (plus explicit hosts)."""
    limits = {}
    if ops.limits.dumps_per_host is not None:
        limits = {host: ops.limits.dumps_per_host for host in ops.servers.values()}
    return limits | ops.limits.hosts


def runner_deployments(ops: Operations) -> list:
    """The plans as deployments `prefect.serve` runs (each run loads its flow by module path)."""
    from prefect.types.entrypoint import EntrypointType
    from prefect.utilities.importtools import import_object

    result = []
    for plan in deployment_plans(ops):
        schedules = [CronSchedule(cron=plan.cron, timezone=plan.timezone)] if plan.cron else []
        result.append(
            import_object(FLOWS[plan.job][1]).to_deployment(
                name=plan.server,
                schedules=schedules,
                parameters=plan.parameters,
                description=plan.description,
                tags=plan.tags,
                concurrency_limit=ONE_AT_A_TIME,
                entrypoint_type=EntrypointType.MODULE_PATH,
            )
        )
    return result


def retry_env(schedules: Schedules) -> dict[str, str]:
    """Environment of a flow-run process that sets the configured flow-level retry policy."""
    return {
        "PREFECT_FLOWS_DEFAULT_RETRIES": str(schedules.retries),
        "PREFECT_FLOWS_DEFAULT_RETRY_DELAY_SECONDS": str(schedules.retry_delay_seconds),
    }


def serve(path: Path) -> None:
    """Serve the config's deployments from this process until interrupted (no work pool)."""
    from prefect import serve as prefect_serve

    ops = read_operations(path)
    deployments = runner_deployments(ops)
    os.environ.update(retry_env(ops.schedules))  # inherited by each flow-run process
    prefect_serve(*deployments)
