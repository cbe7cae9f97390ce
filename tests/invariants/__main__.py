"""Long mode: `python3 -m tests.invariants --minutes 60 [--seed N]` runs new seeds (from N
on, or random) until the time is up; `--seed N --steps K` alone replays one seed. Starts
its own temporary Prefect API and S3 server (SeaweedFS)."""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

DISK_MB = 8  # every third round of local seeds: the storage on a tmpfs this small (fills up)
STORAGES = [("local", False), ("local", True), ("s3", False), ("s3", True)]


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python3 -m tests.invariants", description=__doc__)
    parser.add_argument("--minutes", type=float, help="run new seeds for this long")
    parser.add_argument("--seed", type=int, help="the (first) seed")
    parser.add_argument("--steps", type=int, default=16, help="steps per seed (default 16)")
    parser.add_argument("--storage", choices=["local", "s3"], help="default: drawn per seed")
    parser.add_argument("--dedup", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--disk-mb", type=int, help="local storage on a small tmpfs")
    parser.add_argument("--no-signals", action="store_true", help="no kill -9 / SIGSTOP")
    parser.add_argument(
        "--with-known-bugs", action="store_true", help="also draw the faults of open cases"
    )
    return parser.parse_args()


def main() -> int:
    args = _arguments()
    from prefect.testing.utilities import prefect_test_harness

    from tests.invariants.harness import Config, InvariantBroken
    from tests.invariants.runner import run_seed
    from tests.s3server import SeaweedFS

    first = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    deadline = time.monotonic() + args.minutes * 60 if args.minutes else None
    seeds = steps = 0
    broken: list[str] = []
    with tempfile.TemporaryDirectory(prefix="dbb-invariants-") as tmp:
        s3 = SeaweedFS(Path(tmp) / "seaweedfs")
        s3.start_on_free_ports()
        try:
            with prefect_test_harness(server_startup_timeout=120):
                seed = first
                while True:
                    storage, dedup = STORAGES[seed % len(STORAGES)]
                    small = storage == "local" and (seed // len(STORAGES)) % 3 == 0
                    drawn = args.storage is None and args.disk_mb is None
                    disk_mb = (DISK_MB if small else 0) if drawn else (args.disk_mb or 0)
                    storage = args.storage or storage
                    config = Config(
                        seed=seed,
                        storage=storage,
                        dedup=dedup if args.dedup is None else args.dedup,
                        steps=args.steps,
                        known_bugs=args.with_known_bugs,
                        signals=not args.no_signals,
                        disk_mb=disk_mb,
                    )
                    try:
                        harness = run_seed(config, Path(tmp) / f"seed-{seed}", s3)
                        steps += len(harness.done)
                    except InvariantBroken as exc:
                        print(exc, flush=True)
                        broken.append(f"seed {seed}: {config.replay()}")
                        steps += config.steps
                    except Exception:  # noqa: BLE001 - the harness's own error: go on
                        traceback.print_exc()
                        broken.append(f"seed {seed} (harness error): {config.replay()}")
                    seeds += 1
                    seed += 1
                    if deadline is None or time.monotonic() > deadline:
                        break
        finally:
            s3.stop()
    print(f"{seeds} seeds, {steps} steps, {len(broken)} broken")
    for line in broken:
        print(f"  {line}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
