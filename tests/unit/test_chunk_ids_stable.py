"""Chunk ids and the stream HMAC never change for the same key and bytes: a backup written
by any version names the chunks an earlier one stored (dedup across versions), and its
stream HMAC is what restore checks. The fixture was written by the code of commit ae59273
(before the read-ahead and the hashing thread, issue #28):

    python3 -m tests.unit.test_chunk_ids_stable > tests/unit/fixtures/chunk_ids_ae59273.json
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import pyrage
from prefect_dbbackup.blocks import AgeEncryption, LocalBackupStorage
from prefect_dbbackup.tasks.dedup.keys import DedupKey
from prefect_dbbackup.tasks.dedup.writer import ChunkWriter
from prefect_dbbackup.tasks.manifest import ChunkList

FIXTURE = Path(__file__).parent / "fixtures" / "chunk_ids_ae59273.json"
KEY = DedupKey(hashlib.sha256(b"dbbackup chunk id fixture").digest())


def stream() -> bytes:
    """~27 MB: noise and text (as a dump mixes), with a 6 MB stretch repeated (the same
    chunks twice in one stream) and a tail shorter than a chunk."""
    noise = hashlib.shake_256(b"noise").digest(9 << 20)
    text = b"".join(b"%d\tname %d\t2026-12-07\n" % (i, i * 7) for i in range(300_000))
    return noise + text + noise[: 6 << 20] + text[:12345]


def chunk_list(root: Path) -> ChunkList:
    """The list ChunkWriter writes for stream() under KEY into a new local storage."""
    storage = LocalBackupStorage(path=str(root))
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    writer = ChunkWriter(
        storage, KEY, AgeEncryption(recipients=[recipient]), level=1, retry_delays=()
    )
    return writer.write(io.BytesIO(stream()))


def test_chunk_ids_and_stream_hmac_are_those_earlier_versions_wrote(tmp_path):
    chunks = chunk_list(tmp_path / "store")
    expected = json.loads(FIXTURE.read_text())
    assert chunks.stream_hmac == expected["stream_hmac"]
    assert [list(c) for c in chunks.order] == expected["order"]
    assert chunks.raw_bytes == len(stream())
    assert (chunks.new, chunks.reused) == (expected["new"], expected["reused"])


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        found = chunk_list(Path(tmp))
    record = {"stream_hmac": found.stream_hmac, "order": found.order}
    json.dump({**record, "new": found.new, "reused": found.reused}, sys.stdout, indent=0)
