"""Run a dump or restore client as a child process with a hard time limit.

The child gets its own process group so a timeout or an error kills it and
anything it spawned. stderr goes to a file (no pipe deadlock) and its tail,
with secrets redacted, becomes the error message.

Stopping: every live child is registered. `stop_on_signals()` makes the first
SIGINT or SIGTERM kill all of them at once (their own sessions never see the
terminal's Ctrl-C) and mark the process as interrupted, so no new client starts
and the steps fail with `Interrupted` instead of being retried. Each child also
gets PR_SET_PDEATHSIG (through util-linux `setpriv`, else a prctl before exec):
if this process is killed outright (SIGKILL), the kernel kills the client too,
instead of leaving it waiting on a lock.

Environment: a child gets only the allow-listed variables of this process (see
child_env) plus the ones dbbackup sets for it (a credentials file, an application
name): the worker's cloud credentials, API keys and tokens never reach a client.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import ctypes.util
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, wait
from types import FrameType, TracebackType
from typing import TypeVar

from prefect_dbbackup.blocks.errors import Interrupted, ToolFailed, redact
from prefect_dbbackup.blocks.signal_watch import SignalWatcher

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


T = TypeVar("T")
# what a client inherits from this process: finding programs and libraries, the locale,
# time zone, temp dir, and HOME (the user's own client config, e.g. ~/.pgpass, ~/.my.cnf)
INHERITED = frozenset(
    {"PATH", "HOME", "TMPDIR", "TZ", "LANG", "LANGUAGE", "LC_ALL", "LD_LIBRARY_PATH"}
)
INHERITED_PREFIXES = ("LC_",)
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_prctl = _libc.prctl
_live: set[ToolProcess] = set()
_live_lock = threading.Lock()
_stop_reason: str | None = None
_scopes = 0  # nesting depth of stop_on_signals() in the main thread
_before_stop: dict[int, Callable | int] = {}  # handlers replaced after a stop, until the next run
_left: list[threading.Thread] = []  # threads of stopped steps, not waited for


def child_env(own: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: this process's allow-listed variables, then own (the
    variables dbbackup sets for it). Nothing else is inherited."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name in INHERITED or name.startswith(INHERITED_PREFIXES)
    }
    return {**inherited, **(own or {})}


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it when the parent dies (even by SIGKILL)."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@functools.cache
def _setpriv() -> str | None:
    """util-linux setpriv, if it can set the death signal here (util-linux 2.33+)."""
    path = shutil.which("setpriv")
    if path is None:
        return None
    probe = subprocess.run(
        [path, "--pdeathsig", "KILL", "--", "true"], capture_output=True, check=False
    )
    return path if probe.returncode == 0 else None


def _spawn(argv: list[str], env: dict[str, str]) -> tuple[list[str], Callable | None]:
    """The argv and preexec_fn that start a client with PR_SET_PDEATHSIG.

    Through setpriv, Python starts the child with vfork (about 1 ms); a preexec_fn
    forces a fork of the whole worker (5-10 ms under load, per dump). Without
    setpriv, or for a client that cannot be found (Popen then says so), the prctl
    runs in the child before exec.
    """
    setpriv = _setpriv()
    client = shutil.which(argv[0], path=env.get("PATH", os.defpath)) if setpriv else None
    if client is None:
        return argv, _die_with_parent
    return [setpriv, "--pdeathsig", "KILL", "--", client, *argv[1:]], None


def interrupted() -> str | None:
    """Why this process was told to stop (e.g. 'interrupted by SIGINT'), or None."""
    return _stop_reason


def check_not_interrupted(what: str) -> None:
    """Raise Interrupted before a step starts once the run was told to stop."""
    if _stop_reason is not None:
        raise Interrupted(f"{_stop_reason}: {what} was not started")


def check_stopped(what: str) -> None:
    """Raise Interrupted once the run was told to stop: a step under way ends."""
    if _stop_reason is not None:
        raise Interrupted(f"{_stop_reason}: {what} was stopped")


def until_stopped(work: Callable[[], T], what: str) -> T:
    """work()'s result or error; a stop raises Interrupted at once instead.

    work runs in a daemon thread of its own: a stream can sit in a compressor's C code
    for tens of seconds (one zstd job at level 19), out of reach of any stop. The run
    does not wait for it: the thread is left to end by itself (its next read fails,
    see check_stopped) and is never joined, nor waited for at exit.
    """
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(work())
        except BaseException as exc:
            future.set_exception(exc)

    context = contextvars.copy_context()  # the run's logger and settings
    thread = threading.Thread(target=context.run, args=(run,), name=what, daemon=True)
    thread.start()
    while not wait([future], timeout=0.1).done:
        if _stop_reason is not None:
            _left.append(thread)
            check_stopped(what)
    return future.result()


def left_running() -> bool:
    """True while a stopped step's thread (see until_stopped) has not ended yet: the
    process must then end without the interpreter's shutdown, which would wait for it."""
    return any(thread.is_alive() for thread in _left)


