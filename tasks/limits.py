"""Per-database-host global concurrency limits: at most N dumps at once on one host.

The limit of a host is the Prefect global concurrency limit named
`dbbackup-host-{host}` (`dbbackup limits apply` creates them). A dump holds
one slot of its server's host limit while it runs; where no such limit
exists the dump runs without waiting.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect_dbbackup.tasks.logs import run_logger

PREFIX = "dbbackup-host-"
_BANNED = re.compile(r"[/%&<>]")  # characters Prefect refuses in a limit name


def host_limit_name(host: str) -> str:
    """The limit name of a database host ('/' of a unix socket directory becomes '_')."""
    return PREFIX + _BANNED.sub("_", host)


def limit_exists(name: str) -> bool:
    """Whether the Prefect API has a global concurrency limit with this name."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return False
    return True


@contextlib.contextmanager
def host_slot(host: str) -> Iterator[None]:
    """Hold one slot of the host's limit for the duration of the block (no-op without one)."""
    name = host_limit_name(host)
    if not limit_exists(name):
        yield
        return
    started = time.monotonic()
    with concurrency(name, occupy=1, strict=False):
        waited = time.monotonic() - started
        if waited >= 1:
            run_logger().info("waited %.0f s for a slot of the concurrency limit %s", waited, name)
        yield


def apply_host_limits(limits: dict[str, int]) -> list[tuple[str, int, str]]:
    """Create or update one global concurrency limit per host.

    `limits` maps host to the dumps allowed at once. Returns (limit name,
    limit, created|updated|unchanged) per host; limits of other hosts are left alone.
    """
    changes = []
    with get_client(sync_client=True) as client:
        for host, limit in sorted(limits.items()):
            name = host_limit_name(host)
            try:
                existing = client.read_global_concurrency_limit_by_name(name).limit
            except ObjectNotFound:
                existing = None
            if existing != limit:
                client.upsert_global_concurrency_limit_by_name(name, limit)
            status = (
                "created" if existing is None else "unchanged" if existing == limit else "updated"
            )
            changes.append((name, limit, status))
    return changes
