"""Writing a chunked backup: `ChunkWriter` cuts a dump stream into chunks, compresses,
encrypts and stores the ones the storage lacks, and makes sure before and after the
manifest that every chunk it names is still stored (docs/dedup.md)."""

from __future__ import annotations

import hmac
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

import pyrage
import zstandard
from prefect_dbbackup.blocks.encryption import AgeEncryption
from prefect_dbbackup.blocks.errors import IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound
from prefect_dbbackup.tasks.catalog import read_manifest
from prefect_dbbackup.tasks.dedup.keys import DedupKey
from prefect_dbbackup.tasks.dedup.layout import (
    CHUNKER,
    HASH_AHEAD,
    IN_FLIGHT,
    boottime,
    chunk_key,
    min_stored,
    recipient_set,
)
from prefect_dbbackup.tasks.dedup.reader import find_fossil, fossil_marks
from prefect_dbbackup.tasks.layout import parse_manifest_key, series_prefix
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import ChunkList
from prefect_dbbackup.tasks.retrying import retry_transient


class ChunkWriter:
    """Cuts a plaintext stream into chunks and stores the ones the storage lacks.

    Chunks already stored are only named: nothing is compressed, encrypted or sent for
    them. At most HASH_AHEAD chunks wait for their id and IN_FLIGHT are checked or
    uploaded at once; the chunking waits for them, so memory stays flat
    ((HASH_AHEAD + IN_FLIGHT) x MAX_SIZE plaintext, besides the chunker's buffer)."""

    def __init__(
        self,
        storage: BackupStorage,
        key: DedupKey,
        encryption: AgeEncryption,
        *,
        level: int,
        retry_delays: tuple[float, ...],
        series: tuple[str, str] | None = None,
    ) -> None:
        self.storage, self.key, self.level = storage, key, level
        self.recipients = encryption.recipient_keys()
        self.rset = recipient_set(encryption.fingerprints())
        self.retry_delays = retry_delays
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

    def _hash(self, stream: hmac.HMAC, data: bytes) -> str:
        """The chunk's id; the stream HMAC updated with it (in the hashing thread, in stream
        order, right after the id while the chunk is in the CPU's cache)."""
        cid = self.key.chunk_id(data)
        stream.update(data)
        return cid

    def write(self, source: BinaryIO) -> ChunkList:
        """Chunk source to its end; return the list once every chunk is stored.

        Three stages overlap: this thread cuts, one thread hashes (HASH_AHEAD chunks at
        most wait for it), IN_FLIGHT threads check and store. hashlib lets go of the GIL,
        so the cutting, and the read of source, go on while a chunk is hashed."""
        stream, order = self.key.stream_hmac(), []
        seen: set[str] = set()
        hashing: deque[tuple[Future[str], bytes]] = deque()
        pending: deque[Future[None]] = deque()

        def take(pool: ThreadPoolExecutor) -> None:
            """The oldest hashed chunk named in the list; stored unless seen before."""
            future, data = hashing.popleft()
            cid = future.result()
            order.append((cid, len(data)))
            if cid in seen:  # repeated within this stream: stored (or reused) once
                with self._lock:
                    self.reused += 1
                return
            seen.add(cid)
            while len(pending) >= IN_FLIGHT:
                pending.popleft().result()
            pending.append(pool.submit(self._store_one, cid, data))

        with (
            ThreadPoolExecutor(1, thread_name_prefix="chunk-ids") as hasher,
            ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="chunks") as pool,
        ):
            try:
                for piece in self.key.chunker().cut_stream(source):
                    data = bytes(piece.data)
                    hashing.append((hasher.submit(self._hash, stream, data), data))
                    if len(hashing) >= HASH_AHEAD:
                        take(pool)
                while hashing:
                    take(pool)
                while pending:
                    pending.popleft().result()
            finally:
                for future in (*(f for f, _ in hashing), *pending):
                    future.cancel()
        return ChunkList(
            key_id=self.key.key_id,
            chunker=CHUNKER,
            raw_bytes=sum(n for _, n in order),
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
