"""What each database engine's backups look like in storage: the engine contract's data.

A server block names its engine (`DatabaseServer.engine`); manifests, which are
read without loading any server block, find the same record by the manifest's
`server_type`. Steps and flows never branch on the engine: they ask this record
or the server block. Light on purpose (no drivers): `dbbackup list` reads it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

EngineName = Literal["postgres", "mysql"]
BackupKind = Literal["database", "globals"]


@dataclass(frozen=True)
class Engine:
    """How one engine's backups are stored and recreated."""

    name: EngineName
    dump_format: Literal["pg_custom", "sql"]
    database_object: str  # the object name of a database backup
    users_object: str  # the object name of a users/roles backup
    # options create_database understands, and the syntax their values must have
    create_options: Mapping[str, str] = field(default_factory=dict)

    def object_name(self, kind: BackupKind) -> str:
        """The fixed name of a backup's stored object (never taken from a manifest)."""
        return self.database_object if kind == "database" else self.users_object

    def check_create_options(self, options: Mapping[str, str]) -> None:
        """ValueError unless every option is one this engine creates databases with, and
        its value a plain name (the values end up inlined in CREATE DATABASE)."""
        for key, value in options.items():
            if key not in self.create_options:
                raise ValueError(
                    f"create_options has {key!r}, which a {self.name} database is never "
                    f"created with (allowed: {', '.join(self.create_options)})"
                )
            if len(value) > 128 or not re.fullmatch(self.create_options[key], value):
                raise ValueError(f"create_options {key}={value[:64]!r} is not a plain name")


_PLAIN = r"[A-Za-z0-9_]+"
_LOCALE = r"[A-Za-z0-9_.@-]+"

POSTGRES = Engine(
    name="postgres",
    dump_format="pg_custom",
    database_object="dump.pgc.zst.age",
    users_object="globals.sql.zst.age",
    create_options={
        "encoding": _PLAIN,
        "lc_collate": _LOCALE,
        "lc_ctype": _LOCALE,
        "locale_provider": r"libc|icu|builtin",
        "icu_locale": _LOCALE,
        "builtin_locale": _LOCALE,
    },
)
MYSQL = Engine(
    name="mysql",
    dump_format="sql",
    database_object="dump.sql.zst.age",
    users_object="globals.sql.zst.age",
    create_options={"character_set": _PLAIN, "collation": _PLAIN},
)
ENGINES: dict[str, Engine] = {e.name: e for e in (POSTGRES, MYSQL)}


def stored_object_names() -> frozenset[str]:
    """Every object name any engine's backups use."""
    return frozenset(n for e in ENGINES.values() for n in (e.database_object, e.users_object))
