"""`dbbackup init` on this machine's real PostgreSQL and MariaDB: the files a first backup
needs, never a key replaced, never a file written through a planted link."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.probe import MYSQL, POSTGRES, FoundServer, probe
from prefect_dbbackup.blocks.signing import load_signing_key, public_key_text
from prefect_dbbackup.flows.cli import app
from prefect_dbbackup.flows.config import load_config
from prefect_dbbackup.flows.init import starter_config
from typer.testing import CliRunner

KEYS = (".dbbackup/identity.txt", ".dbbackup/signing.key")
MY_SOCKET = "/run/mysqld/mysqld.sock"


def init(directory: Path, *args: str):
    return CliRunner().invoke(app, ["init", "--dir", str(directory), *args])


def _free_port() -> int:
    """A loopback port nothing listens on (bound and released: nobody else took it since)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers(directory: Path) -> dict[str, object]:
    """The server blocks of the directory's dbbackup.yaml, by name, read by `apply`'s loader."""
    blocks = load_config(directory / "dbbackup.yaml")
    return {name: block for name, block in blocks if hasattr(block, "list_databases")}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_fresh_directory_gets_keys_a_config_for_the_local_servers_and_one_ignore_entry(
    tmp_path,
):
    first = init(tmp_path)
    assert first.exit_code == 0, first.output
    for key in KEYS:
        assert stat.S_ISREG((tmp_path / key).lstat().st_mode)
        assert _mode(tmp_path / key) == 0o600
    assert _mode(tmp_path / ".dbbackup") == 0o700
    servers = _servers(tmp_path)
    assert set(servers) == {"local-pg", "local-my"}
    pg, my = servers["local-pg"], servers["local-my"]
    assert (pg.host, pg.port, pg.user) == ("127.0.0.1", 5432, "postgres")
    assert (my.host, my.port, my.user) == ("127.0.0.1", 3306, "root")
    assert pg.password is None and my.password is None  # no password written, none asked
    recipient = subprocess.run(
        ["age-keygen", "-y", str(tmp_path / KEYS[0])], capture_output=True, text=True, check=True
    ).stdout.strip()
    by_type = {type(b).__name__: b for _, b in load_config(tmp_path / "dbbackup.yaml")}
    assert by_type["AgeEncryption"].recipients == [recipient]
    storage = by_type["LocalBackupStorage"]
    assert storage.path == str(tmp_path / "backups")
    signing = load_signing_key((tmp_path / KEYS[1]).read_text(), "test")
    assert storage.manifest_verify_keys == [public_key_text(signing.public_key())]
    assert "found PostgreSQL on 127.0.0.1:5432: local-pg" in first.stderr
    assert f"created   {tmp_path}/dbbackup.yaml" in first.stdout

    keys = {key: (tmp_path / key).read_bytes() for key in KEYS}
    config = (tmp_path / "dbbackup.yaml").read_bytes()
    second = init(tmp_path)
    assert second.exit_code == 0, second.output
    assert {key: (tmp_path / key).read_bytes() for key in KEYS} == keys  # never replaced
    assert (tmp_path / "dbbackup.yaml").read_bytes() == config
    assert f"kept      {tmp_path}/.dbbackup/identity.txt" in second.stdout
    assert f"unchanged {tmp_path}/.gitignore" in second.stdout
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines.count("/.dbbackup/") == 1


def test_an_existing_gitignore_keeps_its_lines_and_one_that_ignores_the_keys_is_enough(tmp_path):
    (tmp_path / ".gitignore").write_bytes(b"*.log\n\xff\xfe.bin")  # not UTF-8, no final newline
    result = init(tmp_path, "--postgres-port", str(_free_port()))
    assert result.exit_code == 0, result.output
    assert f"updated   {tmp_path}/.gitignore" in result.stdout
    lines = (tmp_path / ".gitignore").read_bytes().splitlines()
    assert lines[:2] == [b"*.log", b"\xff\xfe.bin"]
    assert lines[-1] == b"/.dbbackup/"
    other = tmp_path / "other"
    other.mkdir()
    (other / ".gitignore").write_text(".dbbackup\n")
    assert init(other, "--postgres-port", str(_free_port())).exit_code == 0
    assert (other / ".gitignore").read_text() == ".dbbackup\n"


def test_a_server_that_does_not_answer_is_left_out_with_a_note(tmp_path):
    port = _free_port()
    result = init(tmp_path, "--postgres-port", str(port))
    assert result.exit_code == 0, result.output
    assert set(_servers(tmp_path)) == {"local-my"}
    assert f"no PostgreSQL answered on 127.0.0.1:{port}" in result.stderr
    assert "local-pg is left out of dbbackup.yaml" in result.stderr


