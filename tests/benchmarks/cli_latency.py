"""CLI latency with dbbackup's local Prefect server: python3 -m tests.benchmarks.cli_latency

Measured side by side in one run, each command as a user runs it (a child process),
median of --repeat runs:
  import-prefect   python -c "import prefect" (the floor of any command that imports Prefect)
  usage-error      `dbbackup backup` (a missing argument) and `dbbackup no-such-command`:
                   answered without Prefect (goal: <= 0.5 s)
  first-command    `dbbackup server start` in a fresh PREFECT_HOME (the server start included)
  list             `dbbackup list SERVER` with the server running
  backup           `dbbackup backup SERVER -d DB` of a one-table PostgreSQL database
Prints each time and its ratio to import-prefect. Uses 127.0.0.1:5432 and a temporary
PREFECT_HOME and storage; stops the server it started. Not a test: no timed assertions.
See docs/performance.md.
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
from pathlib import Path

CLI = [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()"]


def _timed(argv: list[str], env: dict[str, str], cwd: Path, expect: int = 0) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != expect:
        raise SystemExit(f"{' '.join(argv[3:])} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def _config(root: Path, db: str) -> Path:
    identity = root / "identity.txt"
    signing = root / "signing.key"
    env = {**os.environ}
    subprocess.run([*CLI, "keygen", "-o", str(identity)], env=env, check=True, capture_output=True)
    subprocess.run(
        [*CLI, "signing-keygen", "-o", str(signing)], env=env, check=True, capture_output=True
    )
    config = root / "dbbackup.yaml"
    config.write_text(
        "servers:\n"
        "  bench-pg: {type: postgres, host: 127.0.0.1, user: postgres, backup_users: false}\n"
        "storage:\n"
        f"  default: {{type: local, path: {root / 'backups'}, "
        f"manifest_signing_key_file: {signing}}}\n"
        "encryption:\n"
        f"  default: {{identity_file: {identity}}}\n"
    )
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'CREATE DATABASE "{db}"'], check=True
    )
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qc"]
        + ["CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g"],
        check=True,
    )
    return config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dbbackup-cli-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(root / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    db = f"bench_cli_{uuid.uuid4().hex[:6]}"
    os.environ.update(env)
    config = _config(root, db)
    try:
        first = _timed([*CLI, "server", "start"], env, root)
        _timed([*CLI, "apply", str(config)], env, root)
        runs: dict[str, list[float]] = {
            "import-prefect": [],
            "usage-missing": [],
            "usage-unknown": [],
            "list": [],
            "backup": [],
        }
        for _ in range(args.repeat):  # interleaved: the machine's noise hits all alike
            runs["import-prefect"].append(
                _timed([sys.executable, "-c", "import prefect"], env, root)
            )
            runs["usage-missing"].append(_timed([*CLI, "backup"], env, root, expect=3))
            runs["usage-unknown"].append(_timed([*CLI, "no-such-command"], env, root, expect=3))
            runs["list"].append(_timed([*CLI, "list", "bench-pg"], env, root))
            runs["backup"].append(_timed([*CLI, "backup", "bench-pg", "-d", db], env, root))
    finally:
        subprocess.run([*CLI, "server", "stop"], env=env, capture_output=True)
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f'DROP DATABASE IF EXISTS "{db}"']
        )
    floor = statistics.median(runs["import-prefect"])
    print(f"{'case':16} {'median s':>9} {'x import prefect':>17}")
    print(f"{'first-command':16} {first:9.2f} {first / floor:17.2f}")
    for case, times in runs.items():
        median = statistics.median(times)
        print(f"{case:16} {median:9.2f} {median / floor:17.2f}")


if __name__ == "__main__":
    main()
