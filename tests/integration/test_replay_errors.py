"""Replaying users and grants: what the server refuses is reported as the server's answer;
a bug in dbbackup is raised as it is, never retried as a lost connection (#25)."""

from __future__ import annotations

import pytest
from prefect_dbbackup.blocks import MySQLServer, PostgresServer
from prefect_dbbackup.blocks.errors import ConnectionFailed, DbBackupError

from tests.helpers import MY, PG

SERVERS = {
    "postgres": lambda: PostgresServer(host=PG["host"], port=PG["port"], user=PG["user"]),
    "mysql": lambda: MySQLServer(host=MY["host"], port=MY["port"], user=MY["user"]),
}


@pytest.mark.parametrize("engine", SERVERS)
def test_a_statement_the_server_refuses_is_the_servers_answer(engine: str) -> None:
    with SERVERS[engine]().replay_session() as run, pytest.raises(DbBackupError) as raised:
        run("SELEC 1")
    assert not raised.value.retryable
    assert "SELEC" in str(raised.value)


@pytest.mark.parametrize("engine", SERVERS)
def test_text_no_driver_can_send_is_a_bug_raised_as_it_is(engine: str) -> None:
    """A lone surrogate cannot be encoded: the driver fails before the server sees a byte.
    Reported as a lost connection, it was retried and told the operator to check the network."""
    with SERVERS[engine]().replay_session() as run, pytest.raises(UnicodeEncodeError):
        run("SELECT '\udc80'")


@pytest.mark.parametrize("engine", SERVERS)
def test_a_statement_after_a_refused_one_runs_on_the_same_session(engine: str) -> None:
    with SERVERS[engine]().replay_session() as run:
        with pytest.raises(DbBackupError) as raised:
            run("SELEC 1")
        assert not isinstance(raised.value, ConnectionFailed)
        assert run("SELECT 1") is None
