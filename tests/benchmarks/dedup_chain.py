"""Groundwork for deduplicated storage (#15): a chain of daily dumps, chunked and compared.

    python3 -m tests.benchmarks.dedup_chain --size 1GB --days 14 --out DIR [--engine pg|my]
        [--pattern hot|hot1|mixed|uniform] [--no-restic]

A copy of the benchmark database (dbb_bench_chain_pg / dbb_bench_chain_my, dropped at
the end) is changed between two days: about 1% of the rows UPDATEd and 0.5% INSERTed,
either all over the tables (`uniform`), among the newest 5% of the rows (`hot`, the
append-mostly shape of most business data; `hot1`: the newest 1%, every one of them
updated), or 90% hot and 10% anywhere (`mixed`). Each day is dumped (pg_dump -Fc -Z0 or
mariadb-dump) to a scratch file and measured:
- whole object: the project's own zstd(3) + age pipeline (tasks.stream.encrypt_stream);
- chunked: pyfastcdc at several min/avg/max settings; each chunk id is HMAC-SHA256 of the
  plaintext under a random key; a chunk not seen before is zstd(3)-compressed and
  age-encrypted on its own, and its stored size counted;
- restic: `restic backup --stdin` of the same dump into one repository (compression auto).
Day 1 also measures chunking and keyed-hash throughput. Writes chain.json and chain.md.
Needs the bench extra (`pip install -e '.[bench]'`) and Debian's restic.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import blake3
import pyrage
import zstandard
from prefect_dbbackup.tasks.stream import encrypt_stream
from pyfastcdc import FastCDC

from tests.benchmarks import data
from tests.benchmarks.daily import PATTERNS, Restic, make_chain

MIB = 1024 * 1024
# (label, min, avg, max); pyfastcdc's avg is the mask target: chunks average about avg+min
SETTINGS = [
    ("64K/256K/1M", MIB // 16, MIB // 4, MIB),
    ("256K/1M/4M", MIB // 4, MIB, 4 * MIB),
    ("512K/2M/8M", MIB // 2, 2 * MIB, 8 * MIB),
    ("1M/4M/16M", MIB, 4 * MIB, 16 * MIB),
]
PRIMARY = "256K/1M/4M"  # the design's choice: pyfastcdc(256K, 1M, 4M) averages ~2 MiB
READ = MIB


def log(message: str) -> None:
    print(f"[chain {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Store:
    """The chunks one chunker setting has stored so far (id -> stored bytes)."""

    label: str
    chunker: FastCDC
    stored: dict[bytes, int] = field(default_factory=dict)


@dataclass
class Day:
    day: int
    dump_bytes: int
    dump_s: float
    change_s: float
    whole_stored: int
    whole_s: float
    chunked: dict[str, dict] = field(default_factory=dict)
    restic_added: int = 0
    restic_repo: int = 0
    restic_s: float = 0.0


# --- measurements -----------------------------------------------------------


def throughput(path: Path, key: bytes) -> dict:
    """MB/s of chunking (each setting, from a file and from a stream) and of the ids."""
    size = path.stat().st_size
    blob = path.read_bytes()
    out: dict = {"bytes": size, "chunking": {}, "hash": {}}
    for label, low, avg, high in SETTINGS:
        chunker = FastCDC(avg, min_size=low, max_size=high)
        started = time.perf_counter()
        lengths = [c.length for c in chunker.cut_buf(blob)]
        buf_s = time.perf_counter() - started
        started = time.perf_counter()
        with path.open("rb", buffering=0) as f:
            count = sum(1 for _ in chunker.cut_stream(f))
        stream_s = time.perf_counter() - started
        out["chunking"][label] = {
            "chunks": len(lengths),
            "mean_mib": round(size / len(lengths) / MIB, 2),
            "buffer_mb_s": round(size / data.MB / buf_s),
            "stream_mb_s": round(size / data.MB / stream_s),
        }
        assert count == len(lengths)
    view = memoryview(blob)
    pieces = [view[i : i + 2 * MIB] for i in range(0, size, 2 * MIB)]
    hashers = {
        "hmac-sha256": lambda b: hmac.digest(key, b, "sha256"),
        "sha256 (unkeyed)": lambda b: hashlib.sha256(b).digest(),
        "blake2b keyed": lambda b: hashlib.blake2b(b, key=key, digest_size=32).digest(),
        "blake3 keyed": lambda b: blake3.blake3(b, key=key).digest(),
        "blake3 keyed, 2 threads": lambda b: blake3.blake3(b, key=key, max_threads=2).digest(),
    }
    for name, fn in hashers.items():
        started = time.perf_counter()
        for piece in pieces:
            fn(piece)
        out["hash"][name] = round(size / data.MB / (time.perf_counter() - started))
    out["two_threads"] = _two_threads(blob, pieces, key)
    compressor = zstandard.ZstdCompressor(level=3)
    identity = pyrage.x25519.Identity.generate()
    started = time.perf_counter()
    stored = [pyrage.encrypt(compressor.compress(p), [identity.to_public()]) for p in pieces]
    out["zstd3+age per 2 MiB chunk, 1 thread"] = round(
        size / data.MB / (time.perf_counter() - started)
    )
    # what a restore does per chunk: age -d, zstd -d, check the id
    decompressor = zstandard.ZstdDecompressor()
    started = time.perf_counter()
    for blob_ in stored:
        hmac.digest(key, decompressor.decompress(pyrage.decrypt(blob_, [identity])), "sha256")
    out["age+zstd -d+hmac per 2 MiB chunk, 1 thread"] = round(
        size / data.MB / (time.perf_counter() - started)
    )
    return out


def _two_threads(blob: bytes, pieces: list[memoryview], key: bytes) -> dict:
    """MB/s of two threads each chunking / HMAC-ing the whole dump: do they share the GIL?"""
    _, low, avg, high = next(s for s in SETTINGS if s[0] == PRIMARY)

    def chunk(_: int) -> None:
        for _c in FastCDC(avg, min_size=low, max_size=high).cut_buf(blob):
            pass

    def mac(_: int) -> None:
        for piece in pieces:
            hmac.digest(key, piece, "sha256")

    out = {}
    for name, fn in ((f"fastcdc {PRIMARY}", chunk), ("hmac-sha256", mac)):
        started = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(fn, range(2)))
        out[name] = round(2 * len(blob) / data.MB / (time.perf_counter() - started))
    return out


def chunk_day(path: Path, store: Store, key: bytes, recipient, compressor) -> dict:  # noqa: ANN001
    """Chunk one dump; store (compress + encrypt, count) the chunks not seen before."""
    new = reused = new_raw = new_stored = 0
    started = time.perf_counter()
    seen_today: set[bytes] = set()
    with path.open("rb", buffering=0) as f:
        for chunk in store.chunker.cut_stream(f):
            chunk_id = hmac.digest(key, chunk.data, "sha256")
            if chunk_id in store.stored or chunk_id in seen_today:
                reused += 1
                continue
            seen_today.add(chunk_id)
            stored = len(pyrage.encrypt(compressor.compress(chunk.data), [recipient]))
            store.stored[chunk_id] = stored
            new += 1
            new_raw += chunk.length
            new_stored += stored
    return {
        "new_chunks": new,
        "reused_chunks": reused,
        "new_raw_bytes": new_raw,
        "new_stored_bytes": new_stored,
        "total_stored_bytes": sum(store.stored.values()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def whole_object(path: Path, recipient) -> tuple[int, float]:  # noqa: ANN001
    started = time.perf_counter()
    with path.open("rb") as src, open(os.devnull, "wb") as sink:
        stats = encrypt_stream(src, sink, [recipient])
    return stats.stored_bytes, time.perf_counter() - started


# --- the run ----------------------------------------------------------------


def run(size: str, days: int, out: Path, engine: str, pattern: str, restic: bool) -> dict:
    sizes = data.PROFILES[size]
    chain = make_chain(engine, sizes)
    key = secrets.token_bytes(32)
    recipient = pyrage.x25519.Identity.generate().to_public()
    compressor = zstandard.ZstdCompressor(level=3)
    stores = [
        Store(label, FastCDC(avg, min_size=low, max_size=high))
        for label, low, avg, high in SETTINGS
    ]
    # the design keys the gear table too (boundaries unpredictable without the key): same dedup?
    _, low, avg, high = next(s for s in SETTINGS if s[0] == PRIMARY)
    seed = int.from_bytes(hmac.digest(key, b"dbbackup fastcdc seed v1", "sha256")[:8], "big")
    stores.append(
        Store(f"{PRIMARY} keyed seed", FastCDC(avg, min_size=low, max_size=high, seed=seed >> 1))
    )
    scratch = Path(tempfile.mkdtemp(prefix="dbb-chain-", dir=out))
    result: dict = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": engine,
        "size": size,
        "pattern": pattern,
        "days": [],
        "loadavg_start": os.getloadavg(),
    }
    log(f"copying {chain.template} to {chain.name}")
    chain.create()
    repo = Restic(scratch) if restic else None
    try:
        for day in range(1, days + 1):
            change_s = 0.0
            if day > 1:
                started = time.perf_counter()
                chain.change(day, pattern)
                change_s = time.perf_counter() - started
            dump = scratch / f"day{day:02d}.{chain.suffix}"
            started = time.perf_counter()
            chain.dump(dump)
            record = Day(day, dump.stat().st_size, time.perf_counter() - started, change_s, 0, 0)
            if day == 1:
                result["throughput"] = throughput(dump, key)
                log(f"throughput {json.dumps(result['throughput'])}")
            record.whole_stored, record.whole_s = whole_object(dump, recipient)
            for store in stores:
                record.chunked[store.label] = chunk_day(dump, store, key, recipient, compressor)
            if repo is not None:
                record.restic_added, record.restic_s = repo.backup(dump, f"dump.{chain.suffix}")
                record.restic_repo = repo.size()
            dump.unlink()
            result["days"].append(asdict(record))
            primary = record.chunked[PRIMARY]
            log(
                f"day {day}: dump {record.dump_bytes / data.MB:.0f} MB in {record.dump_s:.0f} s, "
                f"whole {record.whole_stored / data.MB:.1f} MB, chunked new "
                f"{primary['new_stored_bytes'] / data.MB:.1f} MB "
                f"({primary['new_chunks']} new / {primary['reused_chunks']} reused), "
                f"restic +{record.restic_added / data.MB:.1f} MB"
            )
            (out / f"chain-{engine}-{size}-{pattern}.json").write_text(json.dumps(result, indent=1))
    finally:
        chain.drop()
        shutil.rmtree(scratch, ignore_errors=True)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["loadavg_end"] = os.getloadavg()
    return result


def markdown(result: dict) -> str:
    """The chain as tables: per day, and the totals against the whole-object pipeline."""
    days = result["days"]
    labels = list(days[0]["chunked"])
    lines = [
        f"### {result['engine']} {result['size']} `{result['pattern']}` chain, "
        f"{len(days)} days ({result['started']} - {result.get('finished', '?')}, "
        f"load {result['loadavg_start'][0]:.2f} at start)",
        "",
        "| day | dump MB | whole-object MB | "
        + " | ".join(f"new {label} MB (new/reused chunks)" for label in labels)
        + " | restic added MB |",
        "|---|---|---|" + "---|" * len(labels) + "---|",
    ]
    for d in days:
        cells = [
            f"{c['new_stored_bytes'] / data.MB:.1f} ({c['new_chunks']}/{c['reused_chunks']})"
            for c in d["chunked"].values()
        ]
        lines.append(
            f"| {d['day']} | {d['dump_bytes'] / data.MB:.0f} | {d['whole_stored'] / data.MB:.1f} | "
            + " | ".join(cells)
            + f" | {d['restic_added'] / data.MB:.1f} |"
        )
    first = days[0]["whole_stored"]
    whole = sum(d["whole_stored"] for d in days)
    restic = days[-1]["restic_repo"]
    lines += [
        "",
        "| after the chain | stored MB | x one whole object | x restic repo |",
        "|---|---|---|---|",
    ]
    rows = [("whole objects, one per day", whole)]
    rows += [
        (f"chunked {label}", days[-1]["chunked"][label]["total_stored_bytes"]) for label in labels
    ]
    if restic:
        rows.append(("restic repository", restic))
    for name, total in rows:
        ratio = f"{total / restic:.2f}" if restic else "-"
        lines.append(f"| {name} | {total / data.MB:.1f} | {total / first:.2f} | {ratio} |")
    if "throughput" in result:
        t = result["throughput"]
        lines += [
            "",
            f"Throughput on the day-1 dump ({t['bytes'] / data.MB:.0f} MB), one thread:",
            "",
            "| chunker min/avg/max | chunks | mean MiB | MB/s from memory | MB/s from a file stream |",
            "|---|---|---|---|---|",
        ]
        for label, c in t["chunking"].items():
            lines.append(
                f"| {label} | {c['chunks']} | {c['mean_mib']} | {c['buffer_mb_s']} | {c['stream_mb_s']} |"
            )
        lines += ["", "| id hash over 2 MiB pieces | MB/s |", "|---|---|"]
        lines += [f"| {name} | {mbs} |" for name, mbs in t["hash"].items()]
        lines += [
            f"| {name}, 2 threads at once (total) | {mbs} |"
            for name, mbs in t["two_threads"].items()
        ]
        lines.append(
            f"| zstd -3 + age per 2 MiB chunk (reference) | {t['zstd3+age per 2 MiB chunk, 1 thread']} |"
        )
        lines.append(
            "| restore side: age -d + zstd -d + HMAC per 2 MiB chunk | "
            f"{t['age+zstd -d+hmac per 2 MiB chunk, 1 thread']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(data.PROFILES), default="100MB")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=["pg", "my"], default="pg")
    parser.add_argument("--pattern", choices=PATTERNS, default="hot")
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.size, args.days, args.out, args.engine, args.pattern, args.restic)
    stem = args.out / f"chain-{args.engine}-{args.size}-{args.pattern}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
