"""Client processes: failures carry the tool's stderr without secrets; time limits kill."""

from __future__ import annotations

import time

import pytest
from prefect_dbbackup.blocks.errors import ToolFailed
from prefect_dbbackup.blocks.process import PIPE_BYTES, ToolProcess, child_env


def test_non_zero_exit_raises_with_redacted_stderr():
    script = "echo 'FATAL: login hunter2 refused' >&2; exit 3"
    with pytest.raises(ToolFailed) as err, ToolProcess(["sh", "-c", script], secrets=["hunter2"]):
        pass
    assert "exited 3" in str(err.value)
    assert "FATAL: login *** refused" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_output_is_streamed_and_success_is_quiet():
    with ToolProcess(["sh", "-c", "printf abc"], stdout=True) as proc:
        assert proc.stdout.read() == b"abc"


def test_time_limit_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    with (
        pytest.raises(ToolFailed, match="time limit"),
        ToolProcess(["sh", "-c", script], timeout=0.5),
    ):
        pass
    child = int(pidfile.read_text())
    assert _gone_or_zombie(child)


def _gone_or_zombie(pid: int, within: float = 5.0) -> bool:
    """Whether pid is dead (gone, or a zombie nobody reaped) within a few seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_an_error_in_our_code_kills_the_tool_and_propagates():
    with pytest.raises(RuntimeError, match="ours"), ToolProcess(["sleep", "60"]) as proc:
        raise RuntimeError("ours")
    assert proc.returncode is not None


def test_missing_binary_is_a_clear_error():
    with pytest.raises(ToolFailed, match="could not start"), ToolProcess(["/nonexistent/pg_dump"]):
        pass


def test_reader_dying_first_reports_the_tool_error():
    script = "head -c 10 >/dev/null; echo 'pg_restore: error: bad input' >&2; exit 1"
    with (
        pytest.raises(ToolFailed, match="bad input"),
        ToolProcess(["sh", "-c", script], stdin=True) as p,
    ):
        for _ in range(1000):
            p.stdin.write(b"x" * 65536)


def test_a_dropped_connection_is_retryable_a_dump_error_is_not():
    lost = "echo 'pg_dump: error: server closed the connection unexpectedly' >&2; exit 1"
    with pytest.raises(ToolFailed) as err, ToolProcess(["sh", "-c", lost]):
        pass
    assert err.value.retryable
    broken = "echo 'pg_dump: error: query failed: ERROR:  permission denied' >&2; exit 1"
    with pytest.raises(ToolFailed) as err, ToolProcess(["sh", "-c", broken]):
        pass
    assert not err.value.retryable


def test_a_session_terminated_by_an_administrator_is_retryable():
    """pg_terminate_backend (or a server shutdown) mid-dump: one retry can succeed."""
    text = (
        "pg_dump: error: query failed: FATAL:  terminating connection due to administrator command"
    )
    with pytest.raises(ToolFailed) as err, ToolProcess(["sh", "-c", f"echo '{text}' >&2; exit 1"]):
        pass
    assert err.value.retryable
    assert "administrator command" in str(err.value)


def test_after_a_stop_a_second_signal_is_ignored_until_the_next_run():
    """The first SIGTERM stops the run; one arriving after the run ended (while the process
    reports and exits) must not kill it; the next run starts with the old handlers back."""
    import os
    import signal

    from prefect_dbbackup.blocks import process

    original = signal.getsignal(signal.SIGTERM)
    with process.stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        assert process.interrupted() == "interrupted by SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)  # still alive: ignored with a note
    assert signal.getsignal(signal.SIGTERM) is not original
    with process.stop_on_signals():
        assert process.interrupted() is None
    assert signal.getsignal(signal.SIGTERM) is original


_MAIN_ASLEEP = """
import signal, sys, threading, time
from prefect_dbbackup.blocks import process

asleep, stopped = threading.Event(), threading.Event()

def worker():  # a busy thread of the run: the one the kernel hands the signal to
    asleep.wait()
    while process.interrupted() is None:
        time.sleep(0.01)
    stopped.set()

with process.stop_on_signals():
    thread = threading.Thread(target=worker)
    thread.start()
    threading.Timer(0.2, lambda: (asleep.set(), signal.pthread_kill(thread.ident, signal.SIGINT))).start()
    stopped.wait()  # as Prefect's as_completed: no timeout, the main thread sleeps
    print(process.interrupted())
"""


def test_a_signal_taken_by_another_thread_stops_the_run_while_the_main_thread_sleeps():
    """Ctrl-C handed by the kernel to a worker thread, with the main thread asleep in a wait
    without a timeout: the run is stopped at once, not when that wait ends by itself (it
    never does here: the wait is for the stop)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _MAIN_ASLEEP], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "interrupted by SIGINT"
    assert done.stderr.count("SIGINT: stopping, killing the dump/restore clients") == 1


def test_the_pipes_to_and_from_a_client_hold_a_mebibyte():
    """A client writes 1 MiB ahead of a busy reader (Linux's default pipe is 64 KiB)."""
    import fcntl

    with ToolProcess(["cat"], stdin=True, stdout=True) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        for pipe in (proc.stdin, proc.stdout):
            assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_BYTES
        proc.stdin.write(b"x" * 1000)
        proc.stdin.close()
        assert proc.stdout.read() == b"x" * 1000


def test_a_child_gets_only_the_allow_listed_environment_and_its_own(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("PATH", "/opt/pg/bin:/usr/bin")
    env = child_env({"PGPASSFILE": "/work/pgpass"})
    assert env["PATH"] == "/opt/pg/bin:/usr/bin" and env["LC_TIME"] == "C"
    assert env["PGPASSFILE"] == "/work/pgpass"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "PGPASSWORD" not in env
