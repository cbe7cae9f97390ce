"""The binlog position a mariadb-dump --master-data=2 stream records (blocks/binlog.py): found
however the stream is cut into chunks, never taken from a name or a routine body, and a
stream without it is refused."""

from __future__ import annotations

import pytest
from prefect_dbbackup.blocks.binlog import HEAD_LIMIT, BinlogPosition, BinlogPositionReader
from prefect_dbbackup.blocks.errors import DbBackupError
from prefect_dbbackup.tasks.manifest import Manifest

HEAD = b"""/*M!999999\\- enable the sandbox mode */
-- MariaDB dump 10.19  Distrib 10.11.19-MariaDB, for debian-linux-gnu (x86_64)
--
-- Host: 127.0.0.1    Database: shop
-- ------------------------------------------------------
-- Server version\t10.11.19-MariaDB-0+deb12u1-log

/*!40101 SET NAMES utf8mb4 */;

--
-- Position to start replication or point-in-time recovery from
--

-- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000007', MASTER_LOG_POS=1292;

-- A corresponding to the above master-data CHANGE-MASTER settings to the slave gtid state is printed as comments later in the file.
"""
# a routine body may hold any text, the dump's own comment lines included
BODY = b"""
INSERT INTO `t` VALUES
(1,'-- CHANGE MASTER TO MASTER_LOG_FILE=\\'evil.000001\\', MASTER_LOG_POS=4;');
DELIMITER ;;
CREATE PROCEDURE `p`()
BEGIN
-- SET GLOBAL gtid_slave_pos='9-9-9';
-- CHANGE MASTER TO MASTER_LOG_FILE='evil.000001', MASTER_LOG_POS=4;
SELECT 1;
END ;;
DELIMITER ;
"""
TAIL = b"""
-- The deferred gtid setting for slave corresponding to the master-data CHANGE-MASTER follows

-- Preferably use GTID to start replication from GTID position:

-- SET GLOBAL gtid_slave_pos='0-1-6,1-2-30';
/*!40103 SET TIME_ZONE=@OLD_TIME_ZONE */;

/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;
/*M!100616 SET NOTE_VERBOSITY=@OLD_NOTE_VERBOSITY */;

-- Dump completed on 2026-12-07 10:00:34
"""
EXPECTED = BinlogPosition(file="binlog.000007", position=1292, gtid="0-1-6,1-2-30")


def _read(stream: bytes, chunk: int) -> BinlogPosition:
    reader = BinlogPositionReader("the dump of 'shop'")
    for start in range(0, len(stream), chunk):
        reader.feed(memoryview(stream)[start : start + chunk])
    return reader.finish()


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_the_position_is_found_however_the_stream_is_cut(chunk):
    assert _read(HEAD + BODY + TAIL, chunk) == EXPECTED


def test_a_large_dump_keeps_the_head_position_and_finds_the_gtid_at_its_end():
    rows = b"".join(
        b"(%d,'-- SET GLOBAL gtid_slave_pos=\\'5-5-5\\';')\n" % i for i in range(50_000)
    )
    assert _read(HEAD + rows + BODY + TAIL, 1 << 16) == EXPECTED


@pytest.mark.parametrize(
    ("stream", "missing"),
    [
        (BODY + TAIL, "file and position"),  # a client that wrote no head position
        (HEAD + BODY, "GTID position"),  # cut before the end
        (HEAD + BODY + TAIL + b"DELIMITER ;;\n", "GTID position"),  # something after it
        (HEAD + BODY + TAIL.replace(b"0-1-6,1-2-30", b"0-1-6; DROP"), "GTID position"),
        (b"--\n" * (HEAD_LIMIT // 3) + HEAD + BODY + TAIL, "file and position"),  # too late
    ],
    ids=["no-head", "no-tail", "not-last", "not-a-gtid", "too-late"],
)
def test_a_stream_without_the_position_is_refused(stream, missing):
    with pytest.raises(DbBackupError, match=f"the dump of 'shop' carries no binlog {missing}"):
        _read(stream, 4096)


def test_a_routine_body_never_stands_for_the_gtid():
    # the planted line of BODY is the last one when the real one is missing: still refused
    with pytest.raises(DbBackupError, match="GTID position"):
        _read(HEAD + BODY + b"/*!40101 SET SQL_MODE=@OLD_SQL_MODE */;\n", 4096)


@pytest.mark.parametrize(
    "fields",
    [
        {"file": "../../etc/passwd"},
        {"file": ".hidden.000001"},
        {"file": "bin\nlog.000001"},
        {"position": 3},
        {"gtid": "0-1-x"},
    ],
)
def test_an_unusable_position_is_no_position(fields):
    with pytest.raises(ValueError):
        BinlogPosition(**{**EXPECTED.model_dump(), **fields})


def test_a_manifest_without_the_field_still_loads_and_one_with_it_round_trips():
    base = {
        "tool_version": "1",
        "server": "my",
        "server_type": "mysql",
        "server_version": "10.11.19-MariaDB",
        "client": "mariadb-dump",
        "client_version": "10.19",
        "database": "shop",
        "backup_id": "20261207T100000Z-0001",
        "started_at": "2026-12-07T10:00:00Z",
        "finished_at": "2026-12-07T10:00:01Z",
        "object_name": "dump.sql.zst.age",
        "dump_format": "sql",
        "stats": {"raw_bytes": 1, "compressed_bytes": 1, "stored_bytes": 1, "sha256": "0" * 64},
        "recipients": [],
    }
    old = Manifest.model_validate(base)  # written before pitr existed
    assert old.binlog is None
    new = Manifest.model_validate({**base, "binlog": EXPECTED.model_dump()})
    assert Manifest.from_bytes(new.to_bytes()).binlog == EXPECTED
