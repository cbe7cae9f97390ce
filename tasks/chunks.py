"""Deduplicated storage: a dump stream cut into chunks, each compressed and encrypted on its
own and stored once under a keyed id (docs/dedup.md).

Layout under the storage root:
  _dedup/keys/{key_id}.{rset}.age          the dedup key, age-encrypted to one recipient set
  _dedup/chunks/{rset}/{id[:2]}/{id}       one chunk: a zstd frame inside age
  _dedup/fossils/{mark}/{rset}/{id[:2]}/{id}  a chunk set aside by a prune (tasks/chunk_gc.py)
  _dedup/gc/{mark}.json                    one collection in progress
  _dedup/gc-parameters.json                grace and fence, written once by the first writer
  _dedup/damaged/{rset}/{id[:2]}/{id}      a chunk `dbbackup check --read-data` found damaged
`rset` names the recipient set: chunks are shared only between backups encrypted to the
same recipients, so every backup is readable by exactly the identities its manifest names.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import pyrage
import zstandard
from prefect_dbbackup.blocks.encryption import AgeEncryption, recipient_fingerprint
from prefect_dbbackup.blocks.errors import AuthError, ConfigError, DiskFull, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, ReadFault
from prefect_dbbackup.blocks.storage_keys import check_gc_hours
from prefect_dbbackup.tasks.catalog import read_manifest, read_manifests, signature_key
from prefect_dbbackup.tasks.layout import parse_manifest_key, series_prefix
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import CHUNK_ID, ChunkList, Manifest
from prefect_dbbackup.tasks.retrying import retry_transient
from pyfastcdc import FastCDC

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


@dataclass(frozen=True)
class DedupKey:
    """A storage's dedup key and the subkeys derived from it (HMAC-SHA256 with a label)."""

    secret: bytes = field(repr=False)

    def _sub(self, label: str) -> bytes:
        return hmac.digest(self.secret, label.encode(), "sha256")

    @cached_property
    def key_id(self) -> str:
        """Public name of the key (16 hex digits), recorded in manifests."""
        return self._sub("dbbackup key id v1").hex()[:16]

    @cached_property
    def id_key(self) -> bytes:
        return self._sub("dbbackup chunk id v1")

    @cached_property
    def stream_key(self) -> bytes:
        return self._sub("dbbackup stream v1")

    def chunker(self) -> FastCDC:
        """The content-defined chunker, its gear table seeded from the key."""
        seed = int.from_bytes(self._sub("dbbackup fastcdc seed v1")[:8], "big") >> 1
        return FastCDC(AVG_SIZE, min_size=MIN_SIZE, max_size=MAX_SIZE, seed=seed)

    def chunk_id(self, data: bytes | memoryview) -> str:
        return hmac.digest(self.id_key, data, "sha256").hex()

    def stream_hmac(self) -> hmac.HMAC:
        return hmac.new(self.stream_key, digestmod="sha256")


def key_copy_key(key_id: str, rset: str) -> str:
    """Where the dedup key sits encrypted to one recipient set."""
    return f"{KEYS}/{key_id}.{rset}.age"


_COPIES_MADE: set[tuple[str, str, str]] = set()
_COPIES_LOCK = threading.Lock()


def ensure_key_copy(storage: BackupStorage, key: DedupKey, encryption: AgeEncryption) -> None:
    """Store the dedup key encrypted to the encryption block's recipients, unless a copy for
    that set is there: then the identity alone restores and checks every chunked backup."""
    rset = recipient_set(encryption.fingerprints())
    made = (storage.describe(), key.key_id, rset)
    with _COPIES_LOCK:
        if made in _COPIES_MADE:
            return
    where = key_copy_key(key.key_id, rset)
    if not storage.exists(where):
        record = {"version": 1, "key_id": key.key_id, "key": key.secret.hex()}
        storage.put_bytes(
            where, pyrage.encrypt(json.dumps(record).encode(), encryption.recipient_keys())
        )
    with _COPIES_LOCK:
        _COPIES_MADE.add(made)


