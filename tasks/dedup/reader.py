"""Reading a chunked backup: a chunk fetched from chunks/ or a prune's fossils, opened and
checked against its id; `ChunkReader`, the checked plaintext stream of a whole backup, for
restore and verify (docs/dedup.md)."""

from __future__ import annotations

import contextlib
import hmac
import io
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pyrage
import zstandard
from prefect_dbbackup.blocks.encryption import recipient_fingerprint
from prefect_dbbackup.blocks.errors import AuthError, IntegrityError
from prefect_dbbackup.blocks.storage import BackupStorage, ObjectNotFound, ReadFault
from prefect_dbbackup.tasks.dedup.keys import DedupKey, reader_key
from prefect_dbbackup.tasks.dedup.layout import (
    CHUNKS,
    FOSSILS,
    GC,
    IN_FLIGHT,
    MAX_STORED,
    READS,
    chunk_key,
    fossil_key,
    recipient_set,
)
from prefect_dbbackup.tasks.logs import run_logger
from prefect_dbbackup.tasks.manifest import Manifest


def fossil_marks(storage: BackupStorage) -> list[str]:
    """The collections in progress, whose fossils readers may need."""
    return [
        key.rsplit("/", 1)[-1].removesuffix(".json")
        for key in storage.list_keys(GC)
        if key.endswith(".json")
    ]


def find_fossil(storage: BackupStorage, marks: list[str], rset: str, cid: str) -> bytes | None:
    """A chunk set aside by one of the marks, else by a mark already swept (an orphan that
    the next prune puts back: tasks/dedup/gc.py), or None."""
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
