"""Each command declares whether it talks to the Prefect API (flows/cli.py, @needs_api
from flows/cli_runtime.py): what starts the local Prefect server derives from those
declarations, not from a list kept beside the commands."""

from __future__ import annotations

import pytest
from prefect_dbbackup.flows.cli import app
from prefect_dbbackup.flows.cli_runtime import api_needed, command_needs

OFFLINE = {
    ("keygen",),
    ("signing-keygen",),
    ("dedup-keygen",),
    ("init",),
    ("server", "start"),
    ("server", "stop"),
    ("server", "status"),
}


def test_every_command_declares_its_need() -> None:
    """A new command without @needs_api fails here (and would start a server)."""
    needs = command_needs(app)
    undeclared = sorted(" ".join(words) for words, need in needs.items() if need is None)
    assert undeclared == [], f"commands without @needs_api: {undeclared}"
    assert {words for words, need in needs.items() if need is False} == OFFLINE
    assert (
        len(needs) == 24
    )  # status, deploy, init (#26); archive, base-backup, restore-cluster (#27)


@pytest.mark.parametrize(
    ("argv", "needed"),
    [
        (["dedup-keygen", "-o", "key"], False),
        (["init", "--dir", "project"], False),
        (["keygen", "--output", "id.txt", "--force"], False),
        (["server", "start"], False),
        (["server"], False),  # the group alone prints its usage
        (["backup", "srv", "-d", "db"], True),
        (["list", "keygen"], True),  # a server named like a command is an argument
        (["limits", "apply", "--config", "c.yaml"], True),
        (["automations", "apply", "--notify", "slack-webhook/ops"], True),
        ([], False),
        (["backup", "--help"], False),
        (["no-such-command"], False),  # a usage error, said without the API
        (["backup"], False),  # a missing argument: a usage error too
        (["backup", "srv", "--no-such-option"], False),
        (["restore", "srv"], False),
        (["automations", "apply"], False),  # --notify is required
    ],
)
def test_the_command_in_argv_decides(argv: list[str], needed: bool) -> None:
    assert api_needed(argv, app) is needed