def writer_key(storage: BackupStorage) -> DedupKey:
    """The key a backup writes chunks with: the storage block's (fails closed)."""
    secret = storage.dedup_secret()
    if secret is None:
        raise ConfigError(
            f"storage {storage.describe()} has dedup: true but no dedup key: run `dbbackup apply "
            "CONFIG --identity-file FILE` (it recovers the key from the storage's copy, or makes "
            "one for a storage that has none), or set dedup_key_file to the key's file"
        )
    return DedupKey(secret)


KEY_COPY = re.compile(r"(?P<key_id>[0-9a-f]{16})\.(?P<rset>[0-9a-f]{16})\.age")


def key_copies(storage: BackupStorage) -> list[tuple[datetime, str, str]]:
    """(store time, key id, recipient set) of every dedup key copy, newest first."""
    found = []
    for key, stamp in storage.list_modified(KEYS).items():
        match = KEY_COPY.fullmatch(key.removeprefix(KEYS + "/"))
        if match:
            found.append((stamp, match["key_id"], match["rset"]))
    return sorted(found, reverse=True)


def _newest_signed_key_id(storage: BackupStorage) -> str | None:
    """The key id of the newest chunked backup with a valid signature, if any: a key copy
    anyone could plant (recipients are public) never outranks the key backups use."""
    listed = set(storage.list_keys())
    wanted = [(k, signature_key(k) in listed) for k in listed if parse_manifest_key(k)]
    signed = [
        e.manifest
        for e in read_manifests(storage, wanted, storage.manifest_verifiers())
        if e is not None and e.trust == "signed" and e.manifest and e.manifest.chunks
    ]
    newest = max(signed, key=lambda m: m.started_at, default=None)
    return newest.chunks.key_id if newest else None  # type: ignore[union-attr]


def recover_key(
    storage: BackupStorage,
    identities: list[pyrage.x25519.Identity],
    copies: list[tuple[datetime, str, str]],
) -> DedupKey:
    """The storage's dedup key from its copies (key_copies): the key of the newest signed
    chunked backup, else the newest copy; ConfigError saying how to recover when no
    identity opens one."""
    wanted = _newest_signed_key_id(storage) if identities else None
    ordered = sorted(copies, key=lambda c: c[1] != wanted)  # stable: newest first otherwise
    for _, key_id, rset in ordered if identities else []:
        with contextlib.suppress(AuthError, IntegrityError, ObjectNotFound):
            return open_key_copy(storage, key_id, rset, identities)
    ids = ", ".join(sorted({c[1] for c in copies}))
    tried = "no identity was given" if not identities else "no given identity opens them"
    raise ConfigError(
        f"storage {storage.describe()} holds copies of its dedup key ({ids}, in {KEYS}/) but "
        f"the block has none and {tried}: a new key would silently stop sharing chunks with "
        "every backup stored. Recover it: `dbbackup apply CONFIG --identity-file FILE` with "
        "the identity of the storage's recipients (or an identity_file on the config's "
        "encryption block), or set dedup_key_file to the key's file"
    )


def open_key_copy(
    storage: BackupStorage, key_id: str, rset: str, identities: list[pyrage.x25519.Identity]
) -> DedupKey:
    """The dedup key `key_id` from its copy for recipient set `rset`, opened with the
    identity (ObjectNotFound when there is no copy; AuthError, IntegrityError)."""
    where = key_copy_key(key_id, rset)
    blob = storage.get_bytes(where)
    try:
        record = json.loads(pyrage.decrypt(blob, identities))
        key = DedupKey(bytes.fromhex(record["key"]))
    except pyrage.DecryptError:
        raise AuthError(
            f"the dedup key copy {where} does not open with this identity: use the identity "
            "of the backup's recipients"
        ) from None
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(f"the dedup key copy {where} is damaged") from None
    if key.key_id != key_id:
        raise IntegrityError(
            f"the dedup key copy {where} holds key {key.key_id}, not {key_id}: it was "
            "replaced; restore it from a copy"
        )
    return key


