"""How the CLI tells an unreachable Prefect API and a usage error from other failures."""

import httpx
import pytest
from prefect_dbbackup.flows.cli_runtime import api_unreachable
from typer.testing import CliRunner


def _raised_from(cause: BaseException) -> RuntimeError:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("Failed to reach API at http://127.0.0.1:1/api") from exc
    except RuntimeError as wrapped:
        return wrapped


def test_a_refused_connection_wrapped_by_prefect_is_an_unreachable_api():
    assert api_unreachable(_raised_from(httpx.ConnectError("connection refused")))
    assert api_unreachable(httpx.ReadTimeout("timed out"))


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("Failed to reach API at http://x/api"),  # the words alone prove nothing
        _raised_from(ValueError("a bug")),
        TypeError("a bug"),
    ],
)
def test_other_errors_are_not_taken_for_an_unreachable_api(exc):
    assert not api_unreachable(exc)


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--no-such-option"], "No such option: --no-such-option"),  # the group's own
        (["backup", "--no-such-option"], "No such option: --no-such-option"),  # a command's
        (["restore"], "Missing argument 'server'"),
        (["restore", "srv", "db", "--jobs", "many"], "Invalid value for '--jobs'"),
        (["no-such-command"], "No such command 'no-such-command'"),
    ],
)
def test_a_usage_error_exits_3_not_clicks_2(argv, says):
    """Before any block is loaded or API reached: the usage and the error, exit 3."""
    from prefect_dbbackup.flows.cli import app

    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 3, result.output
    assert says in result.output
    assert "Usage: dbbackup" in result.output
    assert isinstance(result.exception, SystemExit)  # click's own exit, not a traceback
