"""`dbbackup deploy`: the config's deployments in a work pool, writing only what changed.

The deployments are the plans `dbbackup serve` serves (flows/operations.py), one per
job and server, each with a module-path entrypoint: a worker runs them from the
installed package, with no pull step. The deployments already in the API are read
once (one paged query for our four flows) and compared field by field; only new or
different ones are written. Deployments of this tool in the pool whose server left
the config are reported, never deleted (docs/operations.md#dbbackup-deploy).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.actions import DeploymentScheduleCreate, WorkPoolCreate
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.client.schemas.objects import ConcurrencyOptions
from prefect.client.schemas.responses import DeploymentResponse
from prefect.client.schemas.schedules import CronSchedule
from prefect.exceptions import ObjectNotFound
from prefect.types import BANNED_CHARACTERS
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.operations import (
    FLOWS,
    ONE_AT_A_TIME,
    DeploymentPlan,
    deployment_plans,
    read_operations,
    retry_env,
)

DEFAULT_POOL = "dbbackup"
PAGE = 200  # deployments per read (the API's largest page)
WRITERS = 4  # deployments written at once


@dataclass
class Change:
    """What `deploy` did (or found) for one deployment, or for the work pool."""

    status: str  # created | updated | unchanged | stale (reported, not deleted)
    name: str
    detail: str = ""


def _parameter_schemas() -> dict[str, dict[str, Any]]:
    """The parameter schema of each job's flow, as the API stores it."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.importtools import import_object

    return {
        job: parameter_schema(import_object(entrypoint)).model_dump(exclude_unset=True)
        for job, (_, entrypoint) in FLOWS.items()
    }


def wanted_fields(
    plan: DeploymentPlan, pool: str, env: dict[str, str], schema: dict[str, Any]
) -> dict[str, Any]:
    """Every field of the deployment that `deploy` owns, as the API returns it."""
    return {
        "entrypoint": FLOWS[plan.job][1],
        "work_pool_name": pool,
        "parameters": plan.parameters,
        "tags": plan.tags,
        "description": plan.description,
        "schedules": [(plan.cron, plan.timezone)] if plan.cron else [],
        "concurrency": (ONE_AT_A_TIME.limit, ONE_AT_A_TIME.collision_strategy.value),
        "job_variables": {"env": env},
        "enforce_parameter_schema": True,
        "parameter_openapi_schema": schema,
        "pull_steps": [],
        "path": None,
    }


def existing_fields(d: DeploymentResponse) -> dict[str, Any]:
    """The same fields of a deployment read from the API."""
    limit = d.global_concurrency_limit
    options = d.concurrency_options
    return {
        "entrypoint": d.entrypoint,
        "work_pool_name": d.work_pool_name,
        "parameters": d.parameters,
        "tags": d.tags,
        "description": d.description,
        "schedules": [
            (getattr(s.schedule, "cron", repr(s.schedule)), getattr(s.schedule, "timezone", None))
            for s in d.schedules
        ],
        "concurrency": (
            limit.limit if limit else None,
            options.collision_strategy.value if options else None,
        ),
        "job_variables": d.job_variables,
        "enforce_parameter_schema": d.enforce_parameter_schema,
        "parameter_openapi_schema": d.parameter_openapi_schema,
        "pull_steps": d.pull_steps or [],
        "path": d.path,
    }


def _check_names(plans: list[DeploymentPlan]) -> None:
    """A server name that cannot be a deployment name is a config error, before any write."""
    for plan in plans:
        bad = [c for c in BANNED_CHARACTERS if c in plan.server]
        if bad or not plan.server.isprintable():
            raise ConfigError(
                f"server {plan.server!r} cannot name a deployment "
                f"(no {' '.join(BANNED_CHARACTERS)} or control characters)"
            )


async def _ensure_pool(client: PrefectClient, pool: str) -> Change:
    try:
        found = await client.read_work_pool(pool)
        return Change("unchanged", f"work pool {pool}", f"type {found.type}")
    except ObjectNotFound:
        from prefect.workers.process import ProcessWorker

        template = ProcessWorker.get_default_base_job_template()
        await client.create_work_pool(
            WorkPoolCreate(name=pool, type="process", base_job_template=template)
        )
        return Change("created", f"work pool {pool}", "type process")


