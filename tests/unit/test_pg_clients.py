"""Choosing the PostgreSQL client: the installed one closest to the server, at least as new."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.pg_clients import (
    CLIENT_TOOLS,
    candidate_dirs,
    choose_client,
    chosen_note,
    client_major,
    missing_client_message,
    needed_major,
)

FOUND = [
    ("/usr/lib/postgresql/15/bin", 15),
    ("/usr/lib/postgresql/17/bin", 17),
    ("/usr/lib/postgresql/18/bin", 18),
]


@pytest.mark.parametrize(
    ("need", "expected"),
    [
        (13, ("/usr/lib/postgresql/15/bin", 15)),  # an older server: the oldest client
        (15, ("/usr/lib/postgresql/15/bin", 15)),  # the server's own version
        (16, ("/usr/lib/postgresql/17/bin", 17)),  # none of its own: the next one up
        (18, ("/usr/lib/postgresql/18/bin", 18)),
        (19, None),  # every client is older than the server
    ],
)
def test_the_closest_client_at_least_as_new_as_needed(need, expected):
    assert choose_client(FOUND, need) == expected
    assert choose_client(list(reversed(FOUND)), need) == expected  # order does not matter


def test_a_tie_goes_to_the_client_found_first():
    found = [("/old", 12), ("/opt/pg/bin", 16), ("/usr/lib/postgresql/16/bin", 16)]
    assert choose_client(found, 14) == ("/opt/pg/bin", 16)


def test_no_client_at_all():
    assert choose_client([], 15) is None


@pytest.mark.parametrize(
    ("server", "backup", "need"),
    [
        ("16.2", None, 16),
        ("18.6 (Debian 18.6-1)", None, 18),
        ("18.6", 15, 18),  # the upgrade path: the target decides
        ("15.20", 17, 17),  # a backup written by pg_dump 17 needs pg_restore 17 or newer
    ],
)
def test_what_a_run_needs(server, backup, need):
    assert needed_major(server, backup) == need


@pytest.mark.parametrize(
    ("line", "major"),
    [
        ("pg_dump (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)", 15),
        ("pg_dump (PostgreSQL) 18.6", 18),
        ("pg_dump (PostgreSQL) 9.6.24", 9),
        ("pg_dump (PostgreSQL) 17beta1", 17),
        ("no version here", None),
    ],
)
def test_the_major_version_of_a_client(line, major):
    assert client_major(line) == major


def test_the_error_names_server_clients_and_the_fix():
    message = missing_client_message(
        [("/usr/lib/postgresql/15/bin", 15)], "16.2", "postgres@db1:5432"
    )
    assert "postgres@db1:5432" in message
    assert "PostgreSQL 16.2" in message
    assert "/usr/lib/postgresql/15/bin (15)" in message
    assert "apt install postgresql-client-16" in message
    assert "bin_dir" in message


def test_the_error_names_the_backups_client_when_it_is_newer():
    message = missing_client_message([("/usr/lib/postgresql/15/bin", 15)], "15.4", "p@h:1", 17)
    assert "the pg_dump 17 that wrote the backup" in message
    assert "apt install postgresql-client-17" in message


def test_the_error_says_when_no_client_was_found():
    message = missing_client_message([], "17.4 (Debian 17.4-1)", "postgres@db1:5432")
    assert "Found: none" in message
    assert "postgresql-client-17" in message


def test_the_note_says_which_client_and_why():
    note = chosen_note(("/usr/lib/postgresql/15/bin", 15), FOUND, "15.2")
    assert note.startswith("PostgreSQL client tools: /usr/lib/postgresql/15/bin (version 15)")
    assert "PostgreSQL 15.2" in note
    assert "/usr/lib/postgresql/17/bin (17)" in note
    assert "No PostgreSQL" not in note  # its own version is installed: nothing to warn of


def test_the_note_warns_when_the_servers_own_client_is_missing():
    note = chosen_note(("/usr/lib/postgresql/17/bin", 17), FOUND, "16.2")
    assert "No PostgreSQL 16 client is installed" in note
    assert "install postgresql-client-16" in note.lower()


def _install(directory: Path, tools: tuple[str, ...] = CLIENT_TOOLS) -> Path:
    directory.mkdir(parents=True)
    for tool in tools:
        path = directory / tool
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    return directory


def test_candidates_are_path_entries_first_then_install_locations(tmp_path):
    on_path = _install(tmp_path / "path" / "bin")
    v9 = _install(tmp_path / "lib" / "9" / "bin")
    v16 = _install(tmp_path / "lib" / "16" / "bin")
    found = candidate_dirs(str(on_path), [str(tmp_path / "lib" / "*" / "bin")])
    assert found == [on_path, v9, v16]  # 9 before 16: versions sort as numbers


def test_a_symlinked_client_counts_as_the_directory_it_points_into(tmp_path):
    real = _install(tmp_path / "Cellar" / "postgresql@17" / "bin")
    linked = tmp_path / "bin"
    linked.mkdir()
    for tool in CLIENT_TOOLS:
        (linked / tool).symlink_to(real / tool)
    assert candidate_dirs(f"{linked}{os.pathsep}{real}", []) == [real]


def test_a_wrapper_and_an_incomplete_install_are_skipped(tmp_path):
    common = tmp_path / "postgresql-common"
    common.mkdir()
    (common / "pg_wrapper").write_text("#!/bin/sh\n")
    (common / "pg_wrapper").chmod(0o755)
    wrapped = tmp_path / "usr-bin"
    wrapped.mkdir()
    for tool in CLIENT_TOOLS:  # Debian's /usr/bin/pg_dump -> pg_wrapper
        (wrapped / tool).symlink_to(common / "pg_wrapper")
    partial = _install(tmp_path / "partial", ("pg_dump",))  # no pg_dumpall, no pg_restore
    complete = _install(tmp_path / "complete")
    search = os.pathsep.join(map(str, (wrapped, partial, tmp_path / "missing", "", complete)))
    assert candidate_dirs(search, []) == [complete]
