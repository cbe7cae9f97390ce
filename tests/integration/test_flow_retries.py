"""Flow-level retries: configurable, made for transient errors, never for permanent ones."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.flows import Flow
from prefect_dbbackup.blocks import PostgresServer
from prefect_dbbackup.blocks.errors import ConnectionFailed, DatabaseNotFound
from prefect_dbbackup.flows.backup import backup_server


async def _run_counts(name: str) -> list[tuple[str, int]]:
    async with get_client() as client:
        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )
    return [(r.state.type.value, r.run_count) for r in runs]


def _retrying(name: str) -> Flow:
    """backup_server with 2 flow retries, as a deployment's retry setting would give it."""
    return backup_server.with_options(retries=2, retry_delay_seconds=0, flow_run_name=name)


def test_a_missing_database_fails_once_despite_flow_retries(env) -> None:
    name = f"retry-{uuid.uuid4().hex[:8]}"
    with pytest.raises(DatabaseNotFound):
        _retrying(name)(
            server=env.pg,
            storage=env.storage,
            encryption=env.encryption,
            databases=[f"dbb_missing_{uuid.uuid4().hex[:6]}"],
        )
    assert asyncio.run(_run_counts(name)) == [("FAILED", 1)]


def test_an_unreachable_server_is_retried_by_the_flow(env) -> None:
    down = f"down-{uuid.uuid4().hex[:8]}"
    PostgresServer(host="127.0.0.1", port=1, user="postgres", connect_timeout=2).save(down)
    name = f"retry-{uuid.uuid4().hex[:8]}"
    with pytest.raises(ConnectionFailed):
        _retrying(name)(
            server=down, storage=env.storage, encryption=env.encryption, databases=["x"]
        )
    assert asyncio.run(_run_counts(name)) == [("FAILED", 3)]


def test_the_flow_keeps_its_parameter_schema_under_the_retry_decorator() -> None:
    schema = backup_server.parameters.model_dump()
    assert schema["required"] == ["server"]
    assert schema["properties"]["databases"]["anyOf"][0]["type"] == "array"
