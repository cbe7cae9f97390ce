"""The local server's first start in a fresh PREFECT_HOME, with and without the database
template: python3 -m tests.benchmarks.first_start [--repeat 5]

Builds the template once (timed) in a temporary cache directory, then times
`dbbackup server start` in a new home per run, interleaved: `migrations`
(DBBACKUP_DB_TEMPLATE=off, Prefect migrates the new database) and `template` (the home's
database copied from the template). Prints the medians, their ratio and the load. Stops
every server it started. Not a test: no timed assertions. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()"]


def _first_start(root: Path, name: str, env: dict[str, str]) -> float:
    """Seconds of `dbbackup server start` in a new home (its server stopped after)."""
    env = {**env, "PREFECT_HOME": str(root / name)}
    started = time.perf_counter()
    done = subprocess.run([*CLI, "server", "start"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"server start failed ({done.returncode}):\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dbbackup-first-start-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        XDG_CACHE_HOME=str(root / "cache"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DBBACKUP_SERVER_PORT="0",
    )
    print(f"load before: {os.getloadavg()}")
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "prefect_dbbackup.flows.db_template"], env=env, check=True
    )
    print(f"template build: {time.perf_counter() - started:.2f} s")
    runs: dict[str, list[float]] = {"migrations": [], "template": []}
    for r in range(args.repeat):  # interleaved: the machine's noise hits both alike
        off = {**env, "DBBACKUP_DB_TEMPLATE": "off"}
        runs["migrations"].append(_first_start(root, f"off-{r}", off))
        runs["template"].append(_first_start(root, f"tpl-{r}", env))
        print(f"run {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in runs.items()))
    print(f"load after: {os.getloadavg()}")
    base = statistics.median(runs["migrations"])
    for case, times in runs.items():
        median = statistics.median(times)
        print(
            f"{case:11} median {median:6.2f} s  min {min(times):6.2f}  max {max(times):6.2f}"
            f"  x migrations {median / base:5.2f}"
        )


if __name__ == "__main__":
    main()