def reader_key(
    storage: BackupStorage, chunks: ChunkList, rset: str, identities: list[pyrage.x25519.Identity]
) -> DedupKey:
    """The key a chunked backup was written with: the storage block's own when it is that
    key, else its copy in the storage (the identity opens it)."""
    try:
        secret, unusable = storage.dedup_secret(), ""
    except ConfigError as exc:  # a restore machine's block may point at no key file
        secret, unusable = None, f" ({exc})"
    if secret is not None and DedupKey(secret).key_id == chunks.key_id:
        return DedupKey(secret)
    try:
        return open_key_copy(storage, chunks.key_id, rset, identities)
    except ObjectNotFound:
        raise ConfigError(
            f"the dedup key {chunks.key_id} of this backup is neither in the storage "
            f"({key_copy_key(chunks.key_id, rset)}) nor on the storage block{unusable}: set "
            "the block's dedup_key (or dedup_key_file) to the key the backup was written with"
        ) from None


class ChunkWriter:
    """Cuts a plaintext stream into chunks and stores the ones the storage lacks.

    Chunks already stored are only named: nothing is compressed, encrypted or sent for
    them. At most IN_FLIGHT chunks are checked or uploaded at once; the chunking waits
    for them, so memory stays flat (IN_FLIGHT x MAX_SIZE plaintext)."""

    def __init__(
        self,
        storage: BackupStorage,
        key: DedupKey,
        encryption: AgeEncryption,
        *,
        level: int,
        retry_delays: tuple[float, ...],
        series: tuple[str, str] | None = None,
        on_chunk: Callable[[str], None] | None = None,
    ) -> None:
        self.storage, self.key, self.level = storage, key, level
        self.recipients = encryption.recipient_keys()
        self.rset = recipient_set(encryption.fingerprints())
        self.retry_delays = retry_delays
        self.on_chunk = on_chunk  # tests stop a backup here
        self.new = self.reused = self.stored_bytes = self.compressed_bytes = 0
        self.min_stored = min_stored(len(self.recipients))
        # (server, database): the sizes its newest backup recorded, each checked on reuse
        self.recorded = recorded_sizes(storage, *series, key.key_id, self.rset) if series else {}
        self.sizes: dict[str, int] = {}  # chunk id -> stored size, as found or written
        self._lock = threading.Lock()
        self.started = boottime()  # before the first question "does this chunk exist?"

    def _reusable(self, cid: str, where: str) -> bool:
        """Whether the stored chunk can be named as it is (one HEAD): there, not smaller
        than any chunk, and of the size the series' last backup recorded, if it did."""
        size = self.storage.stored_size(where)
        if size is None:
            return False
        expected = self.recorded.get(cid, size)
        if size < self.min_stored:
            why = f"a chunk holds at least {self.min_stored}"
        elif size != expected:
            why = f"the series' last backup found {expected}"
        else:
            with self._lock:
                self.sizes[cid] = size
            return True
        run_logger().warning(
            "chunk %s in %s holds %d bytes (%s): storing a good copy over it",
            cid,
            self.storage.describe(),
            size,
            why,
        )
        return False

    def _store_one(self, cid: str, data: bytes) -> None:
        where = chunk_key(self.rset, cid)
        if self._reusable(cid, where):
            with self._lock:
                self.reused += 1
            return
        compressed = zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(data)
        blob = pyrage.encrypt(compressed, self.recipients)
        retry_transient(
            lambda: self.storage.put_bytes(where, blob),
            f"upload of chunk {cid[:16]}",
            self.retry_delays,
        )
        with self._lock:
            self.new += 1
            self.stored_bytes += len(blob)
            self.compressed_bytes += len(compressed)
            self.sizes[cid] = len(blob)

    def write(self, source: BinaryIO) -> ChunkList:
        """Chunk source to its end; return the list once every chunk is stored."""
        stream, total, order = self.key.stream_hmac(), 0, []
        seen: set[str] = set()
        pending: deque[Future] = deque()
        with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="chunks") as pool:
            try:
                for piece in self.key.chunker().cut_stream(source):
                    data = bytes(piece.data)
                    cid = self.key.chunk_id(data)
                    stream.update(data)
                    total += len(data)
                    order.append((cid, len(data)))
                    if cid in seen:  # repeated within this stream: stored (or reused) once
                        with self._lock:
                            self.reused += 1
                        continue
                    seen.add(cid)
                    while len(pending) >= IN_FLIGHT:
                        pending.popleft().result()
                    pending.append(pool.submit(self._store_one, cid, data))
                    if self.on_chunk:
                        self.on_chunk(cid)
                while pending:
                    pending.popleft().result()
            finally:
                for future in pending:
                    future.cancel()
        return ChunkList(
            key_id=self.key.key_id,
            chunker=CHUNKER,
            raw_bytes=total,
            stream_hmac=stream.hexdigest(),
            new=self.new,
            reused=self.reused,
            new_stored_bytes=self.stored_bytes,
            order=order,
            stored_sizes=[self.sizes[cid] for cid, _ in order],
        )

    def missing(self, chunks: ChunkList) -> list[str]:
        """The chunks of the list not in chunks/ (one HEAD each, IN_FLIGHT at once) after
        copying back those a prune set aside: the ones that are gone."""
        ids = list(dict.fromkeys(cid for cid, _ in chunks.order))
        with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="chunk-heads") as pool:
            there = pool.map(lambda cid: self.storage.exists(chunk_key(self.rset, cid)), ids)
            absent = [cid for cid, found in zip(ids, there, strict=True) if not found]
        gone, marks = [], fossil_marks(self.storage) if absent else []
        for cid in absent:
            blob = find_fossil(self.storage, marks, self.rset, cid)
            if blob is None:
                gone.append(cid)
            else:
                self.storage.put_bytes(chunk_key(self.rset, cid), blob)
        return gone

    def fence(self, chunks: ChunkList, fence_seconds: float) -> None:
        """Just before the manifest: a backup that took longer than the fence since it
        first asked for chunks makes sure each is still in chunks/ (a prune may have set
        it aside: it is copied back), else fails without a manifest."""
        if boottime() - self.started <= fence_seconds:
            return
        if gone := self.missing(chunks):
            raise IntegrityError(
                f"chunk {gone[0]} vanished during the backup (a prune collected it while the "
                "backup ran longer than dedup_fence_hours): no manifest was written; run "
                "the backup again"
            )
        self.started = boottime()

    def confirm(self, chunks: ChunkList, what: str) -> None:
        """After the manifest: every chunk it names is in chunks/ (those a prune set aside
        are copied back), else IntegrityError naming them: no exit 0 for a backup that
        cannot be restored."""
        if gone := self.missing(chunks):
            raise IntegrityError(
                f"{what} was stored, but {len(gone)} of its chunks are no longer in the "
                f"storage ({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''}): a prune "
                "or someone else removed them while the backup ran; it cannot be restored. "
                "Run the backup again (it stores them again) and `dbbackup check`"
            )


