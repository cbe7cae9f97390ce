"""The dump-stream row counter: row starts outside literals, in any chunking, both formats."""

from __future__ import annotations

import pytest
from prefect_dbbackup.blocks.dump_rows import DumpRowCounter

# what mariadb-dump writes (a row per line), with literals that look like row breaks
MARIADB = b"""-- header
DROP TABLE IF EXISTS `t`;
CREATE TABLE `t` (`s` text, `c) VALUES (` int);
INSERT INTO `t` VALUES
('a),(b',1),
('it\\'s ),( \\\\',2),
('x\\n(',3);
INSERT INTO `t` VALUES ('one',4);
DELIMITER ;;
/*!50003 CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW
INSERT INTO `t` VALUES ('no',1),('no',2) */;;
DELIMITER ;
INSERT INTO `h``x` (`a`, row_start, row_end) VALUES (1,'2026-01-01','2026-01-02'),
(2,'2026-01-02','2038-01-19');
-- Dump completed
"""
EXPECTED = {"t": 4, "h`x": 2, "empty": 0}


def _count(dump: bytes, chunk: int) -> dict[str, int] | None:
    counter = DumpRowCounter(list(EXPECTED))
    for i in range(0, len(dump), chunk):
        counter.feed(memoryview(dump)[i : i + chunk])
    return counter.finish()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_rows_per_line_in_any_chunking(chunk):
    assert _count(MARIADB, chunk) == EXPECTED


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
def test_all_rows_on_one_line_as_mysqldump_writes_them(chunk):
    one_line = MARIADB.replace(b"),\n(", b"),(").replace(b"VALUES\n(", b"VALUES (")
    assert one_line.count(b"),(") > MARIADB.count(b"),(")
    assert _count(one_line, chunk) == EXPECTED


def test_a_line_that_only_looks_like_an_insert_is_not_counted():
    # a table name with a newline: the dump writes it raw in comments and DDL
    fake = b"-- Table `x\nINSERT INTO `zz` VALUES (9),(9)`\n" + MARIADB
    assert _count(fake, 4) == EXPECTED


def test_a_dump_cut_inside_a_statement_has_no_counts():
    assert _count(MARIADB[: MARIADB.index(b"('x")], 16) is None
