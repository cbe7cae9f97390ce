"""S3 faults beyond tests/faulty_s3.py: reads of dump data corrupted in transit (a flaky
proxy or NIC) and a store that comes back after a short outage, on top of its corrupted
and refused writes."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from tests.faulty_s3 import FaultyS3


class _FlipBody:
    """A response stream whose second write (the body; the first is the headers) gets one
    byte inverted in its middle."""

    def __init__(self, stream) -> None:  # noqa: ANN001
        self.stream, self.writes = stream, 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 2 and data:
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        return self.stream.write(data)

    def flush(self) -> None:
        self.stream.flush()


class FaultyS3Reads(FaultyS3):
    """FaultyS3 that also corrupts the body of `read_flips` GETs of dump data."""

    def __init__(self, upstream: str) -> None:
        self.outage: int | None = None  # once down, PUTs refused before it is back (None: never)
        self.read_flips = 0
        self.read_flipped: list[str] = []
        self._read_lock = threading.Lock()
        super().__init__(upstream)

    def reset(self) -> None:
        """No fault left armed."""
        self.flips = self.read_flips = 0
        self.puts_before_down = self.outage = None

    def _take_read_flip(self, method: str, path: str) -> bool:
        key = urlsplit(path).path
        if method != "GET" or not (key.endswith(".age") or "/_dedup/chunks/" in key):
            return False
        with self._read_lock:
            if self.read_flips <= 0:
                return False
            self.read_flips -= 1
            self.read_flipped.append(path)
            return True

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy, base = self, super()._handler()

        class Handler(base):
            def _down(self) -> bool:
                """Down as in FaultyS3, and back up after `outage` refused PUTs."""
                down = super()._down()
                with proxy._read_lock:
                    if down and proxy.outage is not None:
                        proxy.outage -= 1
                        if proxy.outage <= 0:
                            proxy.puts_before_down = None
                return down

            def _forward(self) -> None:
                if not proxy._take_read_flip(self.command, self.path):
                    super()._forward()
                    return
                real, self.wfile = self.wfile, _FlipBody(self.wfile)
                try:
                    super()._forward()
                finally:
                    self.wfile = real

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
