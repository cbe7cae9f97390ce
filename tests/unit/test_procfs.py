"""/proc tells a process apart from a later one with the same pid, and which processes
hold the socket listening on a loopback port (real processes and sockets)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from prefect_dbbackup.flows import procfs


def test_start_time_environment_and_command_line_of_a_child() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "marker-arg"],
        env={**os.environ, "PROCFS_TEST_MARK": "yes"},
        cwd="/",
    )
    try:
        time.sleep(0.2)  # exec'd
        ticks = procfs.start_ticks(child.pid)
        assert ticks is not None and ticks >= procfs.start_ticks(os.getpid())
        assert abs(procfs.started_at(ticks) - time.time()) < 30
        assert procfs.cmdline(child.pid)[-1] == "marker-arg"
        assert procfs.environ(child.pid)["PROCFS_TEST_MARK"] == "yes"
        assert procfs.cwd(child.pid) == "/"
        assert child.pid in procfs.with_descendants(os.getpid())
    finally:
        child.kill()
        child.wait()
    # gone: every reader says "nothing", never a stale answer
    assert procfs.start_ticks(child.pid) is None
    assert procfs.cmdline(child.pid) == [] and procfs.environ(child.pid) == {}
    assert procfs.cwd(child.pid) is None


def test_the_listening_socket_of_a_port_is_found_among_its_owners_fds() -> None:
    for family, address in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")):
        with socket.socket(family) as listener:
            listener.bind((address, 0))
            listener.listen()
            port = listener.getsockname()[1]
            listening = procfs.loopback_listeners(port)
            assert len(listening) == 1
            assert listening <= procfs.socket_inodes({os.getpid()})
        assert procfs.loopback_listeners(port) == set()  # closed
    # a socket on another loopback address is not reached through 127.0.0.1
    with socket.socket() as other:
        other.bind(("127.0.0.2", 0))
        other.listen()
        assert procfs.loopback_listeners(other.getsockname()[1]) == set()
