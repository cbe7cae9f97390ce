"""Events written the way mariadb-dump writes them, from SHOW CREATE EVENT.

mariadb-dump 10.11 cannot be trusted with events: it selects the database by its
SQL-escaped name in its events section, so it fails for a name holding a character
that escaping changes (`'`, `"`, `\\`, newline): `Unknown database 'x \\'q\\''`;
and it loops forever on an event whose text holds `;;` (its delimiter search).
So dumps run with --skip-events and these statements are appended: per event,
DROP EVENT IF EXISTS, then between `DELIMITER d` and `DELIMITER ;` (d is `;;`, or
another one the event's text does not hold) the session settings the event was
created under (client character set, collation, sql_mode, time zone), the CREATE
EVENT text exactly as the server keeps it (bytes in the event's client character
set), and the settings restored.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.blocks.users_sql import backtick

DELIMITERS = (b";;", b"$$", b"//", b"%%%%")
_NAME = re.compile(r"[A-Za-z0-9_]+")
_SQL_MODE = re.compile(r"[A-Z0-9_,]*")
_TIME_ZONE = re.compile(r"[A-Za-z0-9_+:/.-]+")


@dataclass(frozen=True)
class ShownEvent:
    """One row of SHOW CREATE EVENT (the statement as bytes, the rest as text)."""

    name: str
    sql_mode: str
    time_zone: str
    create: bytes
    character_set_client: str
    collation_connection: str


def _checked(pattern: re.Pattern[str], value: str, what: str, event: str) -> str:
    if not pattern.fullmatch(value):
        raise DbBackupError(f"event {event!r} has an unexpected {what} {value!r}: not dumped")
    return value


def delimiter(text: bytes) -> bytes:
    """A statement delimiter that does not occur in text (the mariadb client splits on it)."""
    for candidate in DELIMITERS:
        if candidate not in text:
            return candidate
    return b";;" + hashlib.sha256(text).hexdigest()[:16].encode()


def events_script(events: list[ShownEvent]) -> bytes:
    """The events section of a dump, replayable by the mariadb client."""
    if not events:
        return b""
    out = [
        "\n--\n-- Dumping events (SHOW CREATE EVENT, written by dbbackup)\n--\n\n",
        "/*!40101 SET NAMES utf8mb4 */;\n",
        "/*!50106 SET @save_time_zone= @@TIME_ZONE */ ;\n",
    ]
    parts = [b"".join(s.encode() for s in out)]
    for e in events:
        charset = _checked(_NAME, e.character_set_client, "character set", e.name)
        collation = _checked(_NAME, e.collation_connection, "collation", e.name)
        sql_mode = _checked(_SQL_MODE, e.sql_mode, "sql_mode", e.name)
        time_zone = _checked(_TIME_ZONE, e.time_zone, "time zone", e.name)
        d = delimiter(e.create).decode()
        before = (
            f"DROP EVENT IF EXISTS {backtick(e.name)};\n"  # no /*! */: a name may hold */
            f"DELIMITER {d}\n"
            f"/*!50003 SET @saved_cs_client      = @@character_set_client */ {d}\n"
            f"/*!50003 SET @saved_cs_results     = @@character_set_results */ {d}\n"
            f"/*!50003 SET @saved_col_connection = @@collation_connection */ {d}\n"
            f"/*!50003 SET character_set_client  = {charset} */ {d}\n"
            f"/*!50003 SET character_set_results = {charset} */ {d}\n"
            f"/*!50003 SET collation_connection  = {collation} */ {d}\n"
            f"/*!50003 SET @saved_sql_mode       = @@sql_mode */ {d}\n"
            f"/*!50003 SET sql_mode              = '{sql_mode}' */ {d}\n"
            f"/*!50003 SET @saved_time_zone      = @@time_zone */ {d}\n"
            f"/*!50003 SET time_zone             = '{time_zone}' */ {d}\n"
        )
        after = (
            f" {d}\n"
            f"/*!50003 SET time_zone             = @saved_time_zone */ {d}\n"
            f"/*!50003 SET sql_mode              = @saved_sql_mode */ {d}\n"
            f"/*!50003 SET character_set_client  = @saved_cs_client */ {d}\n"
            f"/*!50003 SET character_set_results = @saved_cs_results */ {d}\n"
            f"/*!50003 SET collation_connection  = @saved_col_connection */ {d}\n"
            "DELIMITER ;\n"
        )
        # the names above are plain ASCII (checked) or quoted by backtick: utf-8 is safe;
        # the event's own text stays the bytes the server keeps
        parts += [before.encode(), e.create, after.encode()]
    parts.append(b"/*!50106 SET TIME_ZONE= @save_time_zone */ ;\n")
    return b"".join(parts)