def recorded_sizes(
    storage: BackupStorage, server: str, database: str, key_id: str, rset: str
) -> dict[str, int]:
    """Chunk id -> stored size, as the newest trusted backup of the series recorded them
    (the same dedup key and recipients); {} when it recorded none."""
    keys = storage.list_keys(series_prefix(server, database, "database"))
    verifiers = storage.manifest_verifiers()
    for key in sorted((k for k in keys if parse_manifest_key(k)), reverse=True):
        try:
            entry = read_manifest(storage, key, verifiers)
        except ObjectNotFound:  # pruned since the listing
            continue
        m = entry.manifest
        if not entry.usable() or m is None:
            continue
        if m.chunks is None or m.chunks.stored_sizes is None:
            return {}
        if m.chunks.key_id != key_id or recipient_set(m.recipients) != rset:
            return {}
        return {
            cid: size for (cid, _), size in zip(m.chunks.order, m.chunks.stored_sizes, strict=True)
        }
    return {}


def move_chunk(storage: BackupStorage, source: str, target: str) -> None:
    """Copy a stored chunk, then delete the source (every store accepts this; a kill in
    between leaves two copies, never none)."""
    storage.put_bytes(target, storage.get_bytes(source, MAX_STORED))
    storage.delete(source)


def fossil_marks(storage: BackupStorage) -> list[str]:
    """The collections in progress, whose fossils readers may need."""
    return [
        key.rsplit("/", 1)[-1].removesuffix(".json")
        for key in storage.list_keys(GC)
        if key.endswith(".json")
    ]


