"""How many dumps run at once: per database host across runs, and per flow run.

Per host: the Prefect global concurrency limit named `dbbackup-host-{host}`
(`dbbackup limits apply` creates them). A dump holds one slot of its server's
host limit while it runs; where no such limit exists the dump runs without
waiting. Whether a limit exists is asked once per flow run (a run over 1,000
databases asks once, not 1,000 times) and on every dump outside a flow.

Per run: the flow's `concurrency` (DumpSlots, dump_slot).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.runtime import flow_run
from prefect_dbbackup.blocks.process import interrupted
from prefect_dbbackup.tasks.logs import run_logger

PREFIX = "dbbackup-host-"
_BANNED = re.compile(r"[/%&<>]")  # characters Prefect refuses in a limit name
_SEEN: dict[tuple[str, str], bool] = {}  # (flow run id, limit name) -> exists
_SEEN_LOCK = threading.Lock()


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


def _limit_in_run(name: str) -> bool:
    """limit_exists, asked once per flow run (every time outside a flow)."""
    run = flow_run.get_id()
    if run is None:
        return limit_exists(name)
    with _SEEN_LOCK:  # the run's concurrent dumps wait for one answer
        if (run, name) not in _SEEN:
            if len(_SEEN) > 1000:  # a long-lived worker: forget old runs
                _SEEN.clear()
            _SEEN[run, name] = limit_exists(name)
        return _SEEN[run, name]


@contextlib.contextmanager
def host_slot(host: str) -> Iterator[None]:
    """Hold one slot of the host's limit for the duration of the block (no-op without one)."""
    name = host_limit_name(host)
    if not _limit_in_run(name):
        yield
        return
    started = time.monotonic()
    with concurrency(name, occupy=1, strict=False):
        waited = time.monotonic() - started
        if waited >= 1:
            run_logger().info("waited %.0f s for a slot of the concurrency limit %s", waited, name)
        yield


class DumpSlots:
    """The dumps of one flow run: at most `size` read from the server at once.

    The flow starts one task more than `size` (see wait_to_start), which waits in
    dump_slot: the start of a task run, its upload and its manifest overlap the
    other dumps instead of adding to the run's time.
    """

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._dumping = threading.BoundedSemaphore(self.size)
        self._changed = threading.Condition()
        self._before_dump_end: set[str] = set()  # started databases whose dump has not ended

    def wait_to_start(self, database: str) -> bool:
        """Block until a task for database may start; False once the run is told to stop."""
        with self._changed:
            while len(self._before_dump_end) > self.size:
                if interrupted():
                    return False
                self._changed.wait(0.5)
            self._before_dump_end.add(database)
        return not interrupted()

    def dump_ended(self, database: str) -> None:
        """The dump of database ended (or its task ended without one): start the next."""
        with self._changed:
            self._before_dump_end.discard(database)
            self._changed.notify_all()

    @contextlib.contextmanager
    def registered(self) -> Iterator[DumpSlots]:
        """Make these the slots of the current flow run (see dump_slot)."""
        run = flow_run.get_id()
        _RUN_SLOTS[run] = self
        try:
            yield self
        finally:
            _RUN_SLOTS.pop(run, None)


_RUN_SLOTS: dict[str | None, DumpSlots] = {}


@contextlib.contextmanager
def dump_slot(database: str) -> Iterator[None]:
    """Hold one of the flow run's dump slots while reading database from the server
    (no-op outside a flow run that registered DumpSlots)."""
    slots = _RUN_SLOTS.get(flow_run.get_id())
    if slots is None:
        yield
        return
    try:
        with slots._dumping:
            yield
    finally:
        slots.dump_ended(database)


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
