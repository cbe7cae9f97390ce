"""What Linux's /proc says about a process and a listening socket: enough to prove that
a pid is still the process dbbackup started (its start time) and that a TCP port is
answered by that process or its children (the socket's inode among their fds).

Every reader returns an empty value when the process is gone or is another user's
(unreadable): the caller then treats it as not proven, never as proven.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
# local addresses that accept a connection to 127.0.0.1 (IPv4, and IPv6 in /proc/net/tcp6)
_LOOPBACK_REACHING = {
    "0100007F",
    "00000000",
    "00000000000000000000000000000000",
    "0000000000000000FFFF00000100007F",
}
_LISTEN = "0A"


def available() -> bool:
    """True when this system has a /proc to read (Linux)."""
    return (PROC / "self" / "stat").exists()


def _stat_fields(pid: int) -> list[str]:
    """Fields 3.. of /proc/<pid>/stat (after the command name in parentheses)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return []
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (stat field 22), None if gone."""
    fields = _stat_fields(pid)
    return int(fields[19]) if len(fields) > 19 else None


def started_at(ticks: int) -> float:
    """The wall-clock time (epoch seconds) of a start time in ticks after boot."""
    for line in (PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    raise OSError("no btime in /proc/stat")


def cmdline(pid: int) -> list[str]:
    """The process's arguments, [] when gone or unreadable."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def environ(pid: int) -> dict[str, str]:
    """The process's initial environment, {} when gone or another user's."""
    try:
        raw = (PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0"))
    return {key: value for key, _, value in pairs if key}


def cwd(pid: int) -> str | None:
    """The process's working directory, None when gone or another user's."""
    try:
        return os.readlink(PROC / str(pid) / "cwd")
    except OSError:
        return None


def with_descendants(pid: int) -> set[int]:
    """pid and every process below it (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if len(fields) > 1:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def socket_inodes(pids: set[int]) -> set[int]:
    """Inodes of the sockets the processes hold open (those readable to this user)."""
    inodes: set[int] = set()
    for pid in pids:
        try:
            fds = list((PROC / str(pid) / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def loopback_listeners(port: int) -> set[int]:
    """Inodes of every listening TCP socket that a connection to 127.0.0.1:port can reach."""
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, _, hex_port = fields[1].partition(":")
            if (
                fields[3] == _LISTEN
                and int(hex_port, 16) == port
                and address.upper() in _LOOPBACK_REACHING
            ):
                inodes.add(int(fields[9]))
    return inodes
