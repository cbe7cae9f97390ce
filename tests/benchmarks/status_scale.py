"""`dbbackup status` over many databases: python3 -m tests.benchmarks.status_scale
[--databases 1000] [--backups 2] [--runs 3]

Against PREFECT_API_URL if set, else a temporary local Prefect API (SQLite), which stays
running while the command is timed. Writes BACKUPS signed manifests per database of one
server into a local storage through the product's own writer (publish_manifest, as a
backup run does), saves that storage block, then times the command in its own process,
as a user runs it: `status SERVER`, `status` (the fleet) and `status SERVER --json
--prometheus FILE`, and health_rows alone in this process. Not a test: no timed
assertions. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.benchmarks.harness import prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

CLI = "from prefect_dbbackup.flows.cli import main; main()"


def write_backups(storage, server: str, databases: int, backups: int) -> None:  # noqa: ANN001
    """BACKUPS daily backups of each database, the newest an hour ago, 8 writers at once."""
    from tests.helpers import plant_manifest

    now = datetime.now(UTC)
    ids = [f"{now - timedelta(hours=1, days=k):%Y%m%dT%H%M%SZ}-abcd" for k in range(backups)]

    def one(n: int) -> None:
        for backup_id in ids:
            plant_manifest(storage, server, f"db{n:05d}", backup_id)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(databases)))


def timed_cli(args: list[str], runs: int) -> tuple[float, int]:
    """Median wall time of the command in its own process, and its exit code."""
    times, code = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CLI, *args], capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        code = proc.returncode
        if code not in (0, 1):
            raise SystemExit(f"status failed ({code}): {proc.stderr}")
    return statistics.median(times), code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=1000)
    parser.add_argument("--backups", type=int, default=2, help="backups per database")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from prefect_dbbackup.blocks.local_storage import LocalBackupStorage
    from prefect_dbbackup.tasks.health import health_rows

    from tests.helpers import signing_fields

    harness = prefect_api()
    with harness, tempfile.TemporaryDirectory() as tmp:
        from prefect.settings import PREFECT_API_URL

        os.environ["PREFECT_API_URL"] = str(PREFECT_API_URL.value())  # for the child processes
        tag = uuid.uuid4().hex[:6]
        server, name = f"bench-{tag}", f"bench-store-{tag}"
        storage = LocalBackupStorage(path=str(Path(tmp) / "store"), **signing_fields())
        storage.save(name)
        started = time.perf_counter()
        write_backups(storage, server, args.databases, args.backups)
        print(
            f"{args.databases} databases x {args.backups} backups written in "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
        started = time.perf_counter()
        rows = health_rows(storage, server)
        print(f"health_rows in-process   {time.perf_counter() - started:6.2f} s  {len(rows)} rows")
        prom = str(Path(tmp) / "dbbackup.prom")
        for label, argv in (
            ("status SERVER", ["status", server, "--storage", name]),
            ("status (fleet)", ["status", "--storage", name]),
            (
                "status --json --prom",
                ["status", server, "--storage", name, "--json", "--prometheus", prom],
            ),
        ):
            seconds, code = timed_cli(argv, args.runs)
            print(f"{label:24} {seconds:6.2f} s  (median of {args.runs}, exit {code})", flush=True)
        with open("/proc/loadavg") as loadavg:
            print(f"loadavg {loadavg.read().strip()}")


if __name__ == "__main__":
    main()
