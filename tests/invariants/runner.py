"""Run one seed in a fresh world (databases, blocks, storage), and tear it down."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from tests.invariants.faults import FaultyS3Reads
from tests.invariants.harness import Config, Harness, say
from tests.invariants.world import Keys, World


def run_seed(
    config: Config,
    root: Path,
    s3: object | None = None,
    log: Callable[[str], None] = say,
) -> Harness:
    """Run the seed's steps; raises InvariantBroken with the seed, steps and replay line."""
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        proxy = None
        if config.storage == "s3":
            proxy = stack.enter_context(FaultyS3Reads(s3.endpoint))
        world = World(
            root=root, keys=Keys.make(root / "keys"), storage_kind=config.storage,
            dedup=config.dedup, s3=s3, proxy=proxy, disk_mb=config.disk_mb,
        )  # fmt: skip
        disk = f", on a {config.disk_mb} MB disk" if config.disk_mb else ""
        log(f"seed {config.seed}: {config.storage}{disk}, dedup {'on' if config.dedup else 'off'}")
        world.setup()
        harness = Harness(world, config, log)
        try:
            harness.run()
        finally:
            world.teardown()
            shutil.rmtree(root, ignore_errors=True)
    log(
        f"seed {config.seed}: {len(harness.done)} steps, {harness.restores} restores checked, "
        f"{time.monotonic() - started:.0f}s"
    )
    return harness