def test_a_port_where_another_engine_answers_is_not_taken_for_postgres(tmp_path):
    result = init(tmp_path, "--postgres-port", "3306")  # the machine's MariaDB
    assert result.exit_code == 0, result.output
    assert set(_servers(tmp_path)) == {"local-my"}
    assert "no PostgreSQL answered on 127.0.0.1:3306" in result.stderr


@pytest.mark.parametrize(
    "target", [".dbbackup", *KEYS, "dbbackup.yaml", ".gitignore"], ids=lambda t: t.strip(".")
)
def test_a_link_planted_at_a_target_is_refused_and_nothing_is_written(tmp_path, target):
    directory = tmp_path / "project"
    (directory / ".dbbackup").mkdir(parents=True, mode=0o700)
    victim = tmp_path / "victim"
    victim.mkdir() if target == ".dbbackup" else victim.write_text("victim\n")
    if target == ".dbbackup":
        (directory / ".dbbackup").rmdir()
    (directory / target).symlink_to(victim)
    result = init(directory)
    assert result.exit_code == 3, result.output
    assert "is a symbolic link: init never writes through one" in result.output
    assert (directory / target).is_symlink()
    if target == ".dbbackup":
        assert list(victim.iterdir()) == []
    else:
        assert victim.read_text() == "victim\n"
    written = {p.relative_to(directory).as_posix() for p in directory.rglob("*")}
    assert written <= {".dbbackup", target}


def test_an_existing_key_that_is_no_key_is_refused_not_replaced(tmp_path):
    (tmp_path / ".dbbackup").mkdir(mode=0o700)
    (tmp_path / KEYS[0]).write_text("not a key\n")
    result = init(tmp_path)
    assert result.exit_code == 3, result.output
    assert "identity.txt" in result.output
    assert (tmp_path / KEYS[0]).read_text() == "not a key\n"
    assert not os.path.lexists(tmp_path / "dbbackup.yaml")


@pytest.mark.parametrize("target", [KEYS[0], ".gitignore"], ids=["identity", "gitignore"])
def test_a_fifo_at_a_target_is_refused_without_waiting_on_it(tmp_path, target):
    (tmp_path / ".dbbackup").mkdir(mode=0o700)
    os.mkfifo(tmp_path / target)
    started = time.monotonic()
    result = init(tmp_path)
    assert result.exit_code == 3, result.output
    assert "is not a regular file" in result.output
    assert time.monotonic() - started < 10
    assert not os.path.lexists(tmp_path / "dbbackup.yaml")


def test_a_listener_that_never_answers_is_left_out_after_a_short_wait(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog), never says a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        result = init(tmp_path, "--postgres-port", str(silent.getsockname()[1]))
        elapsed = time.monotonic() - started
    assert result.exit_code == 0, result.output
    assert set(_servers(tmp_path)) == {"local-my"}
    assert elapsed < 10  # one short timeout per address, not a hang


def test_a_directory_name_with_a_newline_and_percent_is_printed_escaped(tmp_path):
    directory = tmp_path / "odd\nname%s 'q'"
    result = init(directory, "--postgres-port", str(_free_port()))
    assert result.exit_code == 0, result.output
    assert _mode(directory / KEYS[0]) == 0o600
    assert set(_servers(directory)) == {"local-my"}
    assert all(line.startswith(("created", "kept")) for line in result.stdout.splitlines())


@pytest.mark.parametrize(
    "found",
    [
        [FoundServer(POSTGRES, "/var/run/postgresql", 5433), FoundServer(MYSQL, MY_SOCKET, 3306)],
        [],
    ],
    ids=["sockets", "none"],
)
def test_the_starter_config_of_servers_on_sockets_or_of_none_loads(tmp_path, found):
    assert init(tmp_path, "--postgres-port", str(_free_port())).exit_code == 0  # the keys
    (tmp_path / "dbbackup.yaml").write_text(starter_config(found))
    servers = _servers(tmp_path)
    assert set(servers) == {f.engine.name for f in found}
    if found:
        assert (servers["local-pg"].host, servers["local-pg"].port) == ("/var/run/postgresql", 5433)
        assert servers["local-my"].host == MY_SOCKET
        assert "port:" not in starter_config(found).split("local-my:")[1].split("storage:")[0]


def test_a_server_reached_only_by_its_socket_is_found_there():
    closed = _free_port()
    my = probe(MYSQL, closed, timeout=1.0)  # nothing on TCP: the machine's MariaDB socket
    assert my is not None and my.host == MY_SOCKET
    only_socket = replace(POSTGRES, sockets=("/var/run/postgresql/.s.PGSQL.5432",))
    pg = probe(only_socket, closed, timeout=1.0)
    assert pg is not None and pg.host == "/var/run/postgresql"  # PostgreSQL's host: the folder
