"""One measured operation in its own process, through dbbackup's own code.

    python3 -m tests.benchmarks.worker backup|restore|flow|blocks|s3 [options]

Prints one JSON line last: the seconds of the operation itself (imports and
interpreter start excluded), the process's peak RSS and what it produced.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from tests.helpers import MY, PG

SERVER_NAME = "bench"


def _signing() -> dict:
    """A fixed manifest signing key: benchmark processes must agree on it (never a real key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from tests.helpers import signing_fields

    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return signing_fields(pem)


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _server(engine: str):  # noqa: ANN202
    from prefect_dbbackup.blocks import MySQLServer, PostgresServer

    if engine == "pg":
        return PostgresServer(host=PG["host"], port=PG["port"], user=PG["user"])
    return MySQLServer(host=MY["host"], port=MY["port"], user=MY["user"])


def backup(args: argparse.Namespace) -> dict[str, Any]:
    """back_up_database (the backup task's function) into a local storage; with
    --dedup-key-file the storage deduplicates (chunks) under that key."""
    from prefect.context import SyncClientContext
    from prefect_dbbackup.blocks import AgeEncryption, LocalBackupStorage
    from prefect_dbbackup.tasks.backup import BackupRun, back_up_database
    from prefect_dbbackup.tasks.layout import new_backup_id
    from prefect_dbbackup.tasks.workdir import private_workdir

    server = _server(args.engine)
    dedup = {"dedup": True, "dedup_key_file": args.dedup_key_file} if args.dedup_key_file else {}
    storage = LocalBackupStorage(path=args.storage, **dedup, **_signing())
    encryption = AgeEncryption(recipients=[args.recipient])
    tuning = {k: v for k, v in (("level", args.level), ("threads", args.threads)) if v is not None}
    rss_before = _rss_mb()
    # the Prefect client a flow run's tasks share (the dump looks up the host's limit):
    # made before the clock starts, as a flow run has it before its tasks
    with SyncClientContext.get_or_create():
        started = time.perf_counter()
        with private_workdir() as workdir:
            run = BackupRun(
                server, SERVER_NAME, encryption, storage, workdir, new_backup_id(), **tuning
            )
            stored = back_up_database(run, args.database)
        seconds = time.perf_counter() - started
    manifest = stored.manifest
    result = {
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "raw_bytes": manifest.stats.raw_bytes,
        "stored_bytes": manifest.stats.stored_bytes,
    }
    if manifest.chunks is not None:
        result["chunks_new"] = manifest.chunks.new
        result["chunks_reused"] = manifest.chunks.reused
    return result


def restore(args: argparse.Namespace) -> dict[str, Any]:
    """restore_backup of the latest backup of a database into a new target."""
    from prefect_dbbackup.blocks import AgeEncryption, LocalBackupStorage
    from prefect_dbbackup.tasks.catalog import find_backup
    from prefect_dbbackup.tasks.restore import restore_backup
    from prefect_dbbackup.tasks.workdir import private_workdir

    server = _server(args.engine)
    storage = LocalBackupStorage(path=args.storage, **_signing())
    encryption = AgeEncryption(identity_file=args.identity)
    manifest = find_backup(storage, SERVER_NAME, args.database)
    rss_before = _rss_mb()
    started = time.perf_counter()
    with private_workdir() as workdir:
        restore_backup(server, storage, encryption, manifest, args.target, workdir)
    return {
        "seconds": time.perf_counter() - started,
        "rss_before_mb": rss_before,
        "raw_bytes": manifest.stats.raw_bytes,
    }


def blocks(args: argparse.Namespace) -> dict[str, Any]:
    """Save the blocks the flow cases use in the benchmark's Prefect API."""
    from prefect_dbbackup.blocks import AgeEncryption, LocalBackupStorage

    _server("pg").save(f"{SERVER_NAME}-pg", overwrite=True)
    LocalBackupStorage(path=args.storage, **_signing()).save(f"{SERVER_NAME}-store", overwrite=True)
    AgeEncryption(recipients=[args.recipient]).save(f"{SERVER_NAME}-keys", overwrite=True)
    return {"seconds": 0.0}


def flow(args: argparse.Namespace) -> dict[str, Any]:
    """One backup_server flow run over the named databases (needs PREFECT_API_URL)."""
    from prefect_dbbackup.flows.backup import backup_server

    databases = args.databases.split(",")
    started = time.perf_counter()
    report = backup_server(
        server=f"{SERVER_NAME}-pg",
        storage=f"{SERVER_NAME}-store",
        encryption=f"{SERVER_NAME}-keys",
        databases=databases,
        concurrency=args.concurrency,
    )
    seconds = time.perf_counter() - started
    done = {o.database for o in report.outcomes if o.status == "ok"}
    if not done.issuperset(databases):
        raise SystemExit(f"not backed up: {sorted(set(databases) - done)}")
    raw = sum(o.raw_bytes or 0 for o in report.outcomes if o.database in databases)
    return {"seconds": seconds, "raw_bytes": raw}


def s3(args: argparse.Namespace) -> dict[str, Any]:
    """Upload one file with S3BackupStorage.put_file, or with boto3's upload_file (--boto3)."""
    import uuid

    import boto3

    client = boto3.client("s3", endpoint_url=args.endpoint)
    if args.bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=args.bucket)
    key = f"bench/{uuid.uuid4().hex}.bin"
    if args.boto3:
        started = time.perf_counter()
        client.upload_file(args.file, args.bucket, key)
    else:
        from prefect_dbbackup.blocks.s3 import S3BackupStorage

        storage = S3BackupStorage(bucket=args.bucket, endpoint_url=args.endpoint, path_style=True)
        started = time.perf_counter()
        storage.put_file(key, Path(args.file))
    seconds = time.perf_counter() - started
    client.delete_object(Bucket=args.bucket, Key=key)
    return {"seconds": seconds, "raw_bytes": Path(args.file).stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m tests.benchmarks.worker")
    parser.add_argument("op", choices=["backup", "restore", "flow", "blocks", "s3"])
    parser.add_argument("--engine", choices=["pg", "my"], default="pg")
    parser.add_argument("--database")
    parser.add_argument("--databases")
    parser.add_argument("--storage")
    parser.add_argument("--recipient")
    parser.add_argument("--identity")
    parser.add_argument("--target")
    parser.add_argument("--level", type=int)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--dedup-key-file", help="backup: a deduplicating storage with this key")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--endpoint")
    parser.add_argument("--bucket")
    parser.add_argument("--file")
    parser.add_argument("--boto3", action="store_true")
    args = parser.parse_args()
    result = globals()[args.op](args)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["children_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
