"""Flow-level retries only for errors a retry can fix.

Prefect retries a failed flow run `retries` times whatever the error (3.9
has no retry condition for flows). `transient_retries_only` is that
condition: when the flow raises a dbbackup error that is not retryable
(authentication, missing database, bad configuration or key, a backup run
whose databases failed after their tasks' own retries), it sets the run's
remaining retries to none before the failure is reported, so Prefect does
not run the whole flow again for nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.tasks.logs import run_logger

P = ParamSpec("P")
R = TypeVar("R")


def end_flow_retries(reason: str) -> None:
    """Tell the Prefect API not to retry the current flow run (no-op outside a run)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not context.flow.retries:
        return
    run = context.flow_run
    policy = run.empirical_policy.model_copy(update={"retries": 0})
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, empirical_policy=policy)
    run_logger().info("not retrying this flow run: %s", reason)


def transient_retries_only(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a flow's function (under @flow) so permanent errors end its retries."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except DbBackupError as exc:
            if not exc.retryable:
                end_flow_retries(f"{type(exc).__name__} is permanent")
            raise

    # resolve string annotations where fn's module can see them: Prefect validates
    # parameters against the wrapper, whose globals are this module's
    wrapper.__signature__ = inspect.signature(fn, eval_str=True)  # type: ignore[attr-defined]
    return wrapper
