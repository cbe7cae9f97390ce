"""ReadAhead (tasks/stream.py): the bytes come through unchanged and in order whatever the
reads look like, an error of its reading thread reaches the reader after the bytes before
it, and its thread ends: at the end of the source, or at close() when the reader stops."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prefect_dbbackup.tasks.stream import ReadAhead

DATA = hashlib.shake_256(b"read ahead").digest(100_000)


class Dribble(io.RawIOBase):
    """DATA in reads of at most `most` bytes (a pipe hands over what it has), then `end`:
    the end of the stream, or an error raised."""

    def __init__(self, most: int, end: BaseException | None = None) -> None:
        self._data, self._most, self._end = io.BytesIO(DATA), most, end

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def, override]
        n = self._data.readinto(memoryview(buffer)[: self._most])
        if not n and self._end is not None:
            raise self._end
        return n


def _read_all(ahead: ReadAhead, size: int, out: bytearray) -> None:
    """Everything ahead gives into out, read into a buffer of `size` bytes."""
    buffer = bytearray(size)
    while n := ahead.readinto(memoryview(buffer)):
        out += buffer[:n]


@settings(max_examples=30, deadline=None)
@given(
    st.integers(64, 30_000),
    st.integers(1, 4),
    st.integers(512, 9000),
    st.integers(1, 20_000),
)
def test_bytes_come_through_in_order(most, blocks, size, read):
    """Few small blocks, recycled many times: a block given back too early would be
    overwritten under the reader."""
    ahead = ReadAhead(Dribble(most), blocks=blocks, size=size)
    out = bytearray()
    _read_all(ahead, read, out)
    assert out == DATA
    ahead.close()
    ahead.join()


def test_an_error_of_the_reading_thread_reaches_the_reader_after_the_bytes_before_it():
    ahead = ReadAhead(Dribble(4096, OSError("pipe gone")), blocks=2, size=1000)
    out = bytearray()
    with pytest.raises(OSError, match="pipe gone"):
        _read_all(ahead, 777, out)
    assert bytes(out) == DATA
    ahead.close()
    ahead.join()


def test_close_ends_a_thread_waiting_for_a_free_block():
    """The reader stops early (a stop, a failed upload): the thread, which filled every
    block and waits for one to come back, ends once closed."""
    ahead = ReadAhead(Dribble(100), blocks=2, size=100)
    assert ahead.readinto(bytearray(10)) == 10
    ahead.close()
    ahead._thread.join(60)  # a guard against a hang, not a timing
    assert not ahead._thread.is_alive()