def find_fossil(storage: BackupStorage, marks: list[str], rset: str, cid: str) -> bytes | None:
    """A chunk set aside by one of the marks, else by a mark already swept (an orphan that
    the next prune puts back: tasks/chunk_gc.py), or None."""
    for mark in marks:
        with contextlib.suppress(ObjectNotFound):
            return storage.get_bytes(fossil_key(mark, rset, cid), MAX_STORED)
    tail = "/" + chunk_key(rset, cid).removeprefix(CHUNKS + "/")
    for key in storage.list_keys(FOSSILS):
        if key.endswith(tail) and key.split("/")[2] not in marks:
            with contextlib.suppress(ObjectNotFound):
                return storage.get_bytes(key, MAX_STORED)
    return None


def fetch_chunk(
    storage: BackupStorage, rset: str, cid: str, marks: list[str] | None, *, checked: bool = False
) -> bytes:
    """A stored chunk from chunks/, else from a prune's fossils; ObjectNotFound if neither.
    checked: each read confirmed against the store's checksum (ReadFault)."""
    read = storage.get_checked if checked else storage.get_bytes
    try:
        return read(chunk_key(rset, cid), MAX_STORED)
    except ObjectNotFound:
        for mark in fossil_marks(storage) if marks is None else marks:
            with contextlib.suppress(ObjectNotFound):
                return read(fossil_key(mark, rset, cid), MAX_STORED)
        raise


def fetch_checked(storage: BackupStorage, rset: str, cid: str, marks: list[str] | None) -> bytes:
    """fetch_chunk, each read checked against the store's checksum, up to READS tries;
    ReadFault when none matched (the chunk is damaged on the way, not in the store)."""
    for attempt in range(1, READS):
        try:
            return fetch_chunk(storage, rset, cid, marks, checked=True)
        except ReadFault as exc:
            run_logger().warning("read %d of chunk %s: %s", attempt, cid, exc)
    return fetch_chunk(storage, rset, cid, marks, checked=True)


def open_chunk(
    blob: bytes, cid: str, length: int, key: DedupKey, identities: list[pyrage.x25519.Identity]
) -> bytes:
    """The plaintext of a stored chunk, checked against its id and length (IntegrityError)."""
    try:
        data = zstandard.ZstdDecompressor().decompress(
            pyrage.decrypt(blob, identities), max_output_size=max(length, 1)
        )
    except (pyrage.DecryptError, zstandard.ZstdError) as exc:
        raise IntegrityError(f"chunk {cid} is damaged: {exc}") from None
    if len(data) != length or not hmac.compare_digest(key.chunk_id(data), cid):
        raise IntegrityError(f"chunk {cid} is damaged: its content does not match its id")
    return data


