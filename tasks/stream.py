"""Stream plumbing: dump bytes -> zstd -> age -> hashed file, and back again.

Every step works on fixed-size chunks, so memory stays flat whatever the size
of the database. Plaintext exists only inside these pipes.
"""

from __future__ import annotations

import contextvars
import ctypes
import hashlib
import io
import queue
import threading
from collections.abc import Callable, Sequence
from typing import BinaryIO, Protocol

import pyrage
import zstandard
from prefect_dbbackup.blocks.errors import IntegrityError
from prefect_dbbackup.tasks.manifest import StreamStats

READ_SIZE = 1 << 20
READ_AHEAD = 16  # blocks of READ_SIZE a ReadAhead holds: 16 MiB read ahead at most


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class CountingReader(io.RawIOBase):
    """A readable that counts the bytes passing through it and can report progress.

    check, if given, runs after every read and raises to end the stream (a stop): a
    source that ends because its client was killed must not look like a complete one.
    The exception it raised is kept in `stopped`.
    """

    def __init__(
        self,
        inner: BinaryIO,
        on_progress: Callable[[int], None] | None = None,
        every: int = 256 << 20,
        tap: Callable[[memoryview], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> None:
        self.inner = inner
        self.count = 0
        self.stopped: BaseException | None = None
        self._tap = tap
        self._check = check
        self._on_progress = on_progress
        self._every = every
        self._next_report = every

    def readable(self) -> bool:
        return True

    def _stop_if_told(self) -> None:
        if self._check is not None:
            try:
                self._check()
            except BaseException as exc:
                self.stopped = exc
                raise

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            n = self.inner.readinto(buffer) or 0
        except BaseException:
            self._stop_if_told()  # a read that failed because of a stop (its pipe closed)
            raise
        self._stop_if_told()
        self.count += n
        if self._tap and n:
            self._tap(memoryview(buffer)[:n])
        if self._on_progress and self.count >= self._next_report:
            self._next_report += self._every
            self._on_progress(self.count)
        return n


class ReadAhead(io.RawIOBase):
    """source read by a thread of its own, up to `blocks` blocks of READ_SIZE ahead of the
    reader: the process writing source (a dump client) does not wait while the reader
    cuts or hashes what it read.

    Memory stays at blocks x READ_SIZE: a block is read into again only once the reader
    took all of it. An error of the reading thread is raised by the next read. close()
    lets the thread end before its next block; join() waits for it: a thread blocked on a
    silent pipe ends once the writer is gone, so join after the client was stopped.
    """

    def __init__(self, source: BinaryIO, blocks: int = READ_AHEAD, size: int = READ_SIZE) -> None:
        self._source = source
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(blocks):
            self._free.put(bytearray(size))
        self._full: queue.SimpleQueue[tuple[bytearray, int] | BaseException] = queue.SimpleQueue()
        self._closing = threading.Event()
        self._held: bytearray | None = None  # the block being read from, not free yet
        self._pending = memoryview(b"")
        self._ended = False
        context = contextvars.copy_context()  # the run's logger, for what source does
        self._thread = threading.Thread(
            target=context.run, args=(self._fill,), name="read-ahead", daemon=True
        )
        self._thread.start()

    def _fill(self) -> None:
        try:
            while not self._closing.is_set():
                block = self._free.get()
                if self._closing.is_set():
                    return
                n = self._source.readinto(block) or 0
                self._full.put((block, n))
                if not n:
                    return
        except BaseException as exc:
            self._full.put(exc)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if not self._pending:
            if self._ended:
                return 0
            if self._held is not None:
                self._free.put(self._held)
                self._held = None
            item = self._full.get()
            if isinstance(item, BaseException):
                self._ended = True
                raise item
            block, n = item
            self._ended = not n
            self._held, self._pending = block, memoryview(block)[:n]
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        """The thread reads no block after the one it is reading (returns at once); a read
        after close, from a reader left running after a stop, ends the stream."""
        self._closing.set()
        self._free.put(bytearray())  # wakes a thread waiting for a free block
        self._full.put((bytearray(), 0))
        self._pending = memoryview(b"")
        super().close()

    def join(self) -> None:
        """Wait for the reading thread to end (close() first)."""
        self._thread.join()


class CompressingReader(io.RawIOBase):
    """The zstd frame of source, read on demand.

    Not zstandard's stream_reader: that one holds the GIL while it waits for its worker
    threads, up to tens of seconds per job at level 19, and every other thread of the
    run (a stop, the logs, the API) stands still. compressobj lets go of it.
    """

    def __init__(self, source: BinaryIO, compressor: zstandard.ZstdCompressor) -> None:
        self._source = source
        self._compressing = compressor.compressobj()
        self._pending = memoryview(b"")
        self._ended = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending and not self._ended:
            block = self._source.read(READ_SIZE)
            self._ended = not block
            out = self._compressing.compress(block) if block else self._compressing.flush()
            self._pending = memoryview(out)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class TrailedReader(io.RawIOBase):
    """Reads inner to its end, then the bytes of trailer."""

    def __init__(self, inner: BinaryIO, trailer: bytes) -> None:
        self.inner = inner
        self._trailer = io.BytesIO(trailer)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        return self.inner.readinto(buffer) or self._trailer.readinto(buffer)


class HashingWriter:
    """A writer that hashes (sha256) and counts everything written through it."""

    def __init__(self, inner: Writable) -> None:
        self.inner = inner
        self.count = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.count += len(data)
        self.inner.write(data)
        return len(data)

    def flush(self) -> None:
        pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def encrypt_stream(
    source: BinaryIO,
    dest: Writable,
    recipients: Sequence[pyrage.x25519.Recipient],
    *,
    level: int = 3,
    threads: int = 2,
    on_progress: Callable[[int], None] | None = None,
    tap: Callable[[memoryview], None] | None = None,
    check: Callable[[], None] | None = None,
) -> StreamStats:
    """Compress (zstd) and encrypt (age) source into dest; return sizes and the sha256.

    tap, if given, sees every plaintext chunk on its way (e.g. to count rows); check runs
    after every read of source and raises to stop the stream (see CountingReader)."""
    if not recipients:
        raise ValueError("refusing to write a backup without an age recipient")
    raw = CountingReader(source, on_progress, tap=tap, check=check)
    compressor = zstandard.ZstdCompressor(level=level, threads=threads, write_checksum=True)
    compressed = CountingReader(CompressingReader(raw, compressor))
    out = HashingWriter(dest)
    try:
        pyrage.encrypt_io(compressed, out, list(recipients))
    except BaseException:
        if raw.stopped is None:
            raise
        _never_free(compressor)
        raise raw.stopped from None  # age wraps it in an EncryptError
    return StreamStats(
        raw_bytes=raw.count,
        compressed_bytes=compressed.count,
        stored_bytes=out.count,
        sha256=out.hexdigest(),
    )


def _never_free(compressor: zstandard.ZstdCompressor) -> None:
    """Leak a stopped stream's compressor on purpose: freeing it waits, with the GIL held,
    until its worker threads finish the jobs they have (tens of seconds at level 19),
    which would freeze every thread of the run. Process exit ends those workers."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(compressor))


class _LazyDecompressingWriter:
    """Receives decrypted bytes; opens the sink only when the first byte arrives.

    age checks the identity and the header before any byte is written, so a
    wrong key fails before the sink (a restore target) is touched at all.
    """

    def __init__(self, open_sink: Callable[[], Writable]) -> None:
        self._open_sink = open_sink
        self._writer: zstandard.ZstdDecompressionWriter | None = None
        self.count = 0

    def write(self, data: bytes) -> int:
        if self._writer is None:
            sink = self._open_sink()
            self._writer = zstandard.ZstdDecompressor().stream_writer(
                sink, write_size=READ_SIZE, closefd=False, write_return_read=True
            )
        self._writer.write(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()


def copy_lazily(source: BinaryIO, open_sink: Callable[[], Writable]) -> int:
    """Copy a plaintext stream into the sink, opened only once the first bytes are read (a
    source that fails at once never touches the sink); return the bytes copied."""
    sink, count = None, 0
    while block := source.read(READ_SIZE):
        if sink is None:
            sink = open_sink()
        sink.write(block)
        count += len(block)
    if sink is None:  # an empty stream: the sink still gets its (empty) input
        open_sink()
    return count


def decrypt_stream(
    source: BinaryIO,
    open_sink: Callable[[], Writable],
    identities: Sequence[pyrage.x25519.Identity],
) -> int:
    """Decrypt (age) and decompress (zstd) source into the sink; return compressed bytes.

    Raises pyrage.DecryptError for a wrong identity (sink never opened) and
    OSError for a corrupted or truncated stream.
    """
    writer = _LazyDecompressingWriter(open_sink)
    pyrage.decrypt_io(source, writer, list(identities))
    writer.flush()
    return writer.count


class ReplacingWriter:
    """Replaces every occurrence of a fixed byte string on its way to inner.

    Holds back only len(old) - 1 bytes between writes, so memory stays flat
    whatever the line lengths. Call finish() once at the end.
    """

    def __init__(self, inner: Writable, old: bytes, new: bytes) -> None:
        if not old:
            raise ValueError("nothing to replace")
        self.inner, self.old, self.new = inner, old, new
        self._tail = b""

    def write(self, data: bytes) -> int:
        buffer = self._tail + bytes(data)
        out, pos = [], 0
        while (hit := buffer.find(self.old, pos)) != -1:
            out += [buffer[pos:hit], self.new]
            pos = hit + len(self.old)
        # what is left may end with the start of a match that the next write completes
        safe = max(pos, len(buffer) - len(self.old) + 1)
        out.append(buffer[pos:safe])
        self._tail = buffer[safe:]
        self.inner.write(b"".join(out))
        return len(data)

    def flush(self) -> None:
        pass

    def finish(self) -> None:
        """Write out what is held back (too short to hold a match)."""
        self.inner.write(self._tail)
        self._tail = b""


def check_stored(f: BinaryIO, stats: StreamStats, what: str, source: str, hint: str = "") -> None:
    """IntegrityError unless the stored object open in f has the size and sha256 that
    `source` (its manifest, its archive run) records; f is left at its start."""
    size = f.seek(0, 2)
    if size != stats.stored_bytes:
        raise IntegrityError(
            f"{what} is truncated or damaged: {size} bytes stored, {source} says "
            f"{stats.stored_bytes}{hint}"
        )
    f.seek(0)
    if file_sha256(f) != stats.sha256:
        raise IntegrityError(f"{what} is corrupted: its sha256 does not match {source}{hint}")
    f.seek(0)


def file_sha256(f: BinaryIO) -> str:
    """sha256 of a whole file object, read in chunks from its current position."""
    return hashlib.file_digest(f, "sha256").hexdigest()
