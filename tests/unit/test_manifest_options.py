"""MySQL/MariaDB create options in the manifest: a database COMMENT is free text, bounded."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prefect_dbbackup.tasks.manifest import Manifest

BASE = dict(
    tool_version="t", server="srv", server_type="mysql", server_version="10.11.19-MariaDB",
    client="mariadb-dump", client_version="10.11", database="shop", backup_id="20261101T000000Z-0000",
    started_at=datetime(2026, 11, 1, tzinfo=UTC), finished_at=datetime(2026, 11, 1, tzinfo=UTC),
    object_name="dump.sql.zst.age", dump_format="sql",
    stats={"raw_bytes": 1, "compressed_bytes": 1, "stored_bytes": 1, "sha256": "0" * 64},
    recipients=[],
)  # fmt: skip


def test_a_comment_may_hold_any_text_up_to_mariadbs_limit():
    hostile = "it's \\'; DROP DATABASE x; --\n☺" + "x" * 990
    assert len(hostile) <= 1024
    manifest = Manifest(**BASE, create_options={"character_set": "utf8mb4", "comment": hostile})
    assert Manifest.from_bytes(manifest.to_bytes()).create_options["comment"] == hostile
    with pytest.raises(ValueError, match="not a plain name"):
        Manifest(**BASE, create_options={"comment": "x" * 1025})
    with pytest.raises(ValueError, match="not a plain name"):
        Manifest(**BASE, create_options={"comment": "nul\x00"})
    with pytest.raises(ValueError, match="not a plain name"):  # other options stay names
        Manifest(**BASE, create_options={"collation": "utf8mb4_bin COMMENT 'x'"})
