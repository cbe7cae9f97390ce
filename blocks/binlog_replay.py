"""Replaying one database's binary log events into a database, up to a time (docs/pitr.md,
"Replaying the binlog to a time").

One `mariadb` client (the block's restore client) for the whole replay; for each binlog file a
`mariadb-binlog --database=DB [--rewrite-db=DB->TARGET] -` that reads the file on its stdin:

    file stream --BinlogScan (thread)--> mariadb-binlog --filter (this thread)--> mariadb

BinlogScan (blocks/binlog_events.py) passes on the magic bytes, the Format_description and the
events from the start position on, and stops before the first event stamped after the stop
time; mariadb-binlog reads no file from disk (a position given to it on stdin would skip the
Format_description). The filter drops the lines with which mariadb-binlog gives each event
group its original server id and GTID, so that the server logs the replayed changes under
GTIDs of its own. Nothing is written to disk but the client's 0600 credentials file.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import BinaryIO

from prefect_dbbackup.blocks.binlog_events import CHUNK, BinlogScan, ReplayResult
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError, Interrupted, ToolFailed
from prefect_dbbackup.blocks.process import ToolProcess, check_stopped
from prefect_dbbackup.blocks.server import ToolCommand

# (binlog file name, opens a readable stream of its bytes from its start, magic included)
BinlogFile = tuple[str, Callable[[], AbstractContextManager[BinaryIO]]]
# a whole origin line with the line break before it (text that starts with a literal is
# found with a fast search: 4x less CPU than a multi-line `^` over the replay's output)
_ORIGIN = re.compile(
    rb"\n/\*M!100001 SET @@session\.(?:gtid_domain_id|server_id|gtid_seq_no)=\d+\*//\*!\*/;(?=\n)"
)
LONG_LINE = 1 << 16  # a longer line is no origin line: passed on without waiting for its end


def reader_argv(tool: str, database: str, target: str) -> list[str]:
    """The mariadb-binlog command that prints database's events from stdin, renamed to target.

    --rewrite-db='FROM->TO' trims blanks before FROM and cuts TO at the first blank (checked
    with MariaDB 10.11's client): such names are refused instead of replayed elsewhere."""
    argv = [tool, "--no-defaults", "--verify-binlog-checksum", f"--database={database}"]
    if target == database:
        return [*argv, "-"]
    bad = [
        f"{what} {name!r} {why}"
        for what, name, why in (
            ("database", database, "contains '->'" if "->" in database else None),
            ("target", target, "contains '->'" if "->" in target else None),
            ("database", database, "starts with a blank" if database[:1].isspace() else None),
            ("target", target, "contains a blank" if any(c.isspace() for c in target) else None),
        )
        if why
    ]
    if bad:
        raise ConfigError(
            f"cannot replay the binlog of {database!r} into {target!r}: {'; '.join(bad)}, which "
            "mariadb-binlog --rewrite-db='from->to' cannot carry. Replay into a name without "
            "blanks or '->' and rename it afterwards (RENAME TABLE), or into the database's "
            "own name"
        )
    return [*argv, f"--rewrite-db={database}->{target}", "-"]


def pass_on(source: BinaryIO, write: Callable[[bytes], object]) -> None:
    """Copy mariadb-binlog's output to write, without the event groups' origin lines."""
    rest, midline = b"", False
    while chunk := source.read1(CHUNK):  # type: ignore[attr-defined]
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        whole, rest = data[:cut], data[cut:]
        if midline and whole:  # the end of a long line already passed on
            first = whole.index(b"\n") + 1
            write(whole[:first])
            whole, midline = whole[first:], False
        write(_ORIGIN.sub(b"", b"\n" + whole)[1:])  # whole starts a line
        if len(rest) > LONG_LINE:
            write(rest)
            rest, midline = b"", True
    write(rest)


class _Feeder(threading.Thread):
    """Opens one binlog file and feeds it through the scan into mariadb-binlog's stdin. The
    stream is opened and closed in this thread: a stop does not wait for a read under way."""

    def __init__(self, scan: BinlogScan, file: BinlogFile, stdin: BinaryIO) -> None:
        super().__init__(name=f"binlog feeder {file[0]}", daemon=True)
        self.scan, self.file, self.stdin = scan, file, stdin
        self.error: BaseException | None = None

    def run(self) -> None:
        name, opener = self.file
        try:
            with opener() as stream:
                self.scan.feed(name, stream, self.stdin.write)
        except BrokenPipeError:
            pass  # mariadb-binlog ended early: its own error says why
        except BaseException as exc:
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self.stdin.close()

    def finish(self) -> None:
        """Wait for the feeder (a stop does not wait); raise what it failed with."""
        while self.is_alive():
            self.join(0.1)
            check_stopped("the binlog replay")
        if self.error is not None:
            raise self.error


class _ClientEnded(DbBackupError):
    """The mariadb client stopped reading before the replay was complete."""


def replay(
    files: Iterable[BinlogFile],
    scan: BinlogScan,
    reader: list[str],
    client: ToolCommand,
    timeout: float,
) -> ReplayResult:
    """Replay the files through scan, mariadb-binlog (reader) and the client. An error names
    the file and the position the scan had reached."""
    try:
        with ToolProcess(
            client.argv, env=client.env, timeout=timeout, stdin=True, secrets=client.secrets
        ) as mysql:
            assert mysql.stdin is not None
            for name, opener in files:
                if scan.stopped:
                    break
                if scan.started or name == scan.start.file:
                    _replay_file(scan, (name, opener), reader, mysql.stdin, mysql.wait, timeout)
    except Interrupted:
        raise
    except DbBackupError as exc:
        file, position = scan.where
        raise type(exc)(f"binlog replay, {file} at position {position}: {exc}") from None
    if not scan.started:
        raise DbBackupError(
            f"binlog replay: the start position's file {scan.start.file} is not among the "
            "binlog files given"
        )
    return scan.result


def _replay_file(
    scan: BinlogScan,
    file: BinlogFile,
    reader: list[str],
    client_stdin: BinaryIO,
    client_wait: Callable[[], int],
    timeout: float,
) -> None:
    scan.where = (file[0], 0)
    tool = ToolProcess(reader, env={"TZ": "UTC"}, timeout=timeout, stdin=True, stdout=True)
    feeder: _Feeder | None = None
    try:
        with tool as binlog:
            assert binlog.stdin is not None and binlog.stdout is not None
            feeder = _Feeder(scan, file, binlog.stdin)
            feeder.start()
            try:
                pass_on(binlog.stdout, client_stdin.write)
            except BrokenPipeError:
                client_wait()  # ended: its exit status and error are what to report
                raise _ClientEnded("the mariadb client ended before the replay") from None
            feeder.finish()
    except ToolFailed:
        # the scan refused the file: mariadb-binlog, cut short, may have failed first
        if feeder is not None and feeder.error is not None:
            raise feeder.error from None
        raise
