"""Flow runs whose process was killed outright end Crashed, not Running forever.

A SIGKILL, an OOM kill or a power cut gives a run no chance to report its end: the
API keeps it Running, its deployment's concurrency slot stays taken, and a restarted
`serve` skips its schedules. Each dbbackup flow run therefore records itself in
`PREFECT_HOME/dbbackup-runs/<flow run id>.json` (pid and the process's start time,
host, API) while it runs. Every later `dbbackup` command that uses the API (`serve`
included, at its start) and every later dbbackup flow run (under a worker) looks at
these records: a run whose process is gone and that the API still shows unfinished is
set Crashed, with its unfinished task runs. Runs of other hosts or another API are
never touched.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed
from prefect_dbbackup.flows.local_server import prefect_home
from prefect_dbbackup.flows.run_logs import expected_errors_in_one_line
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.workdir import process_start

P = ParamSpec("P")
R = TypeVar("R")


def records_dir() -> Path:
    """Where running flow runs record their process."""
    return prefect_home() / "dbbackup-runs"


def _record(run_id: UUID) -> Path:
    directory = records_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{run_id}.json"
    record = {
        "flow_run_id": str(run_id),
        "pid": os.getpid(),
        "started": process_start(os.getpid()),
        "host": socket.gethostname(),
        "api_url": PREFECT_API_URL.value(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
    return path


def recorded_run(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a flow's function (under @flow) so that the run is recorded while it runs
    (and its API logs say expected errors in one line: flows/run_logs.py)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        expected_errors_in_one_line()
        context = FlowRunContext.get()
        if context is None or context.flow_run is None:
            return fn(*args, **kwargs)
        _end_dead_runs()
        try:
            path = _record(context.flow_run.id)
        except OSError:  # a full or read-only PREFECT_HOME must not stop a backup
            return fn(*args, **kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            path.unlink(missing_ok=True)

    # Prefect validates parameters against the wrapper: give it fn's resolved signature
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


def _end_dead_runs() -> None:
    """A run that starts (under a worker: after a hard kill of the previous one) first ends
    the runs of dead processes; a failure here never stops the run."""
    try:
        for name in mark_dead_runs_crashed():
            run_logger().warning("run %s was left running by a killed process: Crashed", name)
    except (httpx.HTTPError, PrefectHTTPStatusError, OSError) as exc:  # the run goes on
        run_logger().warning("could not check for runs of killed processes: %s", exc)


def _dead_records() -> list[tuple[Path, UUID, int]]:
    """(record, flow run id, pid) of the records of this host and API whose process is gone."""
    dead = []
    api_url, host = PREFECT_API_URL.value(), socket.gethostname()
    with contextlib.suppress(OSError):
        for path in records_dir().glob("*.json"):
            try:
                record = json.loads(path.read_text())
                run_id, pid = UUID(str(record["flow_run_id"])), int(record["pid"])
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if record.get("host") != host or record.get("api_url") != api_url:
                continue
            if process_start(pid) != record.get("started"):
                dead.append((path, run_id, pid))
    return dead


def _crash(client: SyncPrefectClient, run_id: UUID, pid: int) -> str | None:
    """Set an unfinished run (and its unfinished task runs) Crashed: its name, or None if it
    had ended."""
    run = client.read_flow_run(run_id)
    if run.state is None or run.state.is_final():
        return None
    message = (
        f"the process that ran it (pid {pid}) was killed; nothing it had not finished "
        "was stored (a backup without a manifest does not exist)"
    )
    client.set_flow_run_state(run_id, Crashed(message=message), force=True)
    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    for task_run in client.read_task_runs(flow_run_filter=flow_filter):
        if task_run.state is not None and not task_run.state.is_final():
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    return run.name


def mark_dead_runs_crashed() -> list[str]:
    """Set Crashed the runs whose recorded process is gone; the names of those changed."""
    changed = []
    dead = _dead_records()
    if not dead:
        return changed
    with get_client(sync_client=True) as client:
        for path, run_id, pid in dead:
            try:
                name = _crash(client, run_id, pid)
            except ObjectNotFound:
                name = None  # deleted from the API meanwhile
            if name is not None:
                changed.append(name)
            path.unlink(missing_ok=True)
    return changed
