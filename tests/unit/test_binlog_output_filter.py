"""The filter between mariadb-binlog and the client (blocks/binlog_replay.pass_on): it drops
exactly the lines that give an event group its original server id and GTID, whatever the
chunks the output arrives in, and never a line that only contains that text."""

from __future__ import annotations

import io

import pytest
from prefect_dbbackup.blocks import binlog_replay

ORIGIN = [
    b"/*M!100001 SET @@session.gtid_domain_id=0*//*!*/;\n",
    b"/*M!100001 SET @@session.server_id=1*//*!*/;\n",
    b"/*M!100001 SET @@session.gtid_seq_no=42*//*!*/;\n",
]
KEPT = [
    b"#261207 12:47:59 server id 1  end_log_pos 942 CRC32 0xffb0e6be \tGTID 0-1-5 trans\n",
    b"/*M!100101 SET @@session.skip_parallel_replication=0*//*!*/;\n",
    b"START TRANSACTION\n",
    b"SET TIMESTAMP=1796647679/*!*/;\n",
    # a long line that ends with the text (at a flush boundary when read byte by byte): kept
    b"x" * 202 + ORIGIN[2],
    b"COMMIT/*!*/;\n",
]


class Chunked(io.BytesIO):
    def __init__(self, data: bytes, size: int) -> None:
        super().__init__(data)
        self.size = size

    def read1(self, size: int = -1) -> bytes:
        return super().read1(min(self.size, size))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_only_the_origin_lines_are_dropped(monkeypatch, chunk: int):
    """LONG_LINE is 100 here: the long line is flushed in pieces."""
    monkeypatch.setattr(binlog_replay, "LONG_LINE", 100)
    data = b"".join(KEPT[:3] + ORIGIN + KEPT[3:] + ORIGIN[2:] + [b"ROLLBACK"])
    out: list[bytes] = []
    binlog_replay.pass_on(Chunked(data, chunk), out.append)
    assert b"".join(out) == b"".join(KEPT) + b"ROLLBACK"
    if chunk < 100:  # a long line is passed on as it comes, not held until its end
        assert max(map(len, out)) <= 100 + chunk
