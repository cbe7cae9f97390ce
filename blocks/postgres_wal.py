"""The SQL a PostgreSQL archive run speaks (blocks/wal.py has the why): the WAL segments
dbbackup's replication slot holds, their bytes, and moving the slot on.

What the login needs: superuser, or the REPLICATION attribute (the slot) plus EXECUTE on
pg_read_binary_file(text, bigint, bigint, boolean) and pg_stat_file(text, boolean) (reading
pg_wal/). Settings: wal_level replica or logical, a primary (not a standby), 16 MiB segments
and 8 kB pages. Nothing is ever changed on the server but the slot dbbackup names.
"""

from __future__ import annotations

import sqlalchemy as sa
from prefect_dbbackup.blocks.errors import ConfigError, IntegrityError
from prefect_dbbackup.blocks.wal import (
    PAGE_BYTES,
    SEGMENT_BYTES,
    format_lsn,
    parse_lsn,
    parse_segment,
    segment_name,
)

GRANTS = (
    "superuser, or: ALTER ROLE {user} REPLICATION; GRANT EXECUTE ON FUNCTION "
    "pg_read_binary_file(text, bigint, bigint, boolean), pg_stat_file(text, boolean) TO {user}"
)


def check_wal_archiving(conn: sa.Connection, where: str) -> None:
    """ConfigError naming every setting that keeps the server's WAL from being archived."""
    level, recovery, segment, page = conn.execute(
        sa.text(
            "SELECT current_setting('wal_level'), pg_is_in_recovery(), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'), "
            "(SELECT setting::bigint FROM pg_settings WHERE name = 'wal_block_size')"
        )
    ).one()
    problems = []
    if level not in ("replica", "logical"):
        problems.append(f"wal_level is {level}: set wal_level = replica and restart the server")
    if recovery:
        problems.append("it is a standby: archive its primary")
    if (segment, page) != (SEGMENT_BYTES, PAGE_BYTES):
        problems.append(
            f"its WAL has {segment}-byte segments and {page}-byte pages: only initdb's "
            f"defaults ({SEGMENT_BYTES}, {PAGE_BYTES}) are archived so far"
        )
    if problems:
        raise ConfigError(
            f"the WAL of {where} cannot be archived: {'; '.join(problems)} (dbbackup never "
            "changes server settings; docs/pitr.md)"
        )


def slot_start(conn: sa.Connection, slot: str, where: str) -> int:
    """The LSN from which the server keeps WAL for dbbackup's physical slot `slot`, made
    (reserving WAL now) when it does not exist yet."""
    row = conn.execute(
        sa.text(
            "SELECT slot_type, temporary, restart_lsn::text, wal_status "
            "FROM pg_replication_slots WHERE slot_name = :slot"
        ),
        {"slot": slot},
    ).one_or_none()
    if row is None:
        conn.execute(
            sa.text("SELECT pg_create_physical_replication_slot(:slot, true)"), {"slot": slot}
        )
        return slot_start(conn, slot, where)
    slot_type, temporary, restart, status = row
    if slot_type != "physical" or temporary:
        raise ConfigError(
            f"the replication slot {slot!r} on {where} is a {slot_type} "
            f"{'temporary ' if temporary else ''}slot, not dbbackup's: set pitr_slot to a name "
            "of dbbackup's own"
        )
    if restart is None or status == "lost":
        raise IntegrityError(
            f"the replication slot {slot!r} on {where} lost the WAL it held ({status}: "
            "max_slot_wal_keep_size was exceeded): drop it (SELECT "
            f"pg_drop_replication_slot('{slot}')); the next run makes it again and reports "
            "the gap"
        )
    return parse_lsn(restart)


def wal_files(conn: sa.Connection, slot: str, where: str) -> list[tuple[str, int]]:
    """The segments from the slot's start to the flush position, (name, bytes flushed):
    every one but the last is whole. Segments of an earlier timeline are not listed (the
    archive reports the gap a timeline switch leaves)."""
    check_wal_archiving(conn, where)
    start = slot_start(conn, slot, where)
    # a commit of its own, flushed before the position is read: the archive then holds a
    # commit after any time before this run began, which a recovery to that time needs to
    # stop at (PostgreSQL stops at the first commit after its target time)
    conn.execute(sa.text("SET synchronous_commit = on"))
    conn.execute(sa.text("SELECT pg_current_xact_id()"))
    flush, current = conn.execute(
        sa.text(
            "SELECT pg_current_wal_flush_lsn()::text, pg_walfile_name(pg_current_wal_flush_lsn())"
        )
    ).one()
    end = parse_lsn(flush)
    timeline, _ = parse_segment(current)
    names = [
        segment_name(timeline, lsn)
        for lsn in range(start - start % SEGMENT_BYTES, end + 1, SEGMENT_BYTES)
    ]
    present = conn.execute(
        sa.text(
            "SELECT name FROM unnest(CAST(:names AS text[])) name "
            "WHERE (pg_stat_file('pg_wal/' || name, true)).size IS NOT NULL"
        ),
        {"names": names},
    ).scalars()
    present = set(present)
    while names and names[0] not in present:  # of an earlier timeline, or before the slot
        names.pop(0)
    if missing := [n for n in names[:-1] if n not in present]:
        raise IntegrityError(
            f"WAL segment {missing[0]} is gone from {where} though the slot holds it"
        )
    files = [(name, SEGMENT_BYTES) for name in names]
    if files:
        files[-1] = (files[-1][0], end - parse_segment(files[-1][0])[1])
    return files


def read_wal(conn: sa.Connection, name: str, offset: int, length: int) -> bytes:
    """length bytes of pg_wal/name from offset (fewer only if the file is shorter)."""
    data = conn.execute(
        sa.text("SELECT pg_read_binary_file(:path, :offset, :length, false)"),
        {"path": f"pg_wal/{name}", "offset": offset, "length": length},
    ).scalar_one()
    return bytes(data)


def advance_slot(conn: sa.Connection, slot: str, lsn: int) -> None:
    """Let the server drop the WAL before lsn (the archive holds it); never backwards."""
    conn.execute(
        sa.text(
            "SELECT pg_replication_slot_advance(slot_name, CAST(:lsn AS pg_lsn)) "
            "FROM pg_replication_slots "
            "WHERE slot_name = :slot AND restart_lsn < CAST(:lsn AS pg_lsn)"
        ),
        {"slot": slot, "lsn": format_lsn(lsn)},
    )


def slot_held(conn: sa.Connection, slot: str) -> tuple[int, str] | None:
    """(bytes of WAL the slot holds back, its wal_status; `lost` when the server dropped the
    WAL it held), or None when there is no such slot yet."""
    row = conn.execute(
        sa.text(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, "
            "coalesce(wal_status, 'lost') FROM pg_replication_slots WHERE slot_name = :slot"
        ),
        {"slot": slot},
    ).one_or_none()
    return None if row is None else (int(row[0]), str(row[1]))
