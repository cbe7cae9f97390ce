"""PostgreSQL database-level properties: read from the catalogs, replayed onto a new name.

`pg_dump` without `--create` leaves out the database's comment, its `ALTER DATABASE ...
SET` and `ALTER ROLE ... IN DATABASE ... SET` defaults, its connection limit and its
privileges. `pg_dump --create` writes them as SQL text with the source name baked in
(also inside psql `\\connect` lines), and retargeting that text to a new, possibly
hostile, name would mean rewriting SQL by string replacement. Instead they are read
here as data and every statement is built with identifier and literal quoting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import sqlalchemy as sa
from prefect_dbbackup.blocks.properties import DatabaseGrant, DatabaseProperties, DatabaseSetting
from psycopg import sql as pgsql

DATABASE_ROW = """
SELECT pg_get_userbyid(d.datdba) AS owner, d.datconnlimit,
       shobj_description(d.oid, 'pg_database') AS comment, d.datacl IS NULL AS default_acl
FROM pg_database d WHERE d.datname = :n
"""
# aclexplode's grantee 0 is PUBLIC (no pg_roles row)
DATABASE_ACL = """
SELECT r.rolname AS grantee, a.privilege_type, a.is_grantable
FROM pg_database d CROSS JOIN LATERAL aclexplode(d.datacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee AND a.grantee <> 0
WHERE d.datname = :n
ORDER BY 1 NULLS FIRST, 2, 3
"""
DATABASE_SETTINGS = """
SELECT r.rolname AS role, c.ord, c.config
FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
LEFT JOIN pg_roles r ON r.oid = s.setrole AND s.setrole <> 0
CROSS JOIN LATERAL unnest(s.setconfig) WITH ORDINALITY AS c(config, ord)
WHERE d.datname = :n
ORDER BY 1 NULLS FIRST, 2
"""
# settings whose stored value is a list of double-quoted names, as pg_dump's
# variable_is_guc_list_quote knows them: each element is given back as its own literal
LIST_SETTINGS = frozenset(
    {
        "local_preload_libraries",
        "search_path",
        "session_preload_libraries",
        "shared_preload_libraries",
        "temp_tablespaces",
        "unix_socket_directories",
    }
)


def read_properties(conn: sa.Connection, database: str) -> DatabaseProperties | None:
    """The database's owner, comment, connection limit, settings and privileges."""
    row = conn.execute(sa.text(DATABASE_ROW), {"n": database}).one_or_none()
    if row is None:
        return None
    acl = None
    if not row.default_acl:
        merged: dict[tuple[str | None, str], bool] = {}
        for grantee, privilege, grantable in conn.execute(sa.text(DATABASE_ACL), {"n": database}):
            merged[grantee, privilege] = merged.get((grantee, privilege), False) or grantable
        acl = [DatabaseGrant(grantee=g, privilege=p, grantable=o) for (g, p), o in merged.items()]
    settings = []
    for role, _, config in conn.execute(sa.text(DATABASE_SETTINGS), {"n": database}):
        name, _, value = config.partition("=")
        settings.append(DatabaseSetting(role=role, name=name, value=value))
    return DatabaseProperties(
        owner=row.owner,
        comment=row.comment,
        connection_limit=row.datconnlimit,
        settings=settings,
        acl=acl,
    )


def split_guc_list(value: str) -> list[str] | None:
    """The elements of a stored list setting (`"a""b", public`), None if malformed.

    The syntax of PostgreSQL's SplitGUCList: comma-separated, an element either
    double-quoted (`""` is a quote) or bare up to a comma or space.
    """
    items: list[str] = []
    rest = value.lstrip()
    if not rest:
        return items
    while True:
        if rest.startswith('"'):
            end, item = 1, ""
            while True:
                quote = rest.find('"', end)
                if quote < 0:
                    return None
                item += rest[end:quote]
                if rest[quote + 1 : quote + 2] != '"':
                    break
                item, end = item + '"', quote + 2
            rest = rest[quote + 1 :]
        else:
            stop = next((i for i, c in enumerate(rest) if c == "," or c.isspace()), len(rest))
            if stop == 0:
                return None
            item, rest = rest[:stop], rest[stop:]
        items.append(item)
        rest = rest.lstrip()
        if not rest:
            return items
        if not rest.startswith(","):
            return None
        rest = rest[1:].lstrip()


Literal = Callable[[str], str]


def setting_value(setting: DatabaseSetting, literal: Literal) -> str:
    """The value of a SET clause: one literal, or for a list setting one per element."""
    if setting.name.lower() in LIST_SETTINGS:
        items = split_guc_list(setting.value)
        if items:
            return ", ".join(literal(item) for item in items)
    return literal(setting.value)


def property_statements(
    target: str,
    properties: DatabaseProperties,
    roles: set[str],
    literal: Literal,
    skipped: list[str],
) -> Iterator[tuple[str, str]]:
    """(what, SQL) that give `target` the recorded properties, with every name quoted.

    Grants to the source's owner are left out: the owner of the restored database is
    the restoring login, which holds them as owner. A role missing from `roles` (those
    of the target server) is reported in `skipped` instead.
    """
    db = pgsql.Identifier(target).as_string()

    def ident(name: str) -> str:
        return pgsql.Identifier(name).as_string()

    def missing(role: str | None, what: str) -> bool:
        if role is None or role in roles:
            return False
        skipped.append(f"{what}: role {role!r} does not exist on this server")
        return True

    if properties.comment is not None:
        yield "the database comment", f"COMMENT ON DATABASE {db} IS {literal(properties.comment)}"
    if properties.connection_limit != -1:
        limit = int(properties.connection_limit)
        yield "the connection limit", f"ALTER DATABASE {db} CONNECTION LIMIT {limit}"
    for s in properties.settings:
        what = f"setting {s.name}" + (f" for role {s.role!r}" if s.role is not None else "")
        if missing(s.role, what):
            continue
        owner = f"ROLE {ident(s.role)} IN " if s.role is not None else ""
        yield what, f"ALTER {owner}DATABASE {db} SET {ident(s.name)} TO {setting_value(s, literal)}"
    if properties.acl is not None:
        yield "the privileges of PUBLIC", f"REVOKE ALL ON DATABASE {db} FROM PUBLIC"
        for (grantee, grantable), privileges in _grouped(properties).items():
            to = "PUBLIC" if grantee is None else ident(grantee)
            what = f"GRANT {', '.join(privileges)} ON DATABASE TO {to}"
            if missing(grantee, what):
                continue
            option = " WITH GRANT OPTION" if grantable else ""
            yield what, f"GRANT {', '.join(privileges)} ON DATABASE {db} TO {to}{option}"


def _grouped(properties: DatabaseProperties) -> dict[tuple[str | None, bool], list[str]]:
    """Privileges per (grantee, grantable), the source owner's own left out."""
    grouped: dict[tuple[str | None, bool], list[str]] = {}
    for grant in properties.acl or []:
        if grant.grantee is not None and grant.grantee == properties.owner:
            continue
        grouped.setdefault((grant.grantee, grant.grantable), []).append(grant.privilege)
    return grouped
