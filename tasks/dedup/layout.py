"""The layout of a deduplicating storage (docs/dedup.md): where chunks, fossils, damaged
chunks, key copies and collections live, the chunker's sizes, the smallest stored chunk,
and the storage's GC parameters (grace and fence).

Layout under the storage root:
  _dedup/keys/{key_id}.{rset}.age          the dedup key, age-encrypted to one recipient set
  _dedup/chunks/{rset}/{id[:2]}/{id}       one chunk: a zstd frame inside age
  _dedup/fossils/{mark}/{rset}/{id[:2]}/{id}  a chunk set aside by a prune (tasks/dedup/gc.py)
  _dedup/gc/{mark}.json                    one collection in progress
  _dedup/gc-parameters.json                grace and fence, written once by the first writer
  _dedup/damaged/{rset}/{id[:2]}/{id}      a chunk `dbbackup check --read-data` found damaged
`rset` names the recipient set: chunks are shared only between backups encrypted to the
same recipients, so every backup is readable by exactly the identities its manifest names.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefect_dbbackup.blocks.errors import DiskFull, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.blocks.storage_keys import check_gc_hours
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import CHUNK_ID

DEDUP = "_dedup"
KEYS, CHUNKS, FOSSILS, GC, DAMAGED = (
    f"{DEDUP}/{name}" for name in ("keys", "chunks", "fossils", "gc", "damaged")
)
GC_PARAMETERS = f"{DEDUP}/gc-parameters.json"
MIN_SIZE, AVG_SIZE, MAX_SIZE = 256 << 10, 1 << 20, 4 << 20  # pyfastcdc: ~2 MiB mean
CHUNKER: dict[str, str | int] = {
    "algorithm": "fastcdc2020",
    "min": MIN_SIZE,
    "avg": AVG_SIZE,
    "max": MAX_SIZE,
    "seed": "keyed",
}
MAX_STORED = MAX_SIZE + (1 << 20)  # a stored chunk: zstd's bound plus age's overhead, rounded up
AGE_FIXED = len("age-encryption.org/v1\n") + len("--- ") + 43 + 1 + 16 + 16  # MAC, nonce, tag
X25519_STANZA = len("-> X25519 ") + 43 + 1 + 43 + 1  # per recipient: share and wrapped key
ZSTD_MIN = 14  # a frame of 1 byte: magic, header, content size, block header, byte, checksum
HASH_AHEAD = 4  # chunks cut and waiting for their id (the hashing thread) at most
IN_FLIGHT = 8  # chunks being checked/compressed/encrypted/uploaded (or fetched) at once
READS = 3  # checked reads of a chunk before it counts as damaged on the way (ReadFault)


def boottime() -> float:
    """Seconds of this machine's clock that counts suspend and ignores wall-clock steps."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def min_stored(recipients: int) -> int:
    """The fewest bytes a stored chunk encrypted to `recipients` X25519 recipients holds:
    age's version and MAC lines, one stanza per recipient (rage adds a random grease
    stanza on top), nonce and one payload tag, around the smallest zstd frame (a chunk
    holds at least 1 byte). A stored chunk below it is not one: backups store it again."""
    return AGE_FIXED + recipients * X25519_STANZA + ZSTD_MIN


def boot_id() -> str:
    """This machine's boot (Linux): boottime values compare only within one boot."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


@dataclass(frozen=True)
class GcParameters:
    """A storage's chunk GC parameters (docs/dedup.md, "Garbage collection")."""

    grace_hours: float
    fence_hours: float

    @property
    def budget_seconds(self) -> float:
        """A mark's time budget: half of grace minus fence."""
        return (self.grace_hours - self.fence_hours) * 3600 / 2


def _parse_gc_parameters(storage: BackupStorage, raw: bytes) -> GcParameters:
    try:
        record = json.loads(raw)
        found = GcParameters(float(record["grace_hours"]), float(record["fence_hours"]))
        check_gc_hours(found.grace_hours, found.fence_hours)
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(
            f"{GC_PARAMETERS} in {storage.describe()} is damaged ({exc}): chunks are neither "
            "collected nor relied on past a fence; restore it from a copy, or delete it (the "
            "next writer stores its block's dedup_grace_hours and dedup_fence_hours)"
        ) from None
    return found


def gc_parameters(storage: BackupStorage, *, write: bool = True) -> GcParameters:
    """The storage's grace and fence: stored once by its first writer (with write), read by
    every prune and backup. A block whose values differ gets a warning; the storage's win."""
    own = GcParameters(storage.dedup_grace_hours, storage.dedup_fence_hours)
    try:
        raw = storage.get_bytes(GC_PARAMETERS)
    except ObjectNotFound:
        if not write:
            return own
        record = {"version": 1, "grace_hours": own.grace_hours, "fence_hours": own.fence_hours}
        try:
            storage.put_bytes(GC_PARAMETERS, json.dumps(record).encode())
        except DiskFull:
            run_logger().warning(
                "cannot store %s (storage full): using this block's grace and fence",
                GC_PARAMETERS,
            )
            return own
        raw = storage.get_bytes(GC_PARAMETERS)  # a concurrent first writer may have won
    stored = _parse_gc_parameters(storage, raw)
    if stored != own:
        run_logger().warning(
            "storage %s collects chunks with dedup_grace_hours %g and dedup_fence_hours %g "
            "(%s), not this block's %g and %g: the storage's values apply",
            storage.describe(),
            stored.grace_hours,
            stored.fence_hours,
            GC_PARAMETERS,
            own.grace_hours,
            own.fence_hours,
        )
    return stored


def recipient_set(fingerprints: Sequence[str]) -> str:
    """16 hex digits naming a set of recipients (their fingerprints, in any order)."""
    return hashlib.sha256("\n".join(sorted(fingerprints)).encode()).hexdigest()[:16]


def chunk_key(rset: str, cid: str) -> str:
    """Where a chunk lives."""
    return f"{CHUNKS}/{rset}/{cid[:2]}/{cid}"


def fossil_key(mark: str, rset: str, cid: str) -> str:
    """Where a prune's mark `mark` set a chunk aside."""
    return f"{FOSSILS}/{mark}/{rset}/{cid[:2]}/{cid}"


def damaged_key(rset: str, cid: str) -> str:
    """Where `check --read-data` moves a damaged chunk (so that a backup stores it again)."""
    return f"{DAMAGED}/{rset}/{cid[:2]}/{cid}"


def parse_chunk_key(key: str) -> tuple[str, str] | None:
    """(rset, id) of a chunk key under chunks/ or a mark's fossils/, else None."""
    parts = key.split("/")
    if key.startswith(CHUNKS + "/") and len(parts) == 5:
        rset, fan, cid = parts[2:]
    elif key.startswith(FOSSILS + "/") and len(parts) == 6:
        rset, fan, cid = parts[3:]
    else:
        return None
    return (rset, cid) if CHUNK_ID.fullmatch(cid) and fan == cid[:2] else None
