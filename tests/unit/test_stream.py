"""The dump stream: zstd + age round trip, byte counts, and failures that must be loud."""

from __future__ import annotations

import hashlib
import io
import os

import pyrage
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prefect_dbbackup.tasks.stream import ReplacingWriter, decrypt_stream, encrypt_stream


@pytest.fixture(scope="module")
def keys():
    identity = pyrage.x25519.Identity.generate()
    return identity, identity.to_public()


def _payload(size: int) -> bytes:
    # half compressible text, half random bytes
    text = b"".join(b"row %d,some text,%d\n" % (i, i * 7) for i in range(size // 40))
    return text + os.urandom(size - len(text))


def _encrypt(data: bytes, recipient) -> tuple[bytes, object]:
    out = io.BytesIO()
    stats = encrypt_stream(io.BytesIO(data), out, [recipient], level=3, threads=2)
    return out.getvalue(), stats


def _decrypt(blob: bytes, identity) -> bytes:
    sink = io.BytesIO()
    decrypt_stream(io.BytesIO(blob), lambda: sink, [identity])
    return sink.getvalue()


@pytest.mark.parametrize("size", [0, 1, 65536, 3_000_000])
def test_round_trip_restores_the_exact_bytes(keys, size):
    identity, recipient = keys
    data = _payload(size)
    blob, stats = _encrypt(data, recipient)
    assert _decrypt(blob, identity) == data
    assert stats.raw_bytes == len(data)
    assert stats.stored_bytes == len(blob)
    assert stats.sha256 == hashlib.sha256(blob).hexdigest()
    assert blob.startswith(b"age-encryption.org/v1\n")


def test_compression_happens_before_encryption(keys):
    _, recipient = keys
    data = b"the same line again\n" * 200_000
    blob, stats = _encrypt(data, recipient)
    assert stats.compressed_bytes < len(data) / 50
    assert len(blob) < len(data) / 50


def test_no_recipient_fails_closed():
    with pytest.raises(ValueError, match="without an age recipient"):
        encrypt_stream(io.BytesIO(b"secret rows"), io.BytesIO(), [])


def test_wrong_identity_never_opens_the_sink(keys):
    _, recipient = keys
    blob, _ = _encrypt(b"payload" * 1000, recipient)
    opened = []
    with pytest.raises(pyrage.DecryptError):
        decrypt_stream(
            io.BytesIO(blob),
            lambda: opened.append(1) or io.BytesIO(),
            [pyrage.x25519.Identity.generate()],
        )
    assert opened == []


def test_flipped_byte_is_detected(keys):
    identity, recipient = keys
    blob = bytearray(_encrypt(_payload(500_000), recipient)[0])
    blob[len(blob) // 2] ^= 0x01
    with pytest.raises(OSError):
        _decrypt(bytes(blob), identity)


def test_truncated_stream_is_detected(keys):
    identity, recipient = keys
    blob = _encrypt(_payload(500_000), recipient)[0]
    with pytest.raises(OSError):
        _decrypt(blob[: len(blob) - 100], identity)


def test_progress_is_reported_while_streaming(keys):
    _, recipient = keys
    seen = []
    encrypt_stream(
        io.BytesIO(os.urandom(3 << 20)),
        io.BytesIO(),
        [recipient],
        on_progress=seen.append,
    )
    assert seen == []  # default reporting step is 256 MiB
    from prefect_dbbackup.tasks import stream

    reader = stream.CountingReader(io.BytesIO(b"x" * (5 << 20)), seen.append, every=1 << 20)
    while reader.read(1 << 16):
        pass
    assert seen[:3] == [1 << 20, 2 << 20, 3 << 20]


@given(
    st.lists(st.sampled_from([b"ab", b"xab", b"a", b"b", b"\n", b"zz", b"abab"]), max_size=40),
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=10),
)
def test_replacing_writer_equals_a_whole_stream_replace(pieces, sizes):
    data = b"".join(pieces)
    sink = io.BytesIO()
    writer = ReplacingWriter(sink, b"aba", b"<X>")
    pos, i = 0, 0
    while pos < len(data):
        step = sizes[i % len(sizes)]
        writer.write(data[pos : pos + step])
        pos, i = pos + step, i + 1
    writer.finish()
    assert sink.getvalue() == data.replace(b"aba", b"<X>")
