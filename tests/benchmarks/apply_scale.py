"""`dbbackup apply` at fleet scale: python3 -m tests.benchmarks.apply_scale [--servers 1000]

Against PREFECT_API_URL if set, else a temporary local Prefect API (SQLite). Writes
a config with N servers (half PostgreSQL, half MariaDB, sharing settings through a
YAML anchor), one storage and one encryption block, then times:
  create     the first apply (N + 2 blocks created)
  unchanged  the same file again (nothing written)
  change-10  10 servers changed (10 writes)
and, with --baseline K, the per-block load+save loop apply used before (on K new
servers), for the per-server cost it had. Not a test: no timed assertions anywhere.
See docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

import pyrage

from tests.benchmarks.harness import prefect_api

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def config_text(tag: str, servers: int, recipient: str, changed: int = 0) -> str:
    lines = ["servers:"]
    for n in range(servers):
        kind = "postgres" if n % 2 == 0 else "mysql"
        port = 7000 + n if n < changed else (5432 if kind == "postgres" else 3306)
        anchor = " &common" if n == 0 else ""
        common = f'exclude:{anchor} ["tmp_*", "scratch_*"]' if n == 0 else "exclude: *common"
        lines.append(
            f"  s{n:05d}-{tag}: {{type: {kind}, host: db{n}.internal, port: {port}, {common}}}"
        )
    lines += [
        "storage:",
        f"  st-{tag}: {{type: local, path: /var/backups/dbbackup}}",
        "encryption:",
        f'  en-{tag}: {{recipients: ["{recipient}"]}}',
    ]
    return "\n".join(lines) + "\n"


def timed(label: str, call, blocks: int) -> float:  # noqa: ANN001
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    statuses = {}
    for _, _, status in result or []:
        statuses[status] = statuses.get(status, 0) + 1
    print(
        f"{label:10} {seconds:8.2f} s  {1000 * seconds / blocks:7.1f} ms/block  {statuses}",
        flush=True,
    )
    return seconds


def legacy_apply(path: Path) -> list[tuple[str, str, str]]:
    """The loop apply used before: load each block by name, save each changed one."""
    from prefect_dbbackup.flows.config import _comparable, load_config

    changes = []
    for name, block in load_config(path):
        kind = type(block)
        try:
            existing = kind.load(name)
        except ValueError:
            existing = None
        if existing is not None and _comparable(existing) == _comparable(block):
            status = "unchanged"
        else:
            block.save(name, overwrite=True)
            status = "created" if existing is None else "updated"
        changes.append((kind.get_block_type_slug(), name, status))
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--baseline", type=int, default=0, help="servers for the old loop")
    args = parser.parse_args()

    from prefect_dbbackup.flows.config import apply_config

    recipient = str(pyrage.x25519.Identity.generate().to_public())
    harness = prefect_api()
    with harness, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "dbbackup.yaml"
        tag = uuid.uuid4().hex[:6]
        blocks = args.servers + 2
        config.write_text(config_text(tag, args.servers, recipient))
        print(f"{args.servers} servers + 2 blocks, config {config.stat().st_size} bytes")
        timed("create", lambda: apply_config(config), blocks)
        timed("unchanged", lambda: apply_config(config), blocks)
        config.write_text(config_text(tag, args.servers, recipient, changed=10))
        timed("change-10", lambda: apply_config(config), blocks)
        if args.baseline:
            old = Path(tmp) / "legacy.yaml"
            old.write_text(config_text(uuid.uuid4().hex[:6], args.baseline, recipient))
            n = args.baseline + 2
            timed("old-create", lambda: legacy_apply(old), n)
            timed("old-same", lambda: legacy_apply(old), n)


if __name__ == "__main__":
    main()
