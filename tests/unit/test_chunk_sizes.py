"""The smallest stored chunk (tasks/dedup/layout.min_stored): exactly what the age CLI writes for
the smallest chunk, and never above what dbbackup's own encryption writes."""

from __future__ import annotations

import subprocess

import pyrage
import pytest
import zstandard
from prefect_dbbackup.tasks.dedup.layout import min_stored

SMALLEST = zstandard.ZstdCompressor(write_checksum=True).compress(b"\0")  # a 1-byte chunk


@pytest.mark.parametrize("count", [1, 2, 3])
def test_min_stored_is_the_smallest_age_file_of_the_smallest_chunk(count):
    identities = [pyrage.x25519.Identity.generate() for _ in range(count)]
    recipients = [str(i.to_public()) for i in identities]
    args = [arg for r in recipients for arg in ("-r", r)]
    plain = subprocess.run(["age", *args], input=SMALLEST, capture_output=True, check=True)
    assert len(plain.stdout) == min_stored(count)  # age (Go) adds no grease stanza
    ours = [pyrage.encrypt(SMALLEST, [i.to_public() for i in identities]) for _ in range(50)]
    assert min(len(blob) for blob in ours) >= min_stored(count)
