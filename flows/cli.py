"""The `dbbackup` command line: each command runs the matching Prefect flow.

Exit codes: 0 success, 1 some databases failed, 2 every requested database
failed (the users/roles row does not count; see flows/backup_report.failure_exit_code) or
the restore failed, 3 configuration or usage error, 4 authentication/credentials error.
The process around the commands (the local Prefect server, errors to exit codes, the
console log filter) is flows/cli_runtime.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from prefect_dbbackup.blocks.errors import ConfigError, DbBackupError
from prefect_dbbackup.flows.cli_runtime import DbBackupGroup, fail, needs_api, run_cli
from prefect_dbbackup.flows.text import printable
from prefect_dbbackup.tasks.sizes import size

if TYPE_CHECKING:
    from prefect_dbbackup.tasks.users import UsersResult

app = typer.Typer(
    cls=DbBackupGroup,
    name="dbbackup",
    help="Encrypted PostgreSQL and MySQL/MariaDB backups, run as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StorageOpt = Annotated[str, typer.Option("--storage", help="Backup storage block name.")]
EncryptionOpt = Annotated[str, typer.Option("--encryption", help="age-encryption block name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]


def _readable_identity(path: Path | None) -> Path | None:
    """An --identity-file that is no readable age identity file is refused (exit 3, naming
    it) while the command line is read: before any flow run."""
    if path is not None:
        from prefect_dbbackup.blocks.encryption import read_identity_file

        read_identity_file(path)
    return path


IdentityOpt = Annotated[
    Path | None,
    typer.Option("--identity-file", "-i", help="age identity file.", callback=_readable_identity),
]
AllowUnsignedOpt = Annotated[
    bool,
    typer.Option(
        "--allow-unsigned",
        help="With --backup-id only: also accept that backup if its manifest is unsigned (taken "
        "before manifests were signed). Never picks the latest, never accepts a bad signature "
        "or a manifest that does not match its location.",
    ),
]


def _even_if_partly(run: Callable[..., Any], **kwargs: Any) -> tuple[Any, DbBackupError | None]:
    """Run a restore flow; one that ended with some users statements refused still gives
    its report (to print before the error line) and that error."""
    from prefect_dbbackup.tasks.users import UsersPartlyRestored

    try:
        return run(**kwargs), None
    except UsersPartlyRestored as exc:
        return exc.report, exc


def _blocks_exist(**names: str | None) -> None:
    """The command's blocks exist (else the error, with a did-you-mean, and exit 3) before
    its flow runs: a typo makes no Failed run in the UI."""
    from prefect_dbbackup.blocks.registry import check_names

    check_names(**names)  # its ConfigError is said in one line by the command group


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
@needs_api(False)
def keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Identity file to write (0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Create an age identity (private key) file and print its recipient (public key)."""
    from prefect_dbbackup.blocks.encryption import write_identity_file

    recipient = write_identity_file(output, force=force)
    typer.echo(f"wrote {output}; keep it secret, keep a copy offline.", err=True)
    typer.echo(recipient)


@app.command("signing-keygen")
@needs_api(False)
def signing_keygen(
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Signing key file to write (0600).")
    ],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Create an Ed25519 manifest signing key file and print its public (verify) key."""
    from prefect_dbbackup.blocks.signing import write_signing_key_file

    public = write_signing_key_file(output, force=force)
    typer.echo(
        f"wrote {output}; set it as manifest_signing_key_file of the storage on backup workers, "
        "and the public key below in manifest_verify_keys of every storage block that reads.",
        err=True,
    )
    typer.echo(public)


@app.command("dedup-keygen")
@needs_api(False)
def dedup_keygen(
    output: Annotated[Path, typer.Option("--output", "-o", help="Dedup key file to write (0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Create a dedup key file for a deduplicating storage (docs/dedup.md)."""
    from prefect_dbbackup.blocks.encryption import write_secret_file
    from prefect_dbbackup.blocks.storage_keys import new_dedup_key

    write_secret_file(output, new_dedup_key() + "\n", force=force)
    typer.echo(
        f"wrote {output}; set it as dedup_key_file of the storage on every backup worker "
        "that writes to it (`dbbackup apply` makes a key itself when a storage has none).",
        err=True,
    )


