"""Run a dump or restore client as a child process with a hard time limit.

The child gets its own process group so a timeout or an error kills it and
anything it spawned. stderr goes to a file (no pipe deadlock) and its tail,
with secrets redacted, becomes the error message.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from types import TracebackType

from prefect_dbbackup.tasks.errors import ToolFailed, redact

STDERR_TAIL = 4000
# client errors that mean the network or server went away: a later attempt may succeed
CONNECTION_LOST = (
    "server closed the connection unexpectedly",
    "could not connect to server",
    "lost connection to",
    "can't connect to",
    "server has gone away",
    "connection refused",
    "connection timed out",
    # PostgreSQL: pg_terminate_backend, or a server shutting down
    "terminating connection due to administrator command",
)


class ToolProcess:
    """Context manager around one client process (pg_dump, mariadb, ...)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        timeout: float | None = None,
        stdin: bool = False,
        stdout: bool = False,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self.argv = list(argv)
        self.name = os.path.basename(self.argv[0])
        self._env = env
        self._timeout = timeout
        self._want_stdin = stdin
        self._want_stdout = stdout
        self._secrets = list(secrets)
        self.timed_out = False
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE if self._want_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self._want_stdout else subprocess.DEVNULL,
                stderr=self._stderr,
                env=self._env,
                start_new_session=True,
            )
        except OSError as exc:
            self._stderr.close()
            raise ToolFailed(f"could not start {self.name}: {exc}") from exc
        self._timer = None
        if self._timeout:
            self._timer = threading.Timer(self._timeout, self._on_timeout)
            self._timer.daemon = True
            self._timer.start()
        return self.proc

    def _on_timeout(self) -> None:
        self.timed_out = True
        self.kill()

    def kill(self) -> None:
        """Kill the child's whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self.proc is not None
        tool_died = exc is not None and self._exited_with_error(exc)
        if exc is not None and not tool_died:
            self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        returncode = self.proc.wait()
        if self._timer is not None:
            self._timer.cancel()
        stderr = self._read_stderr()
        if exc is not None and not tool_died:
            return
        if self.timed_out:
            raise ToolFailed(
                f"{self.name} exceeded its time limit of {self._timeout:.0f}s and was killed"
            ) from exc
        if returncode != 0:
            how = (
                f"was killed by signal {-returncode}" if returncode < 0 else f"exited {returncode}"
            )
            error = ToolFailed(f"{self.name} {how}: {stderr or '(no error output)'}")
            low = stderr.lower()
            error.retryable = "authentication" not in low and any(m in low for m in CONNECTION_LOST)
            raise error from exc

    def _exited_with_error(self, exc: BaseException) -> bool:
        """True when the child failed first and caused exc (e.g. a broken pipe)."""
        assert self.proc is not None
        if isinstance(exc, OSError):
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=2)
        return self.timed_out or self.proc.poll() not in (None, 0)

    def _read_stderr(self) -> str:
        self._stderr.seek(0, os.SEEK_END)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - STDERR_TAIL))
        text = self._stderr.read().decode("utf-8", "replace").strip()
        self._stderr.close()
        return redact(text, self._secrets)
