"""Signals seen the moment they arrive, whichever thread the kernel gave them to.

CPython runs a Python signal handler only in the main thread, between bytecodes. A
process-directed signal (kill, Ctrl-C) goes to any thread that does not block it; when a
busy worker thread takes it, the main thread, asleep in a wait without a timeout (Prefect's
`as_completed`, a future's `result()`), is never woken, and the handler runs only when
that wait ends on its own: after the dump it was meant to stop. On two loaded cores this
made Ctrl-C of a backup take 30 to 60 s.

The C-level handler, which runs in whatever thread took the signal, writes the signal's
number to the wakeup fd (`signal.set_wakeup_fd`). A SignalWatcher owns that fd: a thread
of its own reads it and calls back once per signal at once, in any state of the main thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable


class SignalWatcher:
    """While open: on_signal(signum) runs in the watcher's thread once per delivered signal
    that has a Python handler. Main thread only. The wakeup fd it replaces (asyncio's, for
    one) still gets every byte, and is put back on close."""

    def __init__(self, on_signal: Callable[[int], None]) -> None:
        self._on_signal = on_signal
        self._read, self._write = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        os.set_blocking(self._read, True)
        self._previous = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="signal-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while data := os.read(self._read, 64):
            if self._previous != -1:
                with contextlib.suppress(OSError):  # best effort, as the C handler's write
                    os.write(self._previous, data)
            for signum in data:
                self._on_signal(signum)

    def close(self) -> None:
        """Put the previous wakeup fd back, then handle what already arrived, then end."""
        signal.set_wakeup_fd(self._previous)
        os.close(self._write)  # the watcher reads the bytes left, then the end of the pipe
        self._thread.join()
        os.close(self._read)