class ChunkReader(io.RawIOBase):
    """The plaintext stream of a chunked backup, chunk by chunk in order, each checked;
    IN_FLIGHT chunks are fetched ahead. At the end the length and the keyed hash of the
    whole stream are checked too. Errors name the chunk and the backup."""

    def __init__(
        self,
        storage: BackupStorage,
        manifest: Manifest,
        key: DedupKey,
        identities: list[pyrage.x25519.Identity],
        what: str,
    ) -> None:
        assert manifest.chunks is not None
        self.storage, self.chunks, self.key = storage, manifest.chunks, key
        self.identities, self.what = identities, what
        self.rset = recipient_set(manifest.recipients)
        self._marks: list[str] | None = None
        self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="fetch")
        self._ahead: deque[tuple[str, int, Future]] = deque()
        self._next = 0
        self._buffer = memoryview(b"")
        self._stream = key.stream_hmac()
        self._total = 0

    def readable(self) -> bool:
        return True

    def _fetch(self, cid: str, checked: bool = False) -> bytes:
        try:
            if checked:
                return fetch_checked(self.storage, self.rset, cid, self._marks)
            return fetch_chunk(self.storage, self.rset, cid, self._marks)
        except ReadFault as exc:
            raise ReadFault(f"{self.what}: {exc}") from None
        except ObjectNotFound:
            raise IntegrityError(
                f"{self.what}: chunk {cid} is missing from the storage (deleted by hand, or "
                "by a prune of another version?); restore an older backup and run `dbbackup "
                "check`"
            ) from None

    def _refill(self) -> bool:
        while len(self._ahead) < IN_FLIGHT and self._next < len(self.chunks.order):
            cid, length = self.chunks.order[self._next]
            self._ahead.append((cid, length, self._pool.submit(self._fetch, cid)))
            self._next += 1
        if not self._ahead:
            self._finish()
            return False
        cid, length, future = self._ahead.popleft()
        try:
            try:
                data = open_chunk(future.result(), cid, length, self.key, self.identities)
            except IntegrityError:  # damaged in the store, or on its way? read it again
                data = open_chunk(self._fetch(cid, True), cid, length, self.key, self.identities)
        except IntegrityError as exc:
            raise IntegrityError(f"{self.what}: {exc}") from None
        self._stream.update(data)
        self._total += len(data)
        self._buffer = memoryview(data)
        return True

    def _finish(self) -> None:
        if self._total != self.chunks.raw_bytes or not hmac.compare_digest(
            self._stream.hexdigest(), self.chunks.stream_hmac
        ):
            raise IntegrityError(
                f"{self.what}: the chunks do not add up to the stream the manifest describes"
            )

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if not self._buffer and not self._refill():
            return 0
        n = min(len(buffer), len(self._buffer))
        buffer[:n] = self._buffer[:n]
        self._buffer = self._buffer[n:]
        return n

    def close(self) -> None:
        for _, _, future in self._ahead:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


def check_identity(manifest: Manifest, identities: list[pyrage.x25519.Identity], what: str) -> None:
    """AuthError unless one identity belongs to the backup's recipients (before any read)."""
    mine = [recipient_fingerprint(str(i.to_public())) for i in identities]
    if not set(mine) & set(manifest.recipients):
        raise AuthError(
            f"{what} cannot be decrypted with this identity (recipient {', '.join(mine)}); it "
            f"was encrypted to {', '.join(manifest.recipients)}. Use the matching identity file."
        )


@contextlib.contextmanager
def chunk_stream(
    storage: BackupStorage,
    manifest: Manifest,
    identities: list[pyrage.x25519.Identity],
    what: str,
) -> Iterator[ChunkReader]:
    """The checked plaintext of a chunked backup, for restore and verify."""
    assert manifest.chunks is not None
    check_identity(manifest, identities, what)
    key = reader_key(storage, manifest.chunks, recipient_set(manifest.recipients), identities)
    reader = ChunkReader(storage, manifest, key, identities, what)
    try:
        yield reader
    finally:
        reader.close()
