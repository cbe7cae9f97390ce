"""Groundwork for deduplicated storage (#15): what it costs to know which chunks exist on S3.

    python3 -m tests.benchmarks.dedup_index --count 100000 --out DIR [--threads 32]

On a fresh SeaweedFS (tests.s3server) it writes `count` tiny objects named like chunk ids,
once flat (chunks/{id}) and once with a 2-level fan-out (chunks/ab/{id}), then times:
- list_objects_v2 of each layout, sequentially (1,000 keys a page) and, for the fan-out,
  the 256 sub-prefixes listed in parallel;
- reading one index object (the sorted ids and stored sizes, zstd + age) and loading it;
- HEAD of single chunks (the ask-per-chunk alternative), sequential and parallel.
Writes index.json and index.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import pyrage
import zstandard
from botocore.config import Config

from tests.s3server import ACCESS_KEY, SECRET_KEY, SeaweedFS

BUCKET = "dedup-index-bench"


def log(message: str) -> None:
    print(f"[index {time.strftime('%H:%M:%S')}] {message}", flush=True)


def flat_key(chunk_id: str) -> str:
    return f"flat/chunks/{chunk_id}"


def fanned_key(chunk_id: str) -> str:
    return f"fan/chunks/{chunk_id[:2]}/{chunk_id}"


def put_all(client, keys: list[str], threads: int) -> float:  # noqa: ANN001
    """Objects of 16 bytes under every key, `threads` at a time; return the seconds."""
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k, Body=b"x" * 16), keys))
    return time.perf_counter() - started


def list_keys(client, prefix: str) -> tuple[int, float, int]:  # noqa: ANN001
    """(keys, seconds, requests) of a sequential paginated listing."""
    started = time.perf_counter()
    keys = requests = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=prefix, PaginationConfig={"PageSize": 1000}
    ):
        requests += 1
        keys += len(page.get("Contents", []))
    return keys, time.perf_counter() - started, requests


def list_parallel(client, threads: int) -> tuple[int, float]:  # noqa: ANN001
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        counts = pool.map(lambda p: list_keys(client, f"fan/chunks/{p:02x}/")[0], range(256))
        total = sum(counts)
    return total, time.perf_counter() - started


def index_object(client, ids: list[str]) -> dict:  # noqa: ANN001
    """Write the ids as one index object (32-byte id + 4-byte size each), read it back."""
    identity = pyrage.x25519.Identity.generate()
    body = b"".join(bytes.fromhex(i) + (4096).to_bytes(4, "big") for i in sorted(ids))
    started = time.perf_counter()
    blob = pyrage.encrypt(zstandard.ZstdCompressor(level=3).compress(body), [identity.to_public()])
    client.put_object(Bucket=BUCKET, Key="index/chunks.idx", Body=blob)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    got = client.get_object(Bucket=BUCKET, Key="index/chunks.idx")["Body"].read()
    plain = zstandard.ZstdDecompressor().decompress(pyrage.decrypt(got, [identity]))
    known = {plain[i : i + 32] for i in range(0, len(plain), 36)}
    read_s = time.perf_counter() - started
    assert len(known) == len(ids)
    return {"bytes": len(blob), "write_s": round(put_s, 3), "read_and_load_s": round(read_s, 3)}


def heads(client, keys: list[str], threads: int) -> dict:  # noqa: ANN001
    def head(key: str) -> None:
        client.head_object(Bucket=BUCKET, Key=key)

    started = time.perf_counter()
    for key in keys:
        head(key)
    sequential = (time.perf_counter() - started) / len(keys)
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(head, keys))
    parallel = len(keys) / (time.perf_counter() - started)
    return {"sequential_ms": round(sequential * 1000, 2), "parallel_per_s": round(parallel)}


def run(count: int, threads: int, root: Path) -> dict:
    server = SeaweedFS(root)
    server.start_on_free_ports()
    try:
        server.make_bucket(BUCKET)
        client = boto3.client(
            "s3",
            endpoint_url=server.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 5},
                max_pool_connections=threads,
            ),
        )
        ids = [secrets.token_hex(32) for _ in range(count)]
        result: dict = {
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "count": count,
            "threads": threads,
            "loadavg_start": os.getloadavg(),
        }
        for name, key in (("fanned", fanned_key), ("flat", flat_key)):
            seconds = put_all(client, [key(i) for i in ids], threads)
            result[f"put_{name}"] = {"seconds": round(seconds, 1), "per_s": round(count / seconds)}
            log(f"put {count} {name} objects in {seconds:.0f} s")
        for name, prefix in (("flat", "flat/chunks/"), ("fanned", "fan/chunks/")):
            runs = [list_keys(client, prefix) for _ in range(3)]
            assert all(r[0] == count for r in runs), runs
            result[f"list_{name}"] = {
                "seconds": [round(r[1], 2) for r in runs],
                "requests": runs[0][2],
            }
            log(f"list {name}: {result[f'list_{name}']}")
        runs = [list_parallel(client, 16) for _ in range(3)]
        assert all(r[0] == count for r in runs), runs
        result["list_fanned_parallel_16"] = {"seconds": [round(r[1], 2) for r in runs]}
        result["index_object"] = index_object(client, ids)
        result["head"] = heads(client, [fanned_key(i) for i in ids[:1000]], threads)
        result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        result["loadavg_end"] = os.getloadavg()
        return result
    finally:
        server.stop()


def markdown(r: dict) -> str:
    lines = [
        f"### {r['count']:,} chunk objects on SeaweedFS (loopback), {r['started']} - "
        f"{r['finished']}, load {r['loadavg_start'][0]:.2f} at start",
        "",
        "| what | seconds (3 runs) | requests |",
        "|---|---|---|",
        f"| list_objects_v2 chunks/ flat | {r['list_flat']['seconds']} | {r['list_flat']['requests']} |",
        f"| list_objects_v2 chunks/ fanned (ab/), one listing | {r['list_fanned']['seconds']} | "
        f"{r['list_fanned']['requests']} |",
        f"| list 256 fanned sub-prefixes, 16 in parallel | {r['list_fanned_parallel_16']['seconds']} | "
        "256+ |",
        f"| read + decrypt + load one index object ({r['index_object']['bytes'] / 1e6:.1f} MB) | "
        f"{r['index_object']['read_and_load_s']} | 1 |",
        "",
        f"HEAD of one chunk: {r['head']['sequential_ms']} ms sequential, "
        f"{r['head']['parallel_per_s']}/s with {r['threads']} threads. "
        f"Creating the objects: {r['put_fanned']['per_s']}/s fanned, {r['put_flat']['per_s']}/s flat "
        f"({r['threads']} threads of put_object).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dbb-index-") as root:
        result = run(args.count, args.threads, Path(root))
    (args.out / f"index-{args.count}.json").write_text(json.dumps(result, indent=1))
    (args.out / f"index-{args.count}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
