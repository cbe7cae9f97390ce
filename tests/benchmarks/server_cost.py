"""What a backup run costs the Prefect server, on SQLite and on PostgreSQL:
python3 -m tests.benchmarks.server_cost [--databases 200] [--concurrency 2] [--repeat 3]

For each database of Prefect's server (its default SQLite file, then a PostgreSQL
database on the test server), starts a private `prefect server start`, saves the
benchmark's blocks in it, and runs the backup_server flow over --databases tiny
databases (tests.benchmarks.worker flow, one task run per database) --repeat times.
Per run it reports the flow's seconds, the CPU seconds of the Prefect server's processes
(until it has recorded what the run sent: its CPU settles), of the flow's worker process
with its dump clients, and of the whole machine (/proc/stat): on a 2-core machine the
server's CPU is taken from the dumps. The PostgreSQL database of the test server is
dropped afterwards. Not a test: no timed assertions. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyrage

from tests.benchmarks import data
from tests.benchmarks.cases import REPO
from tests.benchmarks.run import log, prefect_server_process
from tests.helpers import PG

PREFECT_DB = f"{data.PREFIX}prefect"
TICK = os.sysconf("SC_CLK_TCK")


def _machine_busy() -> float:
    """CPU seconds the whole machine spent busy since boot (all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / TICK


def _group_cpu(pgid: int) -> float:
    """CPU seconds of the live processes of a process group."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:  # field 5: pgrp
                total += (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    return total


def _settled(pgid: int, quiet: float = 0.05, seconds: float = 1.0) -> float:
    """The group's CPU once it has stopped working (under `quiet` of a core for `seconds`,
    at most 60 s): the events and logs a run sent are recorded after the run returns."""
    last, deadline = _group_cpu(pgid), time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = _group_cpu(pgid)
        if now - last < quiet * seconds:
            return now
        last = now
    return last


@contextlib.contextmanager
def _postgres_database() -> Iterator[str]:
    data.pg.drop(PREFECT_DB)
    data.pg.create(PREFECT_DB)
    try:
        yield f"postgresql+asyncpg://{PG['user']}@{PG['host']}:{PG['port']}/{PREFECT_DB}"
    finally:
        data.pg.drop(PREFECT_DB)


def _worker(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """A worker process and the CPU seconds it and its children used."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [sys.executable, "-m", "tests.benchmarks.worker", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"worker {args[0]} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, cpu


def _measure(backend: str, url: str | None, args: argparse.Namespace, work: Path) -> list[dict]:
    home = work / f"home-{backend}"
    extra = {"PREFECT_SERVER_DATABASE_CONNECTION_URL": url} if url else {}
    identity = pyrage.x25519.Identity.generate()
    databases = ",".join(data.ensure_tiny(args.databases))
    rows = []
    with prefect_server_process(home, extra) as (api, proc):
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        env.update(
            api,
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            PREFECT_HOME=str(home),
            DBBACKUP_WORK_DIR=str(work / "spool"),
        )
        (work / "spool").mkdir(exist_ok=True)
        store = ["--storage", str(work / "flow-store")]
        _worker(env, "blocks", *store, "--recipient", str(identity.to_public()))
        flow = ["flow", "--databases", databases, "--concurrency", str(args.concurrency)]
        _worker(env, "flow", "--databases", databases.split(",")[0], "--concurrency", "1")
        for run in range(args.repeat):
            _settled(proc.pid)
            server0, machine0, wall0 = _group_cpu(proc.pid), _machine_busy(), time.monotonic()
            _, worker_cpu = _worker(env, *flow)
            wall = time.monotonic() - wall0
            server = _settled(proc.pid) - server0
            machine = _machine_busy() - machine0
            row = {"backend": backend, "run": run + 1, "flow_s": wall, "server_cpu": server}
            row.update(worker_cpu=worker_cpu, machine_cpu=machine)
            log(
                f"{backend} run {run + 1}: flow {wall:.1f} s, Prefect server {server:.1f} CPU s "
                f"({server / args.databases * 1000:.0f} ms per database), worker {worker_cpu:.1f}, "
                f"machine {machine:.1f}"
            )
            rows.append(row)
            subprocess.run(["rm", "-rf", str(work / "flow-store")], check=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.server_cost")
    parser.add_argument("--databases", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    args = parser.parse_args()
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="dbb-server-cost-") as tmp:
        for backend in args.backends.split(","):
            if backend == "postgres":
                with _postgres_database() as url:
                    rows += _measure(backend, url, args, Path(tmp))
            else:
                rows += _measure(backend, None, args, Path(tmp))
    print(
        f"\n{args.databases} tiny databases, concurrency {args.concurrency}, median of "
        f"{args.repeat}; load average {load} before, "
        "{:.2f} {:.2f} {:.2f} after\n".format(*os.getloadavg())
    )
    print(
        "| Prefect database | flow s | server CPU s | per database ms | worker CPU s "
        "| machine CPU s |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for backend in args.backends.split(","):
        mine = [r for r in rows if r["backend"] == backend]
        med = {
            k: statistics.median(r[k] for r in mine) for k in mine[0] if k not in ("backend", "run")
        }
        print(
            f"| {backend} | {med['flow_s']:.1f} | {med['server_cpu']:.1f} | "
            f"{med['server_cpu'] / args.databases * 1000:.0f} | {med['worker_cpu']:.1f} | "
            f"{med['machine_cpu']:.1f} |"
        )


if __name__ == "__main__":
    main()
