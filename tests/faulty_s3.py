"""A fault-injecting S3 reverse proxy for tests: flips one byte in uploaded object data.

It listens on 127.0.0.1 in front of a real S3 server (the SeaweedFS fixture) and passes
every request through unchanged (the Host header too, so SigV4 signatures stay valid),
except that while `flips` is above zero, each PUT of dump data (a multipart part or a
whole object, key ending in `.age`, or a chunk of a deduplicating storage) gets one byte
of its body inverted, and `flips` goes down by one; likewise while `read_flips` is above
zero (`math.inf`: always), each GET of a chunk gets one byte of its reply inverted (the
headers, the store's ETag and checksum, pass unchanged); once `puts_before_down` PUTs have
passed (when it is set), every further PUT is answered 503 as by a store that went down; and
once `parts_before_hold` multipart parts have passed (when it is set), every further part is
held (`holding` is set) until `release` is set, then answered 503: a put provably in the
middle of its upload, which can never complete.
Bodies are read whole: fine for test objects of a few MiB.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "proxy-connection"}


class FaultyS3:
    """`with FaultyS3(upstream) as proxy:` use proxy.endpoint; set proxy.flips = N."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.flips = 0
        self.read_flips: float = 0
        self.read_flipped: list[str] = []  # paths of the GETs whose replies were damaged
        self.puts_before_down: int | None = None
        self.refused = 0  # PUTs answered 503
        self.parts_before_hold: int | None = None
        self.holding = threading.Event()  # a part is held (parts_before_hold)
        self.release = threading.Event()  # held parts are answered 503 once set
        self.flipped: list[str] = []  # paths of the requests that were damaged
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def _damage(self, method: str, path: str, body: bytes) -> bytes:
        """The body to forward: one byte flipped (in the middle) while flips remain."""
        self.requests.append((method, path))
        key = urlsplit(path).path
        if method != "PUT" or not body or not (key.endswith(".age") or "/_dedup/chunks/" in key):
            return body
        with self._lock:
            if self.flips <= 0:
                return body
            self.flips -= 1
            self.flipped.append(path)
        middle = len(body) // 2
        return body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]

    def _damage_reply(self, method: str, path: str, status: int, data: bytes) -> bytes:
        """The reply body to return: one byte flipped while read_flips remain."""
        if method != "GET" or status != 200 or not data or "/_dedup/chunks/" not in path:
            return data
        with self._lock:
            if self.read_flips <= 0:
                return data
            self.read_flips -= 1
            self.read_flipped.append(path)
        middle = len(data) // 2
        return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _down(self) -> bool:
                """Whether this PUT finds the store down (answered 503)."""
                with proxy._lock:
                    if self.command != "PUT" or proxy.puts_before_down is None:
                        return False
                    if proxy.puts_before_down > 0:
                        proxy.puts_before_down -= 1
                        return False
                    proxy.refused += 1
                    return True

            def _held(self) -> bool:
                """Whether this request is a multipart part to hold (parts_before_hold)."""
                with proxy._lock:
                    if self.command != "PUT" or "partNumber=" not in self.path:
                        return False
                    if proxy.parts_before_hold is None:
                        return False
                    if proxy.parts_before_hold > 0:
                        proxy.parts_before_hold -= 1
                        return False
                    return True

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if self._down():
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self._held():
                    proxy.holding.set()
                    proxy.release.wait(120)
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = proxy._damage(self.command, self.path, raw)
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.putrequest(
                        self.command, self.path, skip_host=True, skip_accept_encoding=True
                    )
                    for name, value in self.headers.items():
                        if name.lower() not in HOP_BY_HOP:
                            upstream.putheader(name, value)
                    upstream.endheaders(body if length else None)
                    reply = upstream.getresponse()
                    data = proxy._damage_reply(self.command, self.path, reply.status, reply.read())
                finally:
                    upstream.close()
                self.send_response(reply.status, reply.reason)
                for name, value in reply.getheaders():
                    if name.lower() not in HOP_BY_HOP | {"content-length"}:
                        self.send_header(name, value)
                length = reply.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler
