"""Sizes print in readable units: a small backup is never '0.0 MB'."""

from __future__ import annotations

import pytest
from prefect_dbbackup.tasks.sizes import size


@pytest.mark.parametrize(
    ("nbytes", "shown"),
    [
        (0, "0 B"),
        (950, "950 B"),
        (1_000, "1.0 kB"),
        (12_345, "12.3 kB"),
        (4_500_000, "4.5 MB"),
        (1_204_000_000, "1.20 GB"),
    ],
)
def test_a_byte_count_reads_in_its_unit(nbytes: int, shown: str) -> None:
    assert size(nbytes) == shown
