"""The `dbbackup` command line: each command runs the matching Prefect flow.

Exit codes: 0 success, 1 some databases failed, 2 every requested database
failed (the users/roles row does not count; see flows/report.failure_exit_code) or
the restore failed, 3 configuration or usage error, 4 authentication/credentials error.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from prefect_dbbackup.flows.text import printable
from prefect_dbbackup.tasks.errors import ConfigError, DbBackupError
from typer._click import Context
from typer._click.exceptions import UsageError  # typer vendors its own click
from typer.core import TyperGroup

if TYPE_CHECKING:
    from prefect_dbbackup.tasks.globals import UsersResult


class _DbBackupGroup(TyperGroup):
    """Usage errors exit 3 (not click's 2, which means 'all failed' here); an unreachable
    Prefect API is a configuration error with a message instead of a traceback."""

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
        except (httpx.HTTPError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "reach API" not in str(exc):
                raise
            from prefect.settings import PREFECT_API_URL

            url = PREFECT_API_URL.value() or "the temporary local API"
            typer.echo(
                f"dbbackup: error: cannot reach the Prefect API at {url}: {exc}. Start it "
                "(prefect server start) or unset PREFECT_API_URL to use a temporary one.",
                err=True,
            )
            raise typer.Exit(ConfigError.exit_code) from None


app = typer.Typer(
    cls=_DbBackupGroup,
    name="dbbackup",
    help="Encrypted PostgreSQL and MySQL/MariaDB backups, run as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StorageOpt = Annotated[str, typer.Option("--storage", help="Backup storage block name.")]
EncryptionOpt = Annotated[str, typer.Option("--encryption", help="age-encryption block name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _fail(exc: BaseException) -> NoReturn:
    code = exc.exit_code if isinstance(exc, DbBackupError) else 2
    typer.echo(f"dbbackup: error: {exc}", err=True)
    raise typer.Exit(code)


def _emit(data: object) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _show_outcomes(
    server: str, report: Any, code: int, as_json: bool, detail: Callable[[Any], str]
) -> NoReturn:
    """Print a run's per-database outcomes (text or --json), then exit with its code."""
    if as_json:
        _emit(
            {
                "server": server,
                "storage": report.storage,
                "exit_code": code,
                "databases": [o.model_dump() for o in report.outcomes],
            }
        )
    else:
        for o in report.outcomes:
            line = f"{o.status:6} {printable(o.database)}  {o.backup_id or ''}  {detail(o)}"
            typer.echo(line.rstrip())
    raise typer.Exit(code)


@app.command()
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Identity file to write (0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Create an age identity (private key) file and print its recipient (public key)."""
    from prefect_dbbackup.blocks.encryption import write_identity_file

    try:
        recipient = write_identity_file(output, force=force)
    except DbBackupError as exc:
        _fail(exc)
    typer.echo(f"wrote {output}; keep it secret, keep a copy offline.", err=True)
    typer.echo(recipient)


@app.command()
def apply(config: Annotated[Path, typer.Argument(help="dbbackup.yaml")]) -> None:
    """Create or update the Prefect blocks described by a config file."""
    from prefect_dbbackup.flows.config import apply_config

    try:
        changes = apply_config(config)
    except DbBackupError as exc:
        _fail(exc)
    for slug, name, status in changes:
        typer.echo(f"{status:9} {slug}/{name}")


@app.command()
def backup(
    server: Annotated[str, typer.Argument(help="postgres-server or mysql-server block name.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Only these databases.")
    ] = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    concurrency: Annotated[int, typer.Option(help="Databases dumped at once.")] = 2,
    as_json: JsonOpt = False,
) -> None:
    """Back up the databases of SERVER (all user databases unless --database is given)."""
    from prefect_dbbackup.flows.backup import backup_server
    from prefect_dbbackup.flows.report import BackupFailed

    try:
        report = backup_server(
            server=server,
            storage=storage,
            encryption=encryption,
            databases=database or None,
            concurrency=concurrency,
        )
        code = 0
    except BackupFailed as exc:
        report, code = exc.report, exc.exit_code
        typer.echo(f"dbbackup: {exc}", err=True)
    except DbBackupError as exc:
        _fail(exc)

    def detail(o: Any) -> str:
        ok = o.status == "ok"
        size = f"{o.raw_bytes / 1e6:.1f} MB -> {o.stored_bytes / 1e6:.1f} MB" if ok else ""
        return f"{size}  {printable(o.error or o.note or '')}"

    _show_outcomes(server, report, code, as_json, detail)


@app.command("list")
def list_cmd(
    server: Annotated[str, typer.Argument(help="Server block name (the series to list).")],
    database: Annotated[str | None, typer.Option("--database", "-d")] = None,
    storage: StorageOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """List the complete backups of SERVER, oldest first."""
    from prefect_dbbackup.blocks.registry import load_storage
    from prefect_dbbackup.tasks.catalog import list_backups

    try:
        backups = list_backups(load_storage(storage), server, database)
    except DbBackupError as exc:
        _fail(exc)
    if as_json:
        _emit(
            [
                {
                    "server": m.server,
                    "database": m.database,
                    "backup_id": m.backup_id,
                    "kind": m.kind,
                    "started_at": m.started_at.isoformat(),
                    "finished_at": m.finished_at.isoformat(),
                    "raw_bytes": m.stats.raw_bytes,
                    "stored_bytes": m.stats.stored_bytes,
                    "sha256": m.stats.sha256,
                    "server_version": m.server_version,
                }
                for m in backups
            ]
        )
        return
    if not backups:
        typer.echo(f"no complete backups of {server}", err=True)
    for m in backups:
        name = printable(m.database) if m.kind == "database" else f"{m.database} (users/roles)"
        typer.echo(
            f"{name:30} {m.backup_id}  {m.finished_at:%Y-%m-%d %H:%M:%S}Z  "
            f"{m.stats.raw_bytes / 1e6:10.1f} MB raw {m.stats.stored_bytes / 1e6:10.1f} MB stored"
        )


@app.command()
def restore(
    server: Annotated[
        str,
        typer.Argument(
            help="Server block to restore into (and, without --from-server, whose backups to use)."
        ),
    ],
    database: Annotated[str, typer.Argument(help="Database whose backup to restore.")],
    into: Annotated[str | None, typer.Option("--into", help="Restore under this name.")] = None,
    backup_id: Annotated[str, typer.Option("--backup-id", help="Backup to restore.")] = "latest",
    replace: Annotated[
        bool, typer.Option("--replace", help="Drop and replace an existing target.")
    ] = False,
    identity_file: Annotated[
        Path | None, typer.Option("--identity-file", "-i", help="age identity file.")
    ] = None,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="PostgreSQL: parallel pg_restore jobs (decrypts to the private work dir first).",
        ),
    ] = 1,
    from_server: Annotated[
        str | None,
        typer.Option(
            "--from-server", help="Restore a backup taken from this server (default: SERVER)."
        ),
    ] = None,
    with_users: Annotated[
        bool,
        typer.Option(
            "--with-users",
            help="Also restore the users/roles backed up with it (PostgreSQL: before the "
            "database, MySQL: after it, as table grants need the tables).",
        ),
    ] = False,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup of DATABASE (the latest unless --backup-id) into SERVER."""
    from prefect_dbbackup.blocks.registry import load_server
    from prefect_dbbackup.flows.restore import restore_database
    from prefect_dbbackup.flows.users import restore_users

    def users() -> UsersResult:
        return restore_users(
            server=server,
            storage=storage,
            encryption=encryption,
            backup_id=backup_id,
            identity_file=str(identity_file.expanduser()) if identity_file else None,
            source_server=from_server,
            for_database=database,
        )

    try:
        users_first = with_users and load_server(server).server_type == "postgres"
        accounts = users() if users_first else None
        result = restore_database(
            server=server,
            database=database,
            storage=storage,
            encryption=encryption,
            backup_id=backup_id,
            target_database=into,
            replace=replace,
            identity_file=str(identity_file.expanduser()) if identity_file else None,
            jobs=jobs,
            source_server=from_server,
        )
        if with_users and not users_first:
            accounts = users()
    except DbBackupError as exc:
        _fail(exc)
    if as_json:
        _emit({**result.model_dump(), **({"users": accounts.model_dump()} if accounts else {})})
    else:
        if accounts:
            _echo_users(accounts)
        typer.echo(
            f"restored {printable(result.database)} backup {result.backup_id} into "
            f"{printable(result.target_database)} in {result.seconds:.1f} s"
        )


def _echo_users(result: UsersResult) -> None:
    verb = "would restore" if result.dry_run else "restored"
    typer.echo(
        f"{verb} {len(result.accounts)} users/roles from backup {result.backup_id}: "
        f"{result.applied} statements applied, {len(result.skipped)} skipped"
    )
    for line in result.skipped:
        typer.echo(f"  skipped {printable(line)}")
    if result.note:
        typer.echo(f"  note: {printable(result.note)}")


@app.command("restore-users")
def restore_users_cmd(
    server: Annotated[str, typer.Argument(help="Server block to restore the users/roles into.")],
    backup_id: Annotated[
        str, typer.Option("--backup-id", help="Users/roles backup (the run's backup id).")
    ] = "latest",
    user: Annotated[
        list[str] | None,
        typer.Option(
            "--user", "-u", help="Only this account (MySQL: NAME for every host, or NAME@HOST)."
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the statements (secrets masked), run none.")
    ] = False,
    identity_file: Annotated[
        Path | None, typer.Option("--identity-file", "-i", help="age identity file.")
    ] = None,
    from_server: Annotated[
        str | None,
        typer.Option("--from-server", help="Use the backups of this server (default: SERVER)."),
    ] = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore users/roles and their grants into SERVER (idempotent: existing accounts are
    updated, grants added; the login the restore runs as is left alone)."""
    from prefect_dbbackup.flows.users import restore_users

    try:
        result = restore_users(
            server=server,
            storage=storage,
            encryption=encryption,
            backup_id=backup_id,
            users=user or None,
            dry_run=dry_run,
            identity_file=str(identity_file.expanduser()) if identity_file else None,
            source_server=from_server,
        )
    except DbBackupError as exc:
        _fail(exc)
    if as_json:
        _emit(result.model_dump())
        return
    if dry_run:
        for statement in result.statements:
            typer.echo(f"{statement};")
    _echo_users(result)


@app.command()
def prune(
    server: Annotated[str, typer.Argument(help="Server block name (the series to prune).")],
    database: Annotated[
        str | None, typer.Option("--database", "-d", help="Only this database's series.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show keep/remove and why; delete nothing.")
    ] = False,
    storage: StorageOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Apply SERVER's retention policy to its backups (see docs/retention.md)."""
    from prefect_dbbackup.flows.prune import prune_backups

    try:
        items = prune_backups(server=server, storage=storage, database=database, dry_run=dry_run)
    except DbBackupError as exc:
        _fail(exc)
    if as_json:
        _emit([i.model_dump(exclude={"objects"}) for i in items])
        return
    if not items:
        typer.echo(f"no backups of {server}", err=True)
    for i in items:
        decision = "keep  " if i.keep else "remove"
        outcome = "" if i.outcome in ("kept", "removed", "would remove") else f"  [{i.outcome}]"
        typer.echo(
            f"{decision} {printable(i.database):24} {i.backup_id}  {i.time:%Y-%m-%d %H:%M}Z  "
            f"{', '.join(i.reasons)}{outcome}"
        )


@app.command()
def verify(
    server: Annotated[str, typer.Argument(help="Server block whose backups to verify.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Only these databases.")
    ] = None,
    identity_file: Annotated[
        Path | None, typer.Option("--identity-file", "-i", help="age identity file.")
    ] = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore the latest backups of SERVER into scratch databases, check them, drop them."""
    from prefect_dbbackup.flows.verify import VerifyFailed, verify_backups

    try:
        report = verify_backups(
            server=server,
            storage=storage,
            encryption=encryption,
            databases=database or None,
            identity_file=str(identity_file.expanduser()) if identity_file else None,
        )
        code = 0
    except VerifyFailed as exc:
        report, code = exc.report, exc.exit_code
        typer.echo(f"dbbackup: {exc}", err=True)
    except DbBackupError as exc:
        _fail(exc)

    def detail(o: Any) -> str:
        ok = f"{o.tables} tables  {o.rows} rows  ({o.checked})"
        return ok if o.status == "ok" else printable(o.error or "")

    _show_outcomes(server, report, code, as_json, detail)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="dbbackup.yaml")]
limits_app = typer.Typer(cls=_DbBackupGroup, help="Per-database-host concurrency limits.")
automations_app = typer.Typer(cls=_DbBackupGroup, help="Prefect automations (alerts).")
app.add_typer(limits_app, name="limits")
app.add_typer(automations_app, name="automations")


@app.command()
def serve(config: ConfigOpt = Path("dbbackup.yaml")) -> None:
    """Run the scheduled backup, verify and prune deployments of CONFIG in this process."""
    from prefect_dbbackup.flows.operations import serve as serve_config

    try:
        serve_config(config)
    except DbBackupError as exc:
        _fail(exc)


@limits_app.command("apply")
def limits_apply(config: ConfigOpt = Path("dbbackup.yaml")) -> None:
    """Create or update the dbbackup-host-HOST limits of CONFIG's `limits` section."""
    from prefect_dbbackup.flows.operations import host_limits, read_operations
    from prefect_dbbackup.tasks.limits import apply_host_limits

    try:
        limits = host_limits(read_operations(config))
    except DbBackupError as exc:
        _fail(exc)
    if not limits:
        _fail(ConfigError(f"{config}: no `limits` section (dumps_per_host or hosts) to apply"))
    for name, limit, status in apply_host_limits(limits):
        typer.echo(f"{status:9} {name} = {limit}")


@automations_app.command("apply")
def automations_apply(
    notify: Annotated[
        str, typer.Option("--notify", help="Notification block as TYPE/NAME (slack-webhook/ops).")
    ],
    config: ConfigOpt = Path("dbbackup.yaml"),
    directory: Annotated[
        Path | None, typer.Option("--dir", help="Automation files (default: shipped ones).")
    ] = None,
) -> None:
    """Create or update the shipped automations; per-server ones for each server of CONFIG."""
    from prefect_dbbackup.flows.automations import (
        AUTOMATIONS_DIR,
        apply_automations,
        load_automations,
    )
    from prefect_dbbackup.flows.operations import read_operations

    try:
        servers = list(read_operations(config).servers)
        automations = load_automations(directory or AUTOMATIONS_DIR, servers, notify)
    except DbBackupError as exc:
        _fail(exc)
    for name, status in apply_automations(automations):
        typer.echo(f"{status:9} {name}")


@app.command()
def fleet(
    server: Annotated[
        list[str] | None, typer.Option("--server", "-s", help="Only these servers.")
    ] = None,
    max_parallel: Annotated[int, typer.Option(help="Backup runs in flight at once.")] = 4,
) -> None:
    """Run the backup-server deployment of every server (or --server), wait, report."""
    import asyncio

    from prefect_dbbackup.flows.fleet import FleetFailed, backup_fleet

    try:
        runs = asyncio.run(backup_fleet(servers=server or None, max_parallel=max_parallel))
        code = 0
    except FleetFailed as exc:
        runs, code = exc.runs, 1
    except DbBackupError as exc:
        _fail(exc)
    for r in runs:
        message = printable(r.message or "")
        line = f"{r.state:10} {printable(r.server)}  {r.flow_run or ''}  {message}"
        typer.echo(line.rstrip())
    raise typer.Exit(code)


def main() -> None:
    """Console script entry point."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    sys.exit(app())