@app.command()
@needs_api(False)
def init(
    directory: Annotated[
        Path, typer.Option("--dir", help="Directory for dbbackup.yaml, .dbbackup/, .gitignore.")
    ] = Path(),
    postgres_port: Annotated[
        int, typer.Option(help="Port to look for PostgreSQL on.", min=1, max=65535)
    ] = 5432,
    mysql_port: Annotated[
        int, typer.Option(help="Port to look for MariaDB/MySQL on.", min=1, max=65535)
    ] = 3306,
) -> None:
    """Create the keys, a starter dbbackup.yaml for the local servers, and a .gitignore
    entry for the keys; keeps every file that exists."""
    from prefect_dbbackup.flows.init import CONFIG, init_directory

    report = init_directory(directory, {"postgres": postgres_port, "mysql": mysql_port})
    for note in report.notes:
        typer.echo(note, err=True)
    for status, path in report.files:
        typer.echo(f"{status:9} {printable(str(directory / path))}")
    if report.servers:
        config = printable(str(directory / CONFIG))
        typer.echo(
            f"next: dbbackup apply {config} && dbbackup backup {report.servers[0]}", err=True
        )


@app.command()
@needs_api(True)
def apply(
    config: Annotated[Path, typer.Argument(help="dbbackup.yaml")],
    identity_file: Annotated[
        Path | None,
        typer.Option(
            "--identity-file",
            "-i",
            help="age identity that opens a deduplicating storage's key copy, when its "
            "block lost the key (docs/dedup.md).",
        ),
    ] = None,
) -> None:
    """Create or update the Prefect blocks described by a config file."""
    from prefect_dbbackup.flows.config import apply_config

    notes: list[str] = []
    changes = apply_config(config, identity_file.expanduser() if identity_file else None, notes)
    for note in notes:
        typer.echo(note, err=True)
    for slug, name, status in changes:
        typer.echo(f"{status:9} {slug}/{name}")


@app.command()
@needs_api(True)
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
    from prefect_dbbackup.flows.backup_report import BackupFailed
    from prefect_dbbackup.flows.prechecks import databases_on_server

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    databases_on_server(server, database)
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

    def detail(o: Any) -> str:
        ok = o.status == "ok"
        sizes = f"{size(o.raw_bytes)} -> {size(o.stored_bytes)}" if ok else ""
        return f"{sizes}  {printable(o.error or o.note or '')}"

    _show_outcomes(server, report, code, as_json, detail)


@app.command()
@needs_api(True)
def archive(
    server: Annotated[str, typer.Argument(help="mysql-server block name (with pitr: true).")],
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
) -> None:
    """Store SERVER's binary log written since the last archive run (point-in-time
    recovery, docs/pitr.md). Exit 1 when part of it was lost before it was archived."""
    from prefect_dbbackup.flows.archive import archive_server

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    manifest = archive_server(server=server, storage=storage, encryption=encryption)
    if manifest is None:
        typer.echo(f"{server}: nothing new in the binary log since the last archive run")
        return
    for piece in manifest.pieces:
        last = piece.last_event_at
        typer.echo(
            f"{printable(piece.file):20} {piece.start:>12}..{piece.end:<12} "
            f"{size(piece.stats.raw_bytes):>10}  {piece.events} events, last "
            f"{f'{last:%Y-%m-%d %H:%M:%S}Z' if last else '-'}"
        )


