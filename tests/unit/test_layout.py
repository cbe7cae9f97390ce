"""Key layout: any database name maps to one safe key segment and back."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.tasks.layout import (
    GLOBALS_SEGMENT,
    backup_key,
    decode_name,
    encode_name,
    new_backup_id,
    parse_manifest_key,
)

ODD_NAMES = [
    "with space",
    "it's",
    'dq"',
    "a/b",
    "..",
    ".",
    "-leading",
    "_globals",
    "données😀",
    "%41",
]


@given(st.text(min_size=1, max_size=80))
def test_any_name_round_trips_through_one_safe_segment(name):
    segment = encode_name(name)
    assert decode_name(segment) == name
    assert "/" not in segment
    assert segment not in (".", "..")
    assert not segment.startswith(("-", ".", "_"))
    assert segment.isascii() and segment.isprintable() and " " not in segment


@given(st.text(min_size=1, max_size=84))
def test_any_name_of_up_to_84_characters_fits_one_key_segment(name):
    """MariaDB names are up to 64 characters, each up to 9 when percent-encoded."""
    segment = encode_name(name)
    assert len(segment) <= 255
    assert decode_name(segment) == name


@pytest.mark.parametrize("name", ["é" * 64, "€" * 64, "😀" * 64, "x" * 63 + "é"])
def test_long_non_ascii_names_use_the_compact_form_and_round_trip(name):
    segment = encode_name(name)
    assert len(segment) <= 255 and decode_name(segment) == name
    assert segment.startswith("%u") == (len(quote(name, safe="")) > 255)


def test_a_short_name_keeps_its_percent_encoding():
    """Keys of existing backups do not move."""
    assert encode_name("données é") == "donn%C3%A9es%20%C3%A9"
    assert encode_name("%u") == "%25u"


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_are_distinct_and_reversible(name):
    assert decode_name(encode_name(name)) == name


def test_distinct_names_never_share_a_segment():
    segments = [encode_name(n) for n in ODD_NAMES]
    assert len(set(segments)) == len(ODD_NAMES)


def test_user_database_named_globals_cannot_collide_with_the_globals_series():
    assert (
        backup_key("srv", "_globals", "20261127T031500Z-3f9a", "x").split("/")[1] != GLOBALS_SEGMENT
    )


def test_manifest_key_parses_back_to_server_database_and_id():
    key = backup_key("local-pg", "odd/name é", "20261127T031500Z-3f9a", "manifest.json")
    assert parse_manifest_key(key) == ("local-pg", "odd/name é", "20261127T031500Z-3f9a")
    assert parse_manifest_key(key.replace("manifest.json", "dump.pgc.zst.age")) is None
    assert parse_manifest_key(f"s/{GLOBALS_SEGMENT}/20261127T031500Z-3f9a/manifest.json") == (
        "s",
        "_globals",
        "20261127T031500Z-3f9a",
    )


def test_backup_ids_sort_by_time_and_encode_it():
    early = new_backup_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    late = new_backup_id(datetime(2026, 11, 27, 3, 15, tzinfo=UTC))
    assert early < late
    assert late.startswith("20261127T031500Z-")


def test_empty_name_is_refused():
    with pytest.raises(ConfigError):
        encode_name("")


@pytest.mark.parametrize(
    "backup_id",
    ["..", "../20261127T031500Z-3f9a", "/etc", "", "20261127T031500Z-3f9a/..", "a//b", "latest"],
)
def test_unsafe_backup_ids_never_reach_a_key(backup_id):
    with pytest.raises(ConfigError, match="is not a backup id"):
        backup_key("srv", "db", backup_id, "manifest.json")


@pytest.mark.parametrize("name", ["..", ".", "", "../x", "a/b", "/x", ".hidden", "a..b"])
def test_unsafe_object_names_never_reach_a_key(name):
    with pytest.raises(ConfigError, match="unsafe object name"):
        backup_key("srv", "db", "20261127T031500Z-3f9a", name)
