"""The events section dbbackup appends to a MariaDB dump (SHOW CREATE EVENT, as mariadb-dump)."""

from __future__ import annotations

import pytest
from prefect_dbbackup.blocks.dump_rows import DumpRowCounter
from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.blocks.mysql_events import ShownEvent, delimiter, events_script


def _event(create: bytes, **fields: str) -> ShownEvent:
    values = dict(
        name="e`v */", sql_mode="STRICT_TRANS_TABLES", time_zone="+05:30",
        character_set_client="latin1", collation_connection="latin1_swedish_ci",
    ) | fields  # fmt: skip
    return ShownEvent(create=create, **values)


def test_the_delimiter_never_occurs_in_the_event():
    assert delimiter(b"DO DELETE FROM t") == b";;"
    assert delimiter(b"DO DELETE FROM t WHERE v = 'x;;y'") == b"$$"
    tricky = b"';;' '$$' '//' '%%%%'"
    assert delimiter(tricky) not in tricky


def test_the_section_keeps_the_event_bytes_and_its_session_settings():
    create = b"CREATE DEFINER=`root`@`%` EVENT `e``v */` ON SCHEDULE AT '2037-01-01' DO SELECT 'caf\xe9;;'"
    script = events_script([_event(create)])
    assert create in script  # the stored bytes, in the event's own character set
    assert b"DROP EVENT IF EXISTS `e``v */`;\n" in script
    assert b"DELIMITER $$\n" in script and script.count(b"DELIMITER ;\n") == 1
    assert b"SET character_set_client  = latin1 */ $$" in script
    assert b"SET time_zone             = '+05:30' */ $$" in script
    # the row counter does not take an event body for data
    counter = DumpRowCounter(["t"])
    counter.feed(script.replace(b"SELECT", b"\nINSERT INTO `t` VALUES (1),(2);\n"))
    assert counter.finish() == {"t": 0}
    assert events_script([]) == b""


def test_unexpected_session_settings_are_refused():
    with pytest.raises(DbBackupError, match="unexpected time zone"):
        events_script([_event(b"CREATE EVENT e", time_zone="x' */; DROP TABLE t; --")])
