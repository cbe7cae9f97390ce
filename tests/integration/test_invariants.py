"""The invariant harness in its bounded CI mode: a few fixed seeds (docs/invariants.md)."""

from __future__ import annotations

import pytest

from tests.invariants.harness import Config
from tests.invariants.runner import run_seed

# (seed, storage, dedup): each runs 12 steps with its faults drawn from the seed
CI_SEEDS = [
    (1, "local", False),
    (2, "local", True),
]


@pytest.mark.parametrize(("seed", "storage", "dedup"), CI_SEEDS)
def test_invariants_hold(prefect_api, tmp_path, seed, storage, dedup):
    s3 = None
    run_seed(Config(seed=seed, storage=storage, dedup=dedup), tmp_path / "world", s3)
