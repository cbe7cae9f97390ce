"""`dbbackup init`: the files a first backup needs, in one directory.

The age identity and the manifest signing key (`.dbbackup/`, 0600), a starter
`dbbackup.yaml` naming the servers that answered on this machine (blocks/probe.py), and
a `.gitignore` entry for the keys. Running it again keeps every file that exists (a key
is never replaced) and adds the `.gitignore` entry only once. No target is written
through a symbolic link: one planted at any of them (or a FIFO, a device) refuses the
whole run before anything is written.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from prefect_dbbackup.blocks.encryption import (
    read_identity_file,
    write_identity_file,
    write_secret_file,
)
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.blocks.probe import LOCAL_ENGINES, FoundServer, addresses, probe
from prefect_dbbackup.blocks.signing import load_signing_key, write_signing_key_file

KEY_DIR = ".dbbackup"
IDENTITY = f"{KEY_DIR}/identity.txt"
SIGNING_KEY = f"{KEY_DIR}/signing.key"
CONFIG = "dbbackup.yaml"
GITIGNORE = ".gitignore"
IGNORE_ENTRY = f"/{KEY_DIR}/"
IGNORE_SAME = {KEY_DIR, f"{KEY_DIR}/", f"/{KEY_DIR}", IGNORE_ENTRY}  # lines that ignore it too

HEADER = """\
# dbbackup configuration, written by `dbbackup init` for the servers that answered here.
# `dbbackup apply dbbackup.yaml` turns it into Prefect blocks. Reference: docs/configuration.md
# Never write a password here: ${VAR} is read from the environment by `dbbackup apply`
# and stored only in the block's secret field. Relative paths are relative to this file.
"""
FOOTER = f"""\
storage:
  default:
    type: local
    path: ./backups
    manifest_signing_key_file: ./{SIGNING_KEY}
encryption:
  default:
    identity_file: ./{IDENTITY}   # recipients: the identity's public key
"""


@dataclass
class InitReport:
    """What init did to each file (status, path relative to the directory) and notes."""

    files: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)  # the names in a config written now


def _refuse_foreign(directory: Path) -> None:
    """Stop before writing anything if a target is a symbolic link, or not what init would
    make there (a FIFO at a key path would make a read wait forever)."""
    for relative in (KEY_DIR, IDENTITY, SIGNING_KEY, CONFIG, GITIGNORE):
        path = directory / relative
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        if stat.S_ISLNK(mode):
            raise ConfigError(
                f"{path} is a symbolic link: init never writes through one "
                "(remove it, or choose another --dir); nothing was written"
            )
        if not (stat.S_ISDIR(mode) if relative == KEY_DIR else stat.S_ISREG(mode)):
            kind = "a directory" if relative == KEY_DIR else "a regular file"
            raise ConfigError(f"{path} is not {kind}: remove it; nothing was written")


def _server_entry(found: FoundServer) -> str:
    engine = found.engine
    variable = engine.name.upper().replace("-", "_") + "_PASSWORD"
    lines = [
        f"  {engine.name}:   # {engine.label}",
        f"    type: {engine.config_type}",
        f"    host: {json.dumps(found.host)}",
    ]
    if not found.host.startswith("/") or engine.socket_host_is_dir:
        lines.append(f"    port: {found.port}")
    lines += [
        f"    user: {engine.user}",
        f'    # password: "${{{variable}}}"   # if the login needs one: export {variable}',
        "    retention: {keep_last: 3, keep_daily: 7, keep_weekly: 4, keep_monthly: 12}",
    ]
    return "\n".join(lines) + "\n"


def starter_config(found: list[FoundServer]) -> str:
    """The text of a starter dbbackup.yaml for the servers found (none: an empty list)."""
    servers = "servers:\n" + "".join(_server_entry(f) for f in found) if found else "servers: {}\n"
    return HEADER + servers + FOOTER


def _find_servers(ports: dict[str, int], timeout: float, report: InitReport) -> list[FoundServer]:
    found = []
    for engine in LOCAL_ENGINES:
        port = ports[engine.config_type]
        server = probe(engine, port, timeout)
        if server is None:
            report.notes.append(
                f"no {engine.label} answered on {addresses(engine, port)}: "
                f"{engine.name} is left out of {CONFIG}"
            )
        else:
            where = server.host if server.host.startswith("/") else f"{server.host}:{server.port}"
            report.notes.append(f"found {engine.label} on {where}: {engine.name}")
            found.append(server)
    return found


def _keep_or_write_keys(directory: Path, report: InitReport) -> None:
    identity, signing = directory / IDENTITY, directory / SIGNING_KEY
    if os.path.lexists(identity):
        read_identity_file(identity)  # an existing file must be a usable identity
        report.files.append(("kept", IDENTITY))
    else:
        write_identity_file(identity)
        report.files.append(("created", IDENTITY))
        report.notes.append(f"keep a copy of {IDENTITY} offline: no backup restores without it")
    if os.path.lexists(signing):
        load_signing_key(signing.read_text(), str(signing))
        report.files.append(("kept", SIGNING_KEY))
    else:
        write_signing_key_file(signing)
        report.files.append(("created", SIGNING_KEY))


def _ignore_keys(path: Path, report: InitReport) -> None:
    """Append the keys' entry to .gitignore unless a line already ignores them."""
    existed = os.path.lexists(path)
    try:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # planted since _refuse_foreign looked
        os.close(fd)
        raise ConfigError(f"{path} is not a regular file: remove it")
    with os.fdopen(fd, "r+", encoding="utf-8", errors="surrogateescape") as handle:
        text = handle.read()
        if IGNORE_SAME & {line.strip() for line in text.splitlines()}:
            report.files.append(("unchanged", GITIGNORE))
            return
        separator = "\n" if text and not text.endswith("\n") else ""
        handle.write(f"{separator}# dbbackup's private keys (dbbackup init)\n{IGNORE_ENTRY}\n")
    report.files.append(("updated" if existed else "created", GITIGNORE))


def init_directory(directory: Path, ports: dict[str, int], timeout: float = 1.0) -> InitReport:
    """Write what is missing of the keys, the starter config and the .gitignore entry in
    directory; ports: the port to probe per config type ("postgres", "mysql")."""
    directory = directory.expanduser().absolute()
    _refuse_foreign(directory)
    report = InitReport()
    _keep_or_write_keys(directory, report)
    config = directory / CONFIG
    if os.path.lexists(config):
        report.files.append(("kept", CONFIG))
    else:
        found = _find_servers(ports, timeout, report)
        write_secret_file(config, starter_config(found))
        report.files.append(("created", CONFIG))
        report.servers = [f.engine.name for f in found]
    _ignore_keys(directory / GITIGNORE, report)
    return report
