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


@pytest.mark.parametrize(
    ("argv", "environ", "off"),
    [
        (["backup", "local-pg", "-d", "shop"], {}, True),
        (["restore", "local-pg", "shop"], {}, True),
        (["--debug", "serve", "dbbackup.yaml"], {}, False),  # its runs: child processes
        (["backup", "local-pg"], {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "60"}, False),
        (["backup", "local-pg"], {"PREFECT_RUNNER_HEARTBEAT_FREQUENCY": "60"}, False),
    ],
)
def test_flow_runs_of_a_command_send_no_heartbeats_unless_asked(
    argv: list[str], environ: dict[str, str], off: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Prefect's engine ends a flow run by joining its heartbeat thread (~0.5 s, it sleeps
    in steps of a second): a command's own runs go without, `serve` and a user who set
    the frequency keep them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.settings.context import get_current_settings
    from prefect_dbbackup.flows.cli_runtime import _no_heartbeats

    for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with temporary_settings(updates=_no_heartbeats(argv)):
        frequency = get_current_settings().flows.heartbeat_frequency
    assert (frequency is None) == off
    assert PREFECT_FLOWS_HEARTBEAT_FREQUENCY.name == "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
