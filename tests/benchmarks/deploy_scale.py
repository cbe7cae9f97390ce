"""`dbbackup deploy` at fleet scale: python3 -m tests.benchmarks.deploy_scale [--servers 100]

Against PREFECT_API_URL if set, else a temporary local Prefect API (SQLite). Writes a
config with N servers (4 deployments each: backup, verify, prune, check) and times the
command as an operator runs it, in its own process (Python and Prefect imports included):
  create     the first deploy into a new pool (the pool and 4N deployments created)
  unchanged  the same file again (nothing written)
  change-10  10 servers' backup time changed (10 deployments written)
Not a test: no timed assertions anywhere. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.benchmarks.harness import prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
MAIN = "from prefect_dbbackup.flows.cli import main; main()"


def config_text(tag: str, servers: int, changed: int = 0) -> str:
    lines = ["servers:"]
    lines += [f"  s{n:04d}-{tag}: {{type: postgres, host: db{n}.internal}}" for n in range(servers)]
    lines += ["schedules:", "  servers:"]
    lines += [f"    s{n:04d}-{tag}: {{backup: '15 1 * * *'}}" for n in range(changed)]
    return "\n".join(lines if changed else lines[:-2]) + "\n"


def timed(label: str, argv: list[str], env: dict[str, str], deployments: int) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{label}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")
    summary = done.stdout.splitlines()[-1]
    per = 1000 * seconds / deployments
    print(f"{label:10} {seconds:7.2f} s  {per:6.1f} ms/deployment  {summary}", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=100)
    args = parser.parse_args()

    harness = prefect_api()
    with harness, tempfile.TemporaryDirectory() as tmp:
        from prefect.settings import PREFECT_API_URL

        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env |= {"PREFECT_API_URL": str(PREFECT_API_URL.value()), "DBBACKUP_WORK_DIR": tmp}
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        tag = uuid.uuid4().hex[:6]
        config = Path(tmp) / "dbbackup.yaml"
        config.write_text(config_text(tag, args.servers))
        argv = [sys.executable, "-c", MAIN, "deploy", str(config), "--pool", f"bench-{tag}"]
        deployments = 4 * args.servers
        print(f"{args.servers} servers, {deployments} deployments", flush=True)
        timed("create", argv, env, deployments)
        timed("unchanged", argv, env, deployments)
        config.write_text(config_text(tag, args.servers, changed=10))
        timed("change-10", argv, env, deployments)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", MAIN, "--help"], env=env, capture_output=True)
        print(f"{'--help':10} {time.perf_counter() - started:7.2f} s  (the process floor)")


if __name__ == "__main__":
    main()