def pause(seconds: float) -> None:
    """Sleep, but return early once the run is told to stop."""
    deadline = time.monotonic() + seconds
    while _stop_reason is None and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


def interrupt(reason: str) -> None:
    """Stop the run: no new client starts, and every live client's process group is killed."""
    global _stop_reason
    _stop_reason = _stop_reason or reason
    with _live_lock:
        live = list(_live)
    for proc in live:
        proc.kill()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: the first SIGINT/SIGTERM kills every client and marks the run stopped.

    The run then winds down (no new step starts, nothing is retried) and ends
    Cancelled, whether the signal came from a terminal, systemd or a Prefect worker
    cancelling the run from the UI. A second signal is noted and otherwise ignored, so
    cleanup is never cut short. Outside the main thread, signals cannot be caught:
    nothing changes.

    The outermost scope acts through a SignalWatcher, at once, whichever thread took the
    signal; the main thread's handler acts too when it runs first (one of them acts).
    """
    global _stop_reason, _scopes
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _scopes == 0:
        _stop_reason = None  # a new run in a long-lived process starts unstopped
        for sig, handler in _before_stop.items():  # the handlers a stopped run set aside
            signal.signal(sig, handler)
        _before_stop.clear()
    _scopes += 1
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    watcher = _StopSignals() if _scopes == 1 else None
    for sig in previous:
        signal.signal(sig, _first_signal)
    try:
        yield
    finally:
        _scopes -= 1
        if watcher is not None:
            watcher.close()  # the signals that arrived are handled before what follows
        stopping = _scopes == 0 and _stop_reason is not None
        for sig, handler in previous.items():
            if stopping:  # the process is winding down (reporting, exiting): a second
                _before_stop[sig] = _restorable(handler)  # signal must not cut that short
                signal.signal(sig, _still_stopping)
            else:
                signal.signal(sig, _restorable(handler))


_stopping_lock = threading.Lock()


def _first_signal(signum: int, frame: FrameType | None = None) -> None:
    """The run's first stop signal: say so and stop. Called for the same signal by the main
    thread's handler and by the watcher, whichever runs first; the other does nothing."""
    if not _stopping_lock.acquire(blocking=False):
        return  # the other one is stopping the run right now
    try:
        if _stop_reason is None:
            name = signal.Signals(signum).name
            os.write(2, f"dbbackup: {name}: stopping, killing the dump/restore clients\n".encode())
            interrupt(f"interrupted by {name}")
    finally:
        _stopping_lock.release()


class _StopSignals(SignalWatcher):
    """The watcher of a run: its first SIGINT/SIGTERM stops the run, later ones are noted."""

    def __init__(self) -> None:
        self._seen = 0
        super().__init__(self._on)

    def _on(self, signum: int) -> None:
        if signum not in (signal.SIGINT, signal.SIGTERM):
            return
        self._seen += 1
        if self._seen == 1:
            _first_signal(signum)
        else:
            _still_stopping(signum, None)


def _still_stopping(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"dbbackup: {name} again: still stopping, please wait\n".encode())


def _restorable(handler: Callable | int | None) -> Callable | int:
    return signal.SIG_DFL if handler is None else handler


PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Give a pipe to or from a client 1 MiB instead of Linux's 64 KiB: the dump client
    writes on while the compressor is busy, instead of stalling every 64 KiB. Best effort
    (the system's pipe-max-size or another OS may refuse it)."""
    with contextlib.suppress(OSError, AttributeError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)


class ToolProcess:
    """Context manager around one client process (pg_dump, mariadb, ...).

    env holds only the variables dbbackup sets for it: the rest comes from child_env."""

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
        self._env = child_env(env)
        self._timeout = timeout
        self._want_stdin = stdin
        self._want_stdout = stdout
        self._secrets = list(secrets)
        self.timed_out = False
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        check_not_interrupted(self.name)
        self._stderr = tempfile.TemporaryFile()
        try:
            argv, preexec_fn = _spawn(self.argv, self._env)
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if self._want_stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE if self._want_stdout else subprocess.DEVNULL,
                stderr=self._stderr,
                env=self._env,
                start_new_session=True,
                preexec_fn=preexec_fn,  # at most an async-signal-safe prctl in the child
            )
        except OSError as exc:
            self._stderr.close()
            raise ToolFailed(f"could not start {self.name}: {exc}") from exc
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                _widen(pipe.fileno())
        with _live_lock:
            _live.add(self)
        if _stop_reason is not None:  # a stop that came while this one was starting
            self.kill()
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
        returncode = self.proc.wait()  # still registered: a stop signal kills it here too
        with _live_lock:
            _live.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        stderr = self._read_stderr()
        if exc is not None and not tool_died:
            return
        if _stop_reason is not None and returncode != 0:
            raise Interrupted(f"{_stop_reason}: {self.name} was killed") from exc
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