async def _existing(client: PrefectClient) -> tuple[dict[str, Any], dict[tuple[str, str], Any]]:
    """(flow name -> id, (flow name, deployment name) -> deployment) of our four flows."""
    names = [flow_name for flow_name, _ in FLOWS.values()]
    flows = await client.read_flows(flow_filter=FlowFilter(name=FlowFilterName(any_=names)))
    flow_ids = {f.name: f.id for f in flows}
    by_id = {f.id: f.name for f in flows}
    deployments: dict[tuple[str, str], Any] = {}
    offset = 0
    while flow_ids:
        page = await client.read_deployments(
            flow_filter=FlowFilter(name=FlowFilterName(any_=names)), limit=PAGE, offset=offset
        )
        deployments |= {(by_id[d.flow_id], d.name): d for d in page}
        if len(page) < PAGE:
            break
        offset += PAGE
    return flow_ids, deployments


async def _write(client: PrefectClient, flow_id: Any, plan: DeploymentPlan, w: dict) -> None:
    limit, strategy = w["concurrency"]
    await client.create_deployment(  # an upsert: replaces the fields and the schedules
        flow_id=flow_id,
        name=plan.server,
        entrypoint=w["entrypoint"],
        work_pool_name=w["work_pool_name"],
        parameters=w["parameters"],
        tags=w["tags"],
        description=w["description"],
        schedules=[
            DeploymentScheduleCreate(schedule=CronSchedule(cron=cron, timezone=tz), active=True)
            for cron, tz in w["schedules"]
        ],
        concurrency_limit=limit,
        concurrency_options=ConcurrencyOptions(collision_strategy=strategy),
        job_variables=w["job_variables"],
        enforce_parameter_schema=w["enforce_parameter_schema"],
        parameter_openapi_schema=w["parameter_openapi_schema"],
        pull_steps=w["pull_steps"],
        path=w["path"],
    )


def _stale(
    deployments: dict[tuple[str, str], Any], servers: set[str], pool: str, config: Path
) -> list[Change]:
    """Our deployments in this pool whose server is no longer in the config."""
    found = []
    for (flow_name, name), d in sorted(deployments.items()):
        server = next((t[7:] for t in d.tags if t.startswith("server:")), None)
        ours = "dbbackup" in d.tags and d.work_pool_name == pool and server is not None
        if ours and server not in servers:
            found.append(
                Change(
                    "stale",
                    f"{flow_name}/{name}",
                    f"server {server} is not in {config}; "
                    f"delete it with: prefect deployment delete '{flow_name}/{name}'",
                )
            )
    return found


async def deploy_async(config: Path, pool: str = DEFAULT_POOL) -> list[Change]:
    """Create the pool if missing and every deployment of the config that is new or
    different; report the others unchanged and the pool's orphans stale."""
    ops = read_operations(config)
    plans = deployment_plans(ops)
    _check_names(plans)
    env = retry_env(ops.schedules)
    schemas = _parameter_schemas()
    async with get_client() as client:
        changes = [await _ensure_pool(client, pool)]
        flow_ids, deployments = await _existing(client)
        for flow_name, _ in FLOWS.values():
            if flow_name not in flow_ids and any(p.flow_name == flow_name for p in plans):
                flow_ids[flow_name] = await client.create_flow_from_name(flow_name)
        writes = []
        for plan in plans:
            wanted = wanted_fields(plan, pool, env, schemas[plan.job])
            current = deployments.get((plan.flow_name, plan.server))
            if current is None:
                changes.append(Change("created", plan.name))
            else:
                differ = [k for k, v in existing_fields(current).items() if wanted[k] != v]
                if not differ:
                    changes.append(Change("unchanged", plan.name))
                    continue
                changes.append(Change("updated", plan.name, ", ".join(differ)))
            writes.append((flow_ids[plan.flow_name], plan, wanted))
        gate = asyncio.Semaphore(WRITERS)

        async def write(flow_id: Any, plan: DeploymentPlan, wanted: dict) -> None:
            async with gate:
                await _write(client, flow_id, plan, wanted)

        await asyncio.gather(*(write(*w) for w in writes))
    return changes + _stale(deployments, set(ops.servers), pool, config)


def deploy(config: Path, pool: str = DEFAULT_POOL) -> list[Change]:
    """`dbbackup deploy`: see deploy_async."""
    return asyncio.run(deploy_async(config, pool))
