"""The backup_fleet flow: start the backup deployment of many servers, a bounded number at once."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.artifacts import acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterTags,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.responses import DeploymentResponse
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect_dbbackup.blocks.errors import DbBackupError, ReportedFailure
from prefect_dbbackup.flows.artifacts import first_line
from prefect_dbbackup.flows.operations import FLOWS
from pydantic import BaseModel

BACKUP_FLOW = FLOWS["backup"][0]


class ServerRun(BaseModel):
    """How the backup run of one server ended."""

    server: str
    state: str
    flow_run: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.state == "Completed"


class FleetFailed(ReportedFailure):
    """Some servers' backup runs did not complete; `report` is every server's run."""

    report: list[ServerRun]

    def __init__(self, runs: list[ServerRun]) -> None:
        failed = [r for r in runs if not r.ok]
        details = "; ".join(f"{r.server}: {r.state} {first_line(r.message)}" for r in failed)
        message = f"{len(failed)} of {len(runs)} server backups did not complete: {details}"
        super().__init__(message, runs)


async def backup_deployments(page: int = 200) -> list[DeploymentResponse]:
    """The backup deployments (of backup-server, tagged dbbackup); each is named after its
    server."""
    found: list[DeploymentResponse] = []
    async with get_client() as client:
        while True:
            deployments = await client.read_deployments(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[BACKUP_FLOW])),
                deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(all_=["dbbackup"])),
                limit=page,
                offset=len(found),
            )
            found += deployments
            if len(deployments) < page:
                return found


async def backup_deployment_servers(page: int = 200) -> list[str]:
    """Servers that have a backup deployment."""
    return sorted(d.name for d in await backup_deployments(page))


async def _run_one(server: str, gate: asyncio.Semaphore, timeout: float | None) -> ServerRun:
    async with gate:
        name = f"{BACKUP_FLOW}/{server}"
        try:
            run = await arun_deployment(name, timeout=timeout, poll_interval=2, as_subflow=True)
        except ObjectNotFound:
            return ServerRun(server=server, state="NotStarted", message=f"no deployment {name}")
        except Exception as exc:  # report it and let the other servers run
            message = f"{type(exc).__name__}: {exc}"
            return ServerRun(server=server, state="NotStarted", message=message)
    state = run.state
    return ServerRun(
        server=server,
        state=state.name if state else "Unknown",
        flow_run=run.name,
        message=state.message if state and not state.is_completed() else None,
    )


@flow(name="backup-fleet", flow_run_name=lambda: f"fleet-{datetime.now(UTC):%Y-%m-%d}")
async def backup_fleet(
    servers: list[str] | None = None,
    max_parallel: int = 4,
    timeout_seconds: float | None = None,
) -> list[ServerRun]:
    """Run the backup deployment of each server, `max_parallel` at once, and wait for each.

    `servers` defaults to every server with a backup deployment. Each run goes
    to whichever worker of the deployment's pool picks it up. Ends Failed,
    naming the servers whose run did not complete, if any; `timeout_seconds`
    bounds the wait for one run (a run still going is reported, not cancelled).
    """
    log = get_run_logger()
    names = servers or await backup_deployment_servers()
    if not names:
        raise DbBackupError(f"no {BACKUP_FLOW} deployment tagged dbbackup to run")
    log.info("starting the backups of %d server(s), %d at a time", len(names), max_parallel)
    gate = asyncio.Semaphore(max(1, max_parallel))
    runs = list(await asyncio.gather(*(_run_one(n, gate, timeout_seconds) for n in names)))
    await acreate_table_artifact(
        key="backup-fleet",
        table=[r.model_dump() | {"message": first_line(r.message)[:200]} for r in runs],
        description=f"{sum(r.ok for r in runs)}/{len(runs)} server backups completed",
    )
    for r in runs:
        if not r.ok:
            log.error("backup of %s: %s %s", r.server, r.state, first_line(r.message))
    if not all(r.ok for r in runs):
        raise FleetFailed(runs)
    return runs
