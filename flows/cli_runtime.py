"""The process around the `dbbackup` commands (flows/cli.py holds the commands): which
commands need the Prefect API and the local server started for them, how an error becomes
one line and an exit code, the console log filter, and how the process ends.

Nothing here imports flows/cli.py: `run_cli` is handed the command group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import httpx
import typer
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError, Interrupted
from prefect_dbbackup.flows.text import printable
from typer import Context
from typer.core import TyperGroup

# click's UsageError as typer vendors it, reached through typer's public BadParameter
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def api_unreachable(exc: BaseException) -> bool:
    """True when exc is, or was raised from, a failure to talk to the Prefect API over HTTP
    (Prefect wraps a refused connection in a RuntimeError raised from the httpx error)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, httpx.HTTPError):
            return True
        seen = seen.__cause__
    return False


class DbBackupGroup(TyperGroup):
    """Usage errors exit 3 (not click's 2, which means 'all failed' here); an unreachable
    Prefect API is a configuration error with a message instead of a traceback; a run
    stopped by Ctrl-C/SIGTERM (Cancelled) exits 130 with one line."""

    def make_context(self, *args, **kwargs) -> Context:  # noqa: ANN002, ANN003
        try:
            return super().make_context(*args, **kwargs)
        except UsageError as exc:
            exc.exit_code = ConfigError.exit_code
            raise

    def invoke(self, ctx: Context) -> object:
        try:
            return super().invoke(ctx)
        except UsageError as exc:
            exc.exit_code = ConfigError.exit_code
            raise
        except DbBackupError as exc:  # expected: one line, its exit code, no traceback
            fail(exc)
        except Exception as exc:
            if type(exc).__name__ == "CancelledRun":  # prefect.exceptions: not imported for --help
                typer.echo(f"dbbackup: {exc}", err=True)
                raise typer.Exit(Interrupted.exit_code) from None
            if not api_unreachable(exc):
                raise
            from prefect.settings import PREFECT_API_URL
            from prefect_dbbackup.flows import local_server

            url = PREFECT_API_URL.value()
            state = local_server.read_state()
            if url and state is not None and url == state.api_url:
                advice = "the local Prefect server stopped: `dbbackup server start` starts it"
            elif url:
                advice = "start that server, or point PREFECT_API_URL at a running one"
            else:
                url, advice = "Prefect's temporary API", "unset DBBACKUP_PREFECT_SERVER"
            typer.echo(
                f"dbbackup: error: cannot reach the Prefect API at {url}: {exc}; {advice}", err=True
            )
            raise typer.Exit(ConfigError.exit_code) from None


# what each command declares with @needs_api, by its function (see command_needs)
_API_NEEDS: dict[Callable[..., Any], bool] = {}


