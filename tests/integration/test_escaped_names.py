"""A database name with a newline or control characters cannot fake lines in text output."""

from __future__ import annotations

import json
import uuid

from prefect_dbbackup.flows.text import printable


def test_printable_escapes_what_could_fake_or_hide_text():
    assert printable("plain name é 日本") == "plain name é 日本"
    assert printable("a\nb") == "a\\nb"
    assert printable("a\\nb") == "a\\\\nb"  # a literal backslash-n stays distinguishable
    assert printable("x\r\x1b[2Ky") == "x\\r\\x1b[2Ky"
    assert printable("r\u202eevil\u2028z") == "r\\u202eevil\\u2028z"


def test_newline_in_a_database_name_is_escaped_in_backup_list_and_prune(env, pg_db, pg_admin):
    name = f"dbb_{uuid.uuid4().hex[:8]}\nFAKE ok line\x1b[31m"
    pg_db(name)
    pg_admin.execute(name, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    shown = printable(name)
    assert "\n" not in shown and "\x1b" not in shown

    outputs = {
        "backup": env.cli("backup", env.pg, "--database", name),
        "list": env.cli("list", env.pg, "--database", name),
        "prune": env.cli("prune", env.pg, "--database", name, "--dry-run"),
    }
    for command, result in outputs.items():
        assert result.exit_code == 0, (command, result.output)
        assert shown in result.stdout, (command, result.stdout)
        assert not any(line.startswith("FAKE") for line in result.output.splitlines()), command
        assert "\x1b" not in result.output, command

    # machine-readable output keeps the exact name
    listed = json.loads(env.cli("list", env.pg, "--database", name, "--json").stdout)
    assert [b["database"] for b in listed] == [name]
    pruned = json.loads(env.cli("prune", env.pg, "-d", name, "--dry-run", "--json").stdout)
    assert {i["database"] for i in pruned} == {name}