@app.command("list")
@needs_api(True)
def list_cmd(
    server: Annotated[str, typer.Argument(help="Server block name (the series to list).")],
    database: Annotated[str | None, typer.Option("--database", "-d")] = None,
    storage: StorageOpt = "default",
    pitr: Annotated[
        bool,
        typer.Option("--pitr", help="The binary log archive: restorable windows and gaps."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """List the backups of SERVER, oldest first, with their signature status."""
    from prefect_dbbackup.blocks.registry import load_storage
    from prefect_dbbackup.tasks.catalog import scan_backups

    sto = load_storage(storage)
    if pitr:
        _list_pitr(sto, server, database, as_json)
        return
    entries = scan_backups(sto, server, database)
    if not entries:
        _require_server(sto, server)
    if as_json:
        _emit([_listed(e) for e in entries])
        return
    if not entries:
        typer.echo(f"no complete backups of {server}", err=True)
    for e in entries:
        trust = (
            e.trust if e.trust == "signed" else f"{e.trust.upper()}: {printable(e.problem or '')}"
        )
        m = e.manifest
        if m is None or e.trust == "invalid":  # what it says is not to be believed
            typer.echo(f"{printable(e.database):30} {e.backup_id}  {trust}")
            continue
        name = printable(m.database) + ("" if m.kind == "database" else " (users/roles)")
        typer.echo(
            f"{name:30} {m.backup_id}  {m.finished_at:%Y-%m-%d %H:%M:%S}Z  "
            f"{size(m.stats.raw_bytes):>10} raw {size(m.stats.stored_bytes):>10} stored"
            f"  {trust}"
        )


def _list_pitr(storage: Any, server: str, database: str | None, as_json: bool) -> None:
    """list --pitr: the archive's stretches, its gaps, and the windows a restore can reach.
    Exit 1 when the archive has a gap."""
    from prefect_dbbackup.tasks.archive import read_archive
    from prefect_dbbackup.tasks.base_backup import base_backups
    from prefect_dbbackup.tasks.pitr import pitr_view
    from prefect_dbbackup.tasks.restore_cluster import cluster_windows

    state = read_archive(storage, server)  # read once, for both views
    view = pitr_view(storage, server, database, state)
    stored = base_backups(storage, server).all()
    clusters = cluster_windows(
        [r.manifest for r in stored if r.problem is None and r.manifest is not None],
        state.trusted,
    )
    refused = view.refused + [f"{r.key}: {r.problem}" for r in stored if r.problem is not None]

    def when(t: Any) -> str:
        return f"{t:%Y-%m-%d %H:%M:%S}Z" if t else "-"

    if as_json:
        _emit(
            {
                "stretches": [
                    {
                        "from": f"{s.first.file}:{s.first.start}",
                        "to": f"{s.last.file}:{s.last.end}",
                        "first_event_at": when(s.first_event_at),
                        "last_event_at": when(s.last_event_at),
                    }
                    for s in view.stretches
                ],
                "windows": [
                    {
                        "database": w.database,
                        "since": when(w.since),
                        "until": when(w.until),
                        "backup_id": w.backup_id,
                    }
                    for w in view.windows
                ],
                "clusters": [
                    {
                        "since": when(c.since),
                        "until": when(c.until),
                        "base_backup_id": c.base_backup_id,
                    }
                    for c in clusters
                ],
                "gaps": view.gaps,
                "refused": refused,
            }
        )
    else:
        if not view.stretches:
            typer.echo(f"no log archived for {server} (run `dbbackup archive {server}`)")
        for s in view.stretches:
            times = (  # WAL pieces carry no event times: the cluster line has the window
                f"  events {when(s.first_event_at)} .. {when(s.last_event_at)}"
                if s.first_event_at or s.last_event_at
                else ""
            )
            typer.echo(f"archive  {s.describe()}{times}  ({len(s.pieces)} pieces)")
        for w in view.windows:
            typer.echo(
                f"{printable(w.database):30} restorable to any second {when(w.since)} .. "
                f"{when(w.until)}  (from backup {w.backup_id})"
            )
        for c in clusters:
            typer.echo(
                f"{'(whole cluster)':30} restorable to any second {when(c.since)} .. "
                f"{when(c.until)}  (from base backup {c.base_backup_id})"
            )
        for text in refused:
            typer.echo(f"REFUSED {printable(text)}", err=True)
        for text in view.gaps:
            typer.echo(f"GAP {printable(text)}", err=True)
    if view.gaps:
        raise typer.Exit(1)


def _require_server(storage: Any, server: str) -> list[str]:
    """The server block names; exit 3 with a did-you-mean when `server` is neither one of
    them nor a series in the storage (a server never backed up, a lost one's series, or a
    typo?)."""
    from prefect_dbbackup.blocks.registry import server_names, unknown_server
    from prefect_dbbackup.tasks.layout import series_prefix

    names = server_names()
    if server not in names and not storage.list_keys(series_prefix(server)):
        fail(unknown_server(server, names))
    return names


@app.command()
@needs_api(True)
def status(
    server: Annotated[
        str | None, typer.Argument(help="Only this server (default: every server).")
    ] = None,
    interval_hours: Annotated[
        float | None,
        typer.Option(
            "--interval-hours",
            help="Time between backups that `late` is judged by (default: the server's "
            "backup-server deployment schedule, else 24).",
        ),
    ] = None,
    margin_hours: Annotated[
        float, typer.Option("--margin-hours", help="Grace added to the interval.")
    ] = 2.0,
    prometheus: Annotated[
        Path | None,
        typer.Option("--prometheus", help="Also write the figures as Prometheus text to FILE."),
    ] = None,
    storage: StorageOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Health of the backups: per database the newest good backup, its age, size, verify
    result and trust; `late` past the schedule. Exit 1 when a row is not ok."""
    from prefect_dbbackup.blocks.registry import load_storage, server_names
    from prefect_dbbackup.flows.health import archive_lines, health_status

    sto = load_storage(storage)
    names = _require_server(sto, server) if server is not None else None
    rows, lines = health_status(sto, server, names, interval_hours, margin_hours, prometheus)
    archives, archives_ok = archive_lines(sto, names if names is not None else server_names())
    if as_json:
        _emit(rows)
    else:
        for line in [*lines, *archives]:
            typer.echo(line)
    raise typer.Exit(0 if archives_ok and all(r["state"] == "ok" for r in rows) else 1)


def _listed(e: Any) -> dict[str, Any]:
    """One `list --json` row: where the manifest sits, its trust, and what it says."""
    row = {
        "server": e.server,
        "database": e.database,
        "backup_id": e.backup_id,
        "trust": e.trust,
        "problem": e.problem,
        "signed_by": e.signed_by,
    }
    m = e.manifest
    if m is not None and e.trust != "invalid":
        row |= {
            "kind": m.kind,
            "started_at": m.started_at.isoformat(),
            "finished_at": m.finished_at.isoformat(),
            "raw_bytes": m.stats.raw_bytes,
            "stored_bytes": m.stats.stored_bytes,
            "sha256": m.stats.sha256,
            "server_version": m.server_version,
        }
    return row


@app.command()
@needs_api(True)
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
    identity_file: IdentityOpt = None,
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
    allow_unsigned: AllowUnsignedOpt = False,
    to_time: Annotated[
        str | None,
        typer.Option(
            "--to-time",
            help="Point-in-time recovery (MariaDB, pitr: true): DATABASE as it was at this "
            "second (ISO 8601 with a zone, e.g. 2026-12-07T10:41:06Z), or `latest` (as far as "
            "the archived binary log goes), into the new database --into.",
        ),
    ] = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore a backup of DATABASE (the latest signed one unless --backup-id) into SERVER."""
    from prefect_dbbackup.flows.prechecks import restore_inputs
    from prefect_dbbackup.flows.restore import restore_database

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    if to_time is not None:
        others = {
            "--backup-id": backup_id != "latest",
            "--replace": replace,
            "--jobs": jobs != 1,
            "--allow-unsigned": allow_unsigned,
            "--with-users": with_users,
        }
        refused = [option for option, given in others.items() if given]
        _restore_to_time(
            server,
            database,
            to_time,
            into,
            refused,
            identity_file,
            storage,
            encryption,
            from_server,
        )
        return
    restore_inputs(
        server,
        database,
        storage=storage,
        target=into or database,
        replace=replace,
        backup_id=backup_id,
        source_server=from_server,
        allow_unsigned=allow_unsigned,
    )
    result, partly = _even_if_partly(
        restore_database,
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
        allow_unsigned=allow_unsigned,
        with_users=with_users,
    )
    if as_json:
        users = {"users": result.users.model_dump()} if result.users else {}
        _emit({**result.model_dump(exclude={"users"}), **users})
    else:
        if result.users:
            _echo_users(result.users)
        typer.echo(
            f"restored {printable(result.database)} backup {result.backup_id} into "
            f"{printable(result.target_database)} in {result.seconds:.1f} s"
        )
        for line in result.skipped:  # database properties the target did not take
            typer.echo(f"  skipped {printable(line)}")
    if partly is not None:
        fail(partly)


def _to_time(text: str) -> Any:
    """--to-time: a time with a zone, or None for `latest`; exit 3 for anything else."""
    from datetime import datetime

    if text == "latest":
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        fail(
            ConfigError(
                f"--to-time {text!r} is not a time with a zone: write it like "
                "2026-12-07T10:41:06Z (UTC) or 2026-12-07T11:41:06+01:00, or `latest`"
            )
        )
    return when


@app.command("base-backup")
@needs_api(True)
def base_backup(
    server: Annotated[str, typer.Argument(help="postgres-server block name (with pitr: true).")],
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
) -> None:
    """A physical base backup of SERVER's whole cluster (PostgreSQL point-in-time recovery,
    docs/pitr.md), then an archive run of its WAL."""
    from prefect_dbbackup.flows.base_backup import base_backup_server

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    m = base_backup_server(server=server, storage=storage, encryption=encryption)
    typer.echo(
        f"base backup {m.run_id} of {server}: {size(m.stats.raw_bytes)} -> "
        f"{size(m.stats.stored_bytes)}, WAL {m.start_lsn} .. {m.end_lsn} (timeline {m.timeline})"
    )


@app.command("restore-cluster")
@needs_api(True)
def restore_cluster_cmd(
    server: Annotated[str, typer.Argument(help="The server whose base backups and WAL to use.")],
    to_time: Annotated[
        str,
        typer.Option(
            "--to-time",
            help="The cluster as it was at this second (ISO 8601 with a zone, e.g. "
            "2026-12-07T10:41:06Z), or `latest` (as far as the archived WAL goes).",
        ),
    ],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="A new (or empty) directory for the cluster.")
    ],
    port: Annotated[
        int | None, typer.Option("--port", help="Set this port in the cluster's settings.")
    ] = None,
    identity_file: IdentityOpt = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
) -> None:
    """Write SERVER's PostgreSQL cluster as of --to-time into --data-dir (point-in-time
    recovery, docs/pitr.md): start it with pg_ctl, as the user that owns the directory, to
    replay the WAL up to the time; it then promotes itself."""
    from prefect_dbbackup.flows.restore_cluster import restore_cluster

    _blocks_exist(storage=storage, encryption=encryption)
    report = restore_cluster(
        server=server,
        data_dir=str(data_dir),
        to_time=_to_time(to_time),
        port=port,
        storage=storage,
        encryption=encryption,
        identity_file=str(identity_file.expanduser()) if identity_file else None,
    )
    typer.echo(
        f"wrote the cluster of {server} as of {to_time} into {printable(report.data_dir)}: base "
        f"backup {report.base_backup_id} and {report.wal_segments} WAL segment(s) in "
        f"{report.seconds:.1f} s. Start it to replay them: pg_ctl -D "
        f"{printable(report.data_dir)} start"
    )


def _restore_to_time(
    server: str,
    database: str,
    to_time: str,
    into: str | None,
    refused: list[str],
    identity_file: Path | None,
    storage: str = "default",
    encryption: str = "default",
    from_server: str | None = None,
) -> None:
    """restore --to-time: checked options, then the restore_to_time flow."""

    from prefect_dbbackup.blocks.errors import TargetExists
    from prefect_dbbackup.blocks.registry import load_server
    from prefect_dbbackup.flows.prechecks import restore_inputs
    from prefect_dbbackup.flows.restore_to_time import refuse_whole_cluster_engines, restore_to_time

    if refused:
        fail(ConfigError(f"--to-time takes none of {', '.join(refused)}"))
    into = into or database  # a database that exists is refused (no --replace here)
    when = _to_time(to_time)
    refuse_whole_cluster_engines(load_server(server), from_server or server)
    try:
        restore_inputs(
            server,
            database,
            storage=storage,
            target=into,
            replace=False,
            backup_id="latest",
            source_server=from_server,
            allow_unsigned=False,
        )
    except TargetExists:
        fail(
            TargetExists(
                f"database {into!r} already exists on {server}: a restore to a time goes into "
                "a new database: name one with --into NEW_NAME"
            )
        )
    report = restore_to_time(
        server=server,
        database=database,
        to_time=when,
        target_database=into,
        storage=storage,
        encryption=encryption,
        identity_file=str(identity_file.expanduser()) if identity_file else None,
        source_server=from_server,
    )
    last = report.last_applied_at
    typer.echo(
        f"restored {printable(database)} into {printable(into)} as of "
        f"{to_time}: backup {report.backup_id} and {report.transactions} transaction(s) of "
        f"the binary log (last committed {f'{last:%Y-%m-%d %H:%M:%S}Z' if last else '-'}, "
        f"up to {report.position}) in {report.seconds:.1f} s"
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
@needs_api(True)
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
    identity_file: IdentityOpt = None,
    from_server: Annotated[
        str | None,
        typer.Option("--from-server", help="Use the backups of this server (default: SERVER)."),
    ] = None,
    allow_unsigned: AllowUnsignedOpt = False,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore users/roles and their grants into SERVER (idempotent: existing accounts are
    updated, grants added; the login the restore runs as is left alone)."""
    from prefect_dbbackup.flows.users import restore_users

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    result, partly = _even_if_partly(
        restore_users,
        server=server,
        storage=storage,
        encryption=encryption,
        backup_id=backup_id,
        users=user or None,
        dry_run=dry_run,
        identity_file=str(identity_file.expanduser()) if identity_file else None,
        source_server=from_server,
        allow_unsigned=allow_unsigned,
    )
    if as_json:
        _emit(result.model_dump())
    else:
        if dry_run:
            for statement in result.statements:
                typer.echo(f"{statement};")
        _echo_users(result)
    if partly is not None:
        fail(partly)


@app.command()
@needs_api(True)
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

    _blocks_exist(server=server, storage=storage)
    items = prune_backups(server=server, storage=storage, database=database, dry_run=dry_run)
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
@needs_api(True)
def verify(
    server: Annotated[str, typer.Argument(help="Server block whose backups to verify.")],
    database: Annotated[
        list[str] | None, typer.Option("--database", "-d", help="Only these databases.")
    ] = None,
    identity_file: IdentityOpt = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Restore the latest backups of SERVER into scratch databases, check them, drop them."""
    from prefect_dbbackup.flows.verify import VerifyRunFailed, verify_backups

    _blocks_exist(server=server, storage=storage, encryption=encryption)
    try:
        report = verify_backups(
            server=server,
            storage=storage,
            encryption=encryption,
            databases=database or None,
            identity_file=str(identity_file.expanduser()) if identity_file else None,
        )
        code = 0
    except VerifyRunFailed as exc:
        report, code = exc.report, exc.exit_code
        typer.echo(f"dbbackup: {exc}", err=True)

    def detail(o: Any) -> str:
        ok = f"{o.tables} tables  {o.rows} rows  ({o.checked})"
        return ok if o.status == "ok" else printable(o.error or "")

    _show_outcomes(server, report, code, as_json, detail)


@app.command()
@needs_api(True)
def check(
    server: Annotated[
        str | None, typer.Argument(help="Only the backups of this server (default: all).")
    ] = None,
    read_data: Annotated[
        bool,
        typer.Option(
            "--read-data", help="Also download, decrypt and check every chunk (needs the identity)."
        ),
    ] = False,
    identity_file: IdentityOpt = None,
    storage: StorageOpt = "default",
    encryption: EncryptionOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Check that every chunk the backups name is stored (--read-data: and intact); exit 1
    naming the broken backups (see docs/dedup.md)."""
    from prefect_dbbackup.flows.check import CheckFailed, check_backups, summary_lines

    _blocks_exist(storage=storage, encryption=encryption if read_data else None)
    try:
        report, error = (
            check_backups(
                server=server,
                storage=storage,
                read_data=read_data,
                encryption=encryption,
                identity_file=str(identity_file.expanduser()) if identity_file else None,
            ),
            None,
        )
    except CheckFailed as exc:
        report, error = exc.report, exc
    if as_json:
        _emit(report.model_dump())
    else:
        for line in summary_lines(report):
            typer.echo(line)
        for f in report.findings:
            typer.echo(
                f"{f.problem}: {printable(f.what)} ({printable(f.detail)}); breaks "
                f"{', '.join(printable(b) for b in f.backups)}"
            )
    if error is not None:
        fail(error)


ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="dbbackup.yaml")]
limits_app = typer.Typer(cls=DbBackupGroup, help="Per-database-host concurrency limits.")
automations_app = typer.Typer(cls=DbBackupGroup, help="Prefect automations (alerts).")
app.add_typer(limits_app, name="limits")
app.add_typer(automations_app, name="automations")


@app.command()
@needs_api(True)
def serve(config: ConfigOpt = Path("dbbackup.yaml")) -> None:
    """Run the scheduled backup, verify, prune and check deployments of CONFIG in this process."""
    from prefect_dbbackup.flows.operations import serve as serve_config

    serve_config(config)


@app.command()
@needs_api(True)
def deploy(
    config: Annotated[
        Path, typer.Argument(help="Config whose servers and `schedules:` to deploy.")
    ] = Path("dbbackup.yaml"),
    pool: Annotated[str, typer.Option("--pool", help="Work pool (created if missing).")] = (
        "dbbackup"
    ),
) -> None:
    """Create or update the deployments of CONFIG in a work pool; report the stale ones."""
    from prefect_dbbackup.flows.deploy import deploy as deploy_config

    changes = deploy_config(config, pool)
    for c in changes:
        typer.echo(
            f"{c.status:9} {printable(c.name)}" + (f"  ({printable(c.detail)})" if c.detail else "")
        )
    counts = {
        s: sum(c.status == s for c in changes[1:])
        for s in ("created", "updated", "unchanged", "stale")
    }
    typer.echo(", ".join(f"{n} {s}" for s, n in counts.items()))


@limits_app.command("apply")
@needs_api(True)
def limits_apply(config: ConfigOpt = Path("dbbackup.yaml")) -> None:
    """Create or update the dbbackup-host-HOST limits of CONFIG's `limits` section."""
    from prefect_dbbackup.flows.operations import host_limits, read_operations
    from prefect_dbbackup.tasks.limits import apply_host_limits

    limits = host_limits(read_operations(config))
    if not limits:
        raise ConfigError(f"{config}: no `limits` section (dumps_per_host or hosts) to apply")
    for name, limit, status in apply_host_limits(limits):
        typer.echo(f"{status:9} {name} = {limit}")


@automations_app.command("apply")
@needs_api(True)
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

    servers = list(read_operations(config).servers)
    automations = load_automations(directory or AUTOMATIONS_DIR, servers, notify)
    for name, status in apply_automations(automations):
        typer.echo(f"{status:9} {name}")


@app.command()
@needs_api(True)
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
        runs, code = exc.report, 1
    for r in runs:
        message = printable(r.message or "")
        line = f"{r.state:10} {printable(r.server)}  {r.flow_run or ''}  {message}"
        typer.echo(line.rstrip())
    raise typer.Exit(code)


server_app = typer.Typer(cls=DbBackupGroup, help="The local Prefect server dbbackup uses.")
app.add_typer(server_app, name="server")


def _print_server(state: Any) -> None:
    from prefect_dbbackup.flows import local_server

    typer.echo(f"url      {state.ui_url}  (API {state.api_url})")
    typer.echo(f"pid      {state.pid}")
    typer.echo(f"prefect  {state.prefect_version}")
    typer.echo(f"uptime   {int(time.time() - state.started_at)} s")
    typer.echo(f"api-auth {local_server.secret_path()}  (the UI asks for its content)")


@server_app.command("start")
@needs_api(False)
def server_start() -> None:
    """Start the local Prefect server (if it is not running) and show where it is."""
    from prefect_dbbackup.flows import local_server

    state, _ = local_server.ensure_running()
    _print_server(state)


@server_app.command("stop")
@needs_api(False)
def server_stop() -> None:
    """Stop the local Prefect server."""
    from prefect_dbbackup.flows import local_server

    state = local_server.stop()
    typer.echo("stopped" if state else "not running")


@server_app.command("status")
@needs_api(False)
def server_status() -> None:
    """Show the local Prefect server (URL, PID, version, uptime); exit 1 when it is down."""
    from prefect_dbbackup.flows import local_server

    state = local_server.status()
    if state is None:
        typer.echo(f"not running (state in {local_server.state_dir()})")
        raise typer.Exit(1)
    _print_server(state)


def main() -> None:
    """Console script entry point: the commands above, run by flows/cli_runtime.run_cli."""
    run_cli(app)
