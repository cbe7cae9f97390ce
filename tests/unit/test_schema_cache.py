"""Each block class computes its JSON schema once (blocks/schema_cache.py): the schema is
Prefect's own, each caller gets a copy of its own, and a save still carries the secrets."""

from __future__ import annotations

import pytest
from prefect_aws import AwsCredentials
from prefect_dbbackup.blocks import (
    AgeEncryption,
    LocalBackupStorage,
    MySQLServer,
    PostgresServer,
    S3BackupStorage,
)
from prefect_dbbackup.blocks.schema_cache import CachedSchema

BLOCK_TYPES = [AgeEncryption, LocalBackupStorage, MySQLServer, PostgresServer, S3BackupStorage]


@pytest.mark.parametrize("block_type", BLOCK_TYPES, ids=lambda t: t.__name__)
def test_the_cached_schema_is_prefects_own(block_type: type) -> None:
    block_type.model_json_schema()  # cached now
    uncached = super(CachedSchema, block_type).model_json_schema()
    assert block_type.model_json_schema() == uncached
    assert block_type.model_json_schema(by_alias=False) == super(
        CachedSchema, block_type
    ).model_json_schema(by_alias=False)


def test_a_caller_changing_its_schema_changes_no_later_one() -> None:
    first = PostgresServer.model_json_schema()
    first["properties"].clear()
    first["secret_fields"].append("host")
    again = PostgresServer.model_json_schema()
    assert "host" in again["properties"]
    assert again["secret_fields"] == ["password"]


def test_serialised_with_secrets_every_secret_is_there() -> None:
    """What `Block.save` sends: Prefect finds the secret fields through the schema."""
    context = {"include_secrets": True}
    server = PostgresServer(host="db", password="pg-secret").model_dump(context=context)
    assert server["password"] == "pg-secret"
    keys = AgeEncryption(recipients=["age1x"], identity="AGE-SECRET-KEY-1X")
    assert keys.model_dump(context=context)["identity"] == "AGE-SECRET-KEY-1X"
    s3 = S3BackupStorage(
        bucket="b",
        credentials=AwsCredentials(aws_access_key_id="a", aws_secret_access_key="s3-secret"),
        dedup_key="k" * 64,
    ).model_dump(context=context)
    assert s3["credentials"]["aws_secret_access_key"] == "s3-secret"
    assert s3["dedup_key"] == "k" * 64
