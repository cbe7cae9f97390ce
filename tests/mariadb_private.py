"""A private MariaDB server for tests that need a binary log (point-in-time recovery).

`mariadb-install-db` into a temporary directory, then `mariadbd --log-bin --binlog-format=ROW`
on a free port of 127.0.0.1 and a socket in that directory; root logs in without a password.
The machine's MariaDB (3306, log_bin off) is never touched. As root, the server runs as the
`mysql` user, which owns the directory. Small InnoDB files keep the start at ~3 s (install)
plus ~0.2 s (server) on this machine; `stop` shuts it down and removes the directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pymysql

from tests.helpers import MyAdmin
from tests.pg_cluster import free_port

RUN_AS = "mysql"
MARIADBD = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
SETTINGS = """[mariadbd]
innodb_log_file_size = 8M
innodb_buffer_pool_size = 32M
innodb_data_file_path = ibdata1:4M:autoextend
skip-name-resolve
"""
START_SECONDS = 60
PORT_TRIES = 3


@dataclass
class PrivateMariaDB(MyAdmin):
    """One MariaDB server of its own, binary log on (`binlog.NNNNNN` in the data directory)."""

    base: Path = Path()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    start_seconds: float = 0.0  # install + start, measured

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def socket(self) -> Path:
        return self.base / "sock"

    @classmethod
    def start(cls, server_id: int = 1) -> PrivateMariaDB:
        """Install a data directory and start the server; stopped and removed again if that
        fails. A port taken between the probe and the bind (another worker) is tried anew."""
        begun = time.monotonic()
        base = Path(tempfile.mkdtemp(prefix="dbb-my-"))
        server = cls(host="127.0.0.1", base=base)
        try:
            server._install()
            for attempt in range(PORT_TRIES):
                server.port = free_port()
                try:
                    server._run(server_id)
                    break
                except RuntimeError:
                    if attempt == PORT_TRIES - 1:
                        raise
        except BaseException:
            server.stop()
            raise
        server.start_seconds = time.monotonic() - begun
        return server

    def _user_option(self) -> list[str]:
        if os.geteuid() != 0:
            return []
        shutil.chown(self.base, RUN_AS)
        return [f"--user={RUN_AS}"]

    def _install(self) -> None:
        config = self.base / "my.cnf"
        # a temp dir of its own: installs running at once (xdist workers) never share one
        tmp = self.base / "tmp"
        tmp.mkdir()
        if os.geteuid() == 0:
            shutil.chown(tmp, RUN_AS)
        config.write_text(SETTINGS + f"tmpdir = {tmp}\n")
        config.chmod(0o644)
        log = self.base / "install.log"
        with log.open("wb") as out:
            done = subprocess.run(
                [
                    shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db",
                    f"--defaults-file={config}",
                    *self._user_option(),
                    f"--datadir={self.data}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed: {log.read_text()[-2000:]}")

    def _run(self, server_id: int) -> None:
        argv = [
            MARIADBD,
            f"--defaults-file={self.base / 'my.cnf'}",
            *self._user_option(),
            f"--datadir={self.data}",
            f"--port={self.port}",
            f"--socket={self.socket}",
            "--bind-address=127.0.0.1",
            f"--log-bin={self.data / 'binlog'}",
            "--binlog-format=ROW",
            f"--server-id={server_id}",
            f"--pid-file={self.base / 'pid'}",
            f"--log-error={self.base / 'error.log'}",
        ]
        with (self.base / "stderr.log").open("wb") as err:  # before --log-error opens
            self.process = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        deadline = time.monotonic() + START_SECONDS
        while True:
            # through its own socket: a port another program took would accept a TCP
            # connection and never answer
            with contextlib.suppress(pymysql.err.OperationalError):
                pymysql.connect(unix_socket=str(self.socket), user="root", read_timeout=5).close()
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._halt()  # a server that did not answer in time is not left running
                log = self.base / "error.log"
                text = log.read_text()[-2000:] if log.exists() else ""
                raise RuntimeError(f"mariadbd on port {self.port} did not start: {text}")
            time.sleep(0.05)

    def binlog_files(self) -> list[Path]:
        """The server's binlog files, oldest first."""
        return sorted(self.data.glob("binlog.[0-9]*"))

    def _halt(self) -> None:
        """Shut the server process down: SIGTERM, then SIGKILL of its process group after 30 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def stop(self) -> None:
        """Shut the server down and remove its directory."""
        self._halt()
        shutil.rmtree(self.base, ignore_errors=True)
