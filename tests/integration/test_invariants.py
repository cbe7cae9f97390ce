"""The invariant harness in its bounded CI mode: a few fixed seeds, 10 steps each
(docs/invariants.md). Every fault is drawn (KNOWN_BUGS in tests/invariants/harness.py is
empty since the fixes of issue #23 landed)."""

from __future__ import annotations

import pytest

from tests.invariants.harness import Config
from tests.invariants.runner import run_seed

# (seed, storage, dedup), chosen for the faults they draw (a full disk, copy-backup,
# foreign-file and check --read-data are left to the long mode):
# 10: kill -9, SIGSTOP, clocks -2 h and -1 y, a foreign dir, restore of latest, verify;
# 5: dedup with kill -9, SIGSTOP, clock -2 h, check, chunk GC by prune;
# 20: S3 dedup with SIGSTOP, kill -9, verify 1 d fast, store down, a write and reads corrupted
pytestmark = pytest.mark.slow

CI_SEEDS = [
    (10, "local", False),
    (5, "local", True),
    (20, "s3", True),
    (6, "s3", True),  # check --read-data through a path corrupting every read (case 1)
    (22, "local", True),  # a chunk truncated to 0 bytes, then a backup (case 6)
]


@pytest.mark.parametrize(("seed", "storage", "dedup"), CI_SEEDS)
def test_invariants_hold(request, prefect_api, tmp_path, seed, storage, dedup):
    s3 = request.getfixturevalue("s3_server") if storage == "s3" else None
    config = Config(seed=seed, storage=storage, dedup=dedup, steps=10)
    run_seed(config, tmp_path / "world", s3)