def needs_api(api: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare whether a command talks to the Prefect API: one that does not (making a key
    file, managing the local server) runs without starting the local Prefect server.
    Write it under the command's `@app.command`; a test fails for a command without it."""

    def declare(command: Callable[..., Any]) -> Callable[..., Any]:
        _API_NEEDS[command] = api
        return command

    return declare


def fail(exc: DbBackupError) -> NoReturn:
    """Say an expected error in one line and exit with its code."""
    typer.echo(f"dbbackup: error: {exc}", err=True)
    raise typer.Exit(exc.exit_code)


def command_needs(group: typer.Typer) -> dict[tuple[str, ...], bool | None]:
    """Each command's words (`("server", "start")`) and its declared need of the Prefect
    API (None: not declared)."""
    needs: dict[tuple[str, ...], bool | None] = {}
    for info in group.registered_commands:
        name = info.name or typer.main.get_command_name(info.callback.__name__)
        needs[(name,)] = _API_NEEDS.get(info.callback)
    for sub in group.registered_groups:
        for words, need in command_needs(sub.typer_instance).items():
            needs[(sub.name, *words)] = need
    return needs


def api_needed(argv: list[str], app: typer.Typer) -> bool:
    """Whether the command of app that argv names talks to the Prefect API (as it declares; an
    undeclared one is taken to). No command, a group alone, an unknown command or --help:
    typer answers without the API."""
    words = tuple(a for a in argv if not a.startswith("-"))
    if "--help" in argv or "-h" in argv:
        return False
    needs = command_needs(app)
    for length in range(1, len(words) + 1):
        if words[:length] in needs:
            return needs[words[:length]] is not False and _parses(argv, app)
    return False


def _parses(argv: list[str], app: typer.Typer) -> bool:
    """Whether argv is a valid command line of app (arguments and options as declared):
    a usage error (a missing argument, an unknown option) is answered without the API.
    Parsed as the run will parse it (typer's own click), nothing invoked."""

    def rest(ctx: Any) -> list[str]:  # a group's words after its own options
        protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
        return [*protected, *ctx.args]

    command: Any = typer.main.get_command(app)
    try:
        ctx = command.make_context("dbbackup", list(argv))
        while hasattr(command, "resolve_command") and rest(ctx):  # a group: its subcommand
            _, command, args = command.resolve_command(ctx, rest(ctx))
            ctx = command.make_context(command.name, args, parent=ctx)
    except (UsageError, DbBackupError):  # refused (a callback too): the run reports it itself
        return False
    return True


def _use_local_server() -> None:
    """Point this process (and its children) at the local Prefect server when no API is
    configured; start the server on first use."""
    from prefect_dbbackup.flows import local_server

    if os.environ.get(local_server.OPT_OUT_VARIABLE) == "ephemeral":
        return
    if os.environ.get("PREFECT_API_URL") or local_server.configured_api_url():
        return
    state, started = local_server.ensure_running()
    if started:
        typer.echo(
            f"dbbackup: started a local Prefect server, UI at {state.ui_url} "
            "(`dbbackup server stop` stops it)",
            err=True,
        )
    os.environ.update(local_server.client_environment(state))


class _ExpectedErrorsOnce(logging.Filter):
    """Console only: an expected error (the DbBackupError family) is said once, by
    dbbackup's own last line, without a traceback; the Prefect UI keeps the full record.
    The note that events are still being sent at exit is left out too."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], DbBackupError):
            return False
        # the events of the run are being sent before exit (_run_app drains them): not news
        return not str(record.msg).startswith("Still processing items")


def _quiet_expected_tracebacks() -> None:
    """Add the filter to the console handlers Prefect has set up (not to its API handler)."""
    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            handler.addFilter(_ExpectedErrorsOnce())


def run_cli(app: typer.Typer) -> NoReturn:
    """Run the command of app that sys.argv names, then exit with its code (the console
    script's `main`). `--debug` (anywhere) keeps Prefect's tracebacks of expected errors
    on the console."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    debug = "--debug" in sys.argv[1:]
    sys.argv = [a for a in sys.argv if a != "--debug"]
    needed = api_needed(sys.argv[1:], app)  # parses the command line once
    try:
        if needed:
            _use_local_server()
    except DbBackupError as exc:
        typer.echo(f"dbbackup: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if not debug and needed:
        import prefect.main  # noqa: F401 (sets up logging, the console handler included)

        _quiet_expected_tracebacks()
    if not os.environ.get("PREFECT_API_URL"):
        _exit(_run_app(app, needed))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    updates = {PREFECT_API_URL: os.environ["PREFECT_API_URL"], **_no_heartbeats(sys.argv[1:])}
    with temporary_settings(updates=updates):
        _exit(_run_app(app, needed))


def _no_heartbeats(argv: list[str]) -> dict[Any, None]:
    """Prefect's flow run heartbeats off for the flow runs a command runs in this process
    (docs/performance.md): Prefect ends a run by joining its heartbeat thread, which sleeps
    in steps of a second, so every flow run paid ~0.5 s for it. Its person watches the run;
    a killed process is marked Crashed by flows/crashed_runs. `serve` (its runs are child
    processes with their own settings) and PREFECT_FLOWS_HEARTBEAT_FREQUENCY in the
    environment keep them."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

    words = [a for a in argv if not a.startswith("-")]
    kept = words[:1] == ["serve"] or any(
        name in os.environ
        for name in ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")
    )
    return {} if kept else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}


def _exit(code: int) -> NoReturn:
    """Exit with code. A stopped run can leave a stream's thread inside a compressor (see
    process.until_stopped): then the run's logs are sent and the process ends at once,
    without the interpreter's shutdown, which would wait for that thread or abort."""
    from prefect_dbbackup.blocks.process import left_running

    if left_running():
        handlers = sys.modules.get("prefect.logging.handlers")
        if handlers is not None:
            with contextlib.suppress(Exception):
                handlers.APILogWorker.drain_all(timeout=5)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _end_runs_of_killed_processes() -> None:
    """Runs left Running by a killed dbbackup process end Crashed before this command
    (a restarted `serve` would otherwise skip schedules: their concurrency slot is taken)."""
    from prefect_dbbackup.flows.crashed_runs import mark_dead_runs_crashed

    try:
        names = mark_dead_runs_crashed()
    except httpx.HTTPError:
        return  # the command itself reports an unreachable API
    for name in names:
        typer.echo(
            f"dbbackup: run {printable(name)} was left running by a killed process: marked Crashed",
            err=True,
        )


@contextlib.contextmanager
def _one_client() -> Iterator[None]:
    """One Prefect client for what the command does with the API (Prefect's client context).
    An API that does not answer its version check is left to the command, which says so.
    Without an API URL (DBBACKUP_PREFECT_SERVER=ephemeral) Prefect's own temporary server
    and clients are left as Prefect makes them."""
    from prefect.context import SyncClientContext

    with contextlib.ExitStack() as stack:
        if os.environ.get("PREFECT_API_URL"):
            # Prefect's "Failed to reach API" (RuntimeError) or a transport error: the
            # command says the API is unreachable itself
            with contextlib.suppress(RuntimeError, httpx.HTTPError, OSError):
                stack.enter_context(SyncClientContext.get_or_create())
        yield


def _run_app(app: typer.Typer, needed: bool) -> int:
    """Run the command (typer exits with its code), then send the events it emitted
    before the process ends. A command that uses the API shares one Prefect client (one
    connection pool) for its checks, its block loads and its flow run."""
    try:
        if needed:
            with _one_client():
                _end_runs_of_killed_processes()
                app()
        else:
            app()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        events = sys.modules.get("prefect.events.worker")
        if events is not None:
            events.EventsWorker.drain_all(timeout=10)
    return 0
