"""Run the benchmarks: python3 -m tests.benchmarks.run [--size 100MB|1GB] [--repeat N] ...

Builds (or reuses) the dbb_bench_* databases, measures every selected case
next to its baseline, interleaved, and writes results.json and results.md
into --out. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pyrage

from tests.benchmarks import cases, data, report
from tests.benchmarks.harness import run_group, run_once, summarise
from tests.prefect_procs import stop


def log(message: str) -> None:
    print(message, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:  # noqa: S310
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[dict[str, str]]:
    """A private `prefect server start` (own PREFECT_HOME and SQLite db) on a free port."""
    with prefect_server_process(home) as (api, _):
        yield api


@contextlib.contextmanager
def prefect_server_process(
    home: Path, extra: dict[str, str] | None = None
) -> Iterator[tuple[dict[str, str], subprocess.Popen]]:
    """prefect_server with extra settings (its database), and its process (a group)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        **(extra or {}),
    )
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.log", "wb") as out:
        proc = subprocess.Popen(
            ["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start: see {home / 'server.log'}")
            time.sleep(0.5)
        log(f"prefect server at {url}")
        yield {"PREFECT_API_URL": url}, proc
    finally:
        stop(proc)


def _first_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[0] if out.strip() else "?"


def _meta(args: argparse.Namespace) -> dict[str, object]:
    commit = _first_line(["git", "-C", str(cases.REPO), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(cases.REPO), "status", "--porcelain", "tasks", "blocks"])
    packages = ", ".join(f"{p} {version(p)}" for p in ("zstandard", "pyrage", "prefect"))
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "size": args.size,
        "repeat": args.repeat,
        "load_before": "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()),
        "commit": commit + (" (tasks/ or blocks/ modified)" if dirty != "?" else ""),
        "versions": f"{_first_line(['pg_dump', '--version'])}; "
        f"{_first_line(['mariadb-dump', '--version'])}; Python {platform.python_version()}, "
        f"{packages}; commit {commit}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.run", description=__doc__)
    parser.add_argument("--size", choices=sorted(data.PROFILES), default="100MB")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per variant")
    parser.add_argument(
        "--cases", default=",".join(cases.CASES), help=f"comma list of {', '.join(cases.CASES)}"
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/dbbackup-bench"))
    parser.add_argument("--s3-endpoint", default=os.environ.get("DBB_BENCH_S3_ENDPOINT"))
    parser.add_argument("--s3-bucket", default="dbb-bench")
    parser.add_argument(
        "--drop-data", action="store_true", help="drop every dbb_bench_* database and exit"
    )
    args = parser.parse_args()
    if args.drop_data:
        log(f"dropped: {', '.join(data.drop_all()) or 'nothing'}")
        return
    selected = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(selected) - set(cases.CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "spool").mkdir(parents=True)
    identity = pyrage.x25519.Identity.generate()
    identity_file = work / "identity.txt"
    identity_file.write_text(f"{identity}\n")
    identity_file.chmod(0o600)
    ctx = cases.Context(
        work=work,
        sizes=data.PROFILES[args.size],
        recipient=str(identity.to_public()),
        identity=identity_file,
        s3_endpoint=args.s3_endpoint,
        s3_bucket=args.s3_bucket,
    )
    meta = _meta(args)
    rows, skipped = [], []
    with contextlib.ExitStack() as stack:
        ctx.prefect_env = stack.enter_context(prefect_server(work / "prefect-home"))
        blocks = ctx.worker("blocks", "--storage", str(work / "flow-store"))
        run_once(cases.Variant("blocks", blocks + ["--recipient", ctx.recipient], env=ctx.env()))
        for name in selected:
            group = cases.BUILDERS[name](ctx)
            if group.skipped:
                log(f"{group.case}: {group.skipped}")
                skipped.append((group.case, group.skipped))
                continue
            log(f"{group.case}")
            rows += summarise(group, run_group(group, args.repeat, log))
    meta["load_after"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    targets = report.check_targets(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rows": rows, "targets": targets, "skipped": skipped}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    text = report.markdown(meta, rows, targets, skipped)
    (args.out / "results.md").write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    log("\n" + text)
    log(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


if __name__ == "__main__":
    sys.exit(main())
