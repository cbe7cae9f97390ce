"""Deduplicated storage through dbbackup's own code, next to whole objects and restic (#15).

    python3 -m tests.benchmarks.dedup_pipeline --size 1GB --out DIR [--engine pg|my]
        [--pattern hot1|hot|mixed|uniform] [--days 14] [--repeat 3] [--no-restic]

A copy of the benchmark database (tests/benchmarks/daily.py) is changed between two
days (about 1% of the rows updated, 0.5% inserted, where --pattern says). Each day it is
backed up twice by the worker process of the other benchmarks (back_up_database, the
backup task's function): once into a LocalBackupStorage with dedup on, once into one
without (whole objects), in alternating order so load hits both alike; and the bare
dump tool's output of the same state goes to `restic backup --stdin`. After each day the
three stores are measured on disk (apparent bytes of all their files, `du -sb`).

Timed side by side (harness.run_group, interleaved, --repeat runs each):
- first backup: both pipelines into empty scratch stores (right after day 1);
- restore of the last day from each store into a scratch database (content checked on the
  first run, dropped after each);
- a backup of the unchanged database (after the last day, nothing changed) into the stores
  of the chain.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pyrage
from prefect_dbbackup.blocks.storage_keys import new_dedup_key

from tests.benchmarks import cases, data, run
from tests.benchmarks.daily import PATTERNS, MyChain, PgChain, Restic, make_chain, tree_bytes
from tests.benchmarks.harness import Group, Sample, Variant, run_group, run_once, summarise

KINDS = ("dedup", "whole")
CONTENT = {"pg": data.pg_content, "my": data.my_content}
DROP = {"pg": data.pg.drop, "my": data.my.drop}
MB = data.MB
# (target text, limit, key of the measured ratio in the result's "ratios")
TARGETS = [
    ("stored after the chain <= 1.5x one whole-object backup", 1.5, "stored_vs_one_whole"),
    ("stored after the chain <= 1.1x the restic repository", 1.1, "stored_vs_restic"),
    ("first backup <= 1.15x the whole-object pipeline", 1.15, "first_backup"),
    ("backup of an unchanged database <= 1.0x the whole-object pipeline", 1.0, "unchanged"),
    ("restore <= 1.1x the whole-object restore", 1.1, "restore"),
    ("peak RSS of every dedup operation <= 250 MB", 250, "dedup_peak_rss_mb"),
]


def log(message: str) -> None:
    print(f"[pipeline {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Bench:
    """The chain database, its two dbbackup stores and the worker commands that use them."""

    ctx: cases.Context
    engine: str
    chain: PgChain | MyChain
    key_file: Path

    def store(self, kind: str) -> Path:
        return self.ctx.path(f"store-{kind}")

    def backup(self, kind: str, name: str, store: Path | None = None) -> Variant:
        """A backup of the chain database into the kind's store (kept), or into `store`
        (a scratch store, removed after each run)."""
        tuning = ["--dedup-key-file", str(self.key_file)] if kind == "dedup" else []
        variant = cases.backup_variant(
            self.ctx, name, self.engine, self.chain.name, *tuning, store=store or self.store(kind)
        )
        if store is None:
            variant.after = None
        if kind == "dedup":
            variant.baseline = name.replace("dedup", "whole")
        return variant

    def restore(self, kind: str) -> Variant:
        """The latest backup of the kind's store restored into a scratch database, checked
        against the chain database on the first run, dropped after each."""
        target = f"{data.PREFIX}restore_{self.engine}_{kind}"
        argv = self.ctx.worker("restore", "--engine", self.engine, "--database", self.chain.name)
        argv += ["--storage", str(self.store(kind)), "--identity", str(self.ctx.identity)]
        argv += ["--target", target]
        return Variant(
            f"restore: {kind}",
            argv,
            baseline="restore: whole" if kind == "dedup" else None,
            env=self.ctx.env(),
            after=lambda: DROP[self.engine](target),
            check=cases._same_content(CONTENT[self.engine], self.chain.name, target),
        )


def _sample(sample: Sample) -> dict[str, Any]:
    """A worker's sample as the day table records it."""
    extra = sample.extra
    return {
        "seconds": round(sample.seconds, 2),
        "peak_rss_mb": round(sample.peak_rss_mb, 1),
        "children_peak_rss_mb": round(extra.get("children_peak_rss_mb", 0), 1),
        "raw_bytes": extra.get("raw_bytes"),
        "chunks_new": extra.get("chunks_new"),
        "chunks_reused": extra.get("chunks_reused"),
    }


def back_up_day(bench: Bench, day: int, totals: dict[str, int]) -> dict[str, Any]:
    """Both dbbackup backups of the day (order alternating by day) and what each added."""
    order = KINDS if day % 2 else KINDS[::-1]
    record: dict[str, Any] = {}
    for kind in order:
        sample = run_once(bench.backup(kind, f"{kind} backup"))
        total = tree_bytes(bench.store(kind))
        record[kind] = {**_sample(sample), "added": total - totals[kind], "total": total}
        totals[kind] = total
    return record


def restic_day(bench: Bench, repo: Restic, day: int) -> dict[str, Any]:
    """The bare tool's dump of the same state, into restic (`backup --stdin`)."""
    dump = bench.ctx.path(f"day{day:02d}.{bench.chain.suffix}")
    started = time.perf_counter()
    bench.chain.dump(dump)
    dump_s = time.perf_counter() - started
    try:
        added, seconds = repo.backup(dump, f"dump.{bench.chain.suffix}")
        return {
            "dump_bytes": dump.stat().st_size,
            "dump_s": round(dump_s, 2),
            "seconds": round(seconds, 2),
            "added": added,
            "total": repo.size(),
        }
    finally:
        dump.unlink(missing_ok=True)


def timed(name: str, variants: list[Variant], repeat: int) -> list[dict[str, Any]]:
    """A group of variants measured side by side, interleaved, without a warm-up."""
    log(name)
    group = Group(name, variants, warmup=False)
    return summarise(group, run_group(group, repeat, log))


def chain_run(args: argparse.Namespace, ctx: cases.Context, key_file: Path) -> dict[str, Any]:
    """The chain of days, then the timed groups; the chain database is dropped at the end."""
    chain = make_chain(args.engine, data.PROFILES[args.size])
    bench = Bench(ctx, args.engine, chain, key_file)
    repo = Restic(ctx.work) if args.restic else None
    days: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    totals = dict.fromkeys(KINDS, 0)
    log(f"copying {chain.template} to {chain.name}")
    chain.create()
    try:
        for day in range(1, args.days + 1):
            change_s = 0.0
            if day > 1:
                started = time.perf_counter()
                chain.change(day, args.pattern)
                change_s = time.perf_counter() - started
            record = {"day": day, "change_s": round(change_s, 2)}
            record |= back_up_day(bench, day, totals)
            if repo is not None:
                record["restic"] = restic_day(bench, repo, day)
            days.append(record)
            log(_day_line(record))
            if day == 1:
                scratch = {k: ctx.path(f"first-{k}") for k in KINDS}
                rows += timed(
                    "first backup (empty stores)",
                    [bench.backup(k, f"first backup: {k}", scratch[k]) for k in KINDS],
                    args.repeat,
                )
        rows += timed("restore of the last day", [bench.restore(k) for k in KINDS], args.repeat)
        rows += timed(
            "backup of the unchanged database",
            [bench.backup(k, f"unchanged backup: {k}") for k in KINDS],
            args.repeat,
        )
    finally:
        chain.drop()
    return {"days": days, "rows": rows}


def _day_line(d: dict[str, Any]) -> str:
    dd, w = d["dedup"], d["whole"]
    text = (
        f"day {d['day']}: whole {w['seconds']:.1f} s +{w['added'] / MB:.1f} MB, dedup "
        f"{dd['seconds']:.1f} s +{dd['added'] / MB:.1f} MB ({dd['chunks_new']} new / "
        f"{dd['chunks_reused']} reused)"
    )
    if "restic" in d:
        text += f", restic +{d['restic']['added'] / MB:.1f} MB"
    return text


def ratios(result: dict[str, Any]) -> dict[str, float | None]:
    """The figures the issue's targets are about."""
    days, rows = result["days"], {r["variant"]: r for r in result["rows"]}
    last = days[-1]
    one_whole = days[0]["whole"]["added"]
    restic = last.get("restic", {}).get("total")

    def time_ratio(prefix: str) -> float | None:
        row = rows.get(f"{prefix}: dedup")
        return row["ratio"] if row else None

    dedup_rss = [d["dedup"]["peak_rss_mb"] for d in days]
    dedup_rss += [r["peak_rss_mb"] for r in result["rows"] if r["variant"].endswith("dedup")]
    return {
        "whole_vs_one_whole": last["whole"]["total"] / one_whole,
        "stored_vs_one_whole": last["dedup"]["total"] / one_whole,
        "stored_vs_restic": last["dedup"]["total"] / restic if restic else None,
        "restic_vs_one_whole": restic / one_whole if restic else None,
        "first_backup": time_ratio("first backup"),
        "unchanged": time_ratio("unchanged backup"),
        "restore": time_ratio("restore"),
        "dedup_peak_rss_mb": max(dedup_rss),
        "whole_peak_rss_mb": max(
            [d["whole"]["peak_rss_mb"] for d in days]
            + [r["peak_rss_mb"] for r in result["rows"] if r["variant"].endswith("whole")]
        ),
    }


def _mb(nbytes: int | None) -> str:
    return "" if nbytes is None else f"{nbytes / MB:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """Conditions, the chain day by day, the stored totals, the timed groups, the targets."""
    meta, days, r = result["meta"], result["days"], result["ratios"]
    lines = [
        f"### {meta['engine']} {meta['size']} `{meta['pattern']}`, {len(days)} days "
        f"({meta['date']} - {meta['finished']})",
        "",
        f"On {meta['host']} ({meta['cpus']} CPUs); load average {meta['load_before']} before, "
        f"{meta['load_after']} after; {meta['repeat']} interleaved runs per timed variant.",
        f"{meta['versions']}",
        "",
        "| day | change s | dump MB | whole s | whole RSS MB | whole +MB | whole total MB "
        "| dedup s | dedup RSS MB | chunks new/reused | dedup +MB | dedup total MB "
        "| restic +MB | restic total MB |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for d in days:
        w, dd, rs = d["whole"], d["dedup"], d.get("restic", {})
        lines.append(
            f"| {d['day']} | {d['change_s']:.1f} | {_mb(w['raw_bytes'])} | {w['seconds']:.2f} | "
            f"{w['peak_rss_mb']:.0f} | {_mb(w['added'])} | {_mb(w['total'])} | "
            f"{dd['seconds']:.2f} | {dd['peak_rss_mb']:.0f} | "
            f"{dd['chunks_new']}/{dd['chunks_reused']} | {_mb(dd['added'])} | "
            f"{_mb(dd['total'])} | {_mb(rs.get('added'))} | {_mb(rs.get('total'))} |"
        )
    last, one = days[-1], days[0]["whole"]["added"]
    restic = last.get("restic", {}).get("total")
    lines += [
        "",
        f"| after {len(days)} days | stored MB | x one whole-object backup | x restic |",
        "|---|---:|---:|---:|",
    ]
    for name, total in (
        ("whole objects", last["whole"]["total"]),
        ("dedup (chunks)", last["dedup"]["total"]),
        ("restic repository", restic),
    ):
        if total is not None:
            vs_restic = f"{total / restic:.2f}" if restic else ""
            lines.append(f"| {name} | {total / MB:.1f} | {total / one:.2f} | {vs_restic} |")
    lines += [
        "",
        "| timed | variant | median s | min s | max s | ratio | peak RSS MB | CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        ratio = "" if row["ratio"] is None else f"**{row['ratio']:.2f}**"
        lines.append(
            f"| {row['case']} | {row['variant']} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['max_s']:.2f} | {ratio} | {row['peak_rss_mb']:.0f} | "
            f"{row['cpu_s_median']:.2f} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for text, limit, key in TARGETS:
        value = r.get(key)
        if value is None:
            lines.append(f"| {text} | not run | |")
            continue
        shown = f"{value:.0f} MB" if key.endswith("_mb") else f"{value:.2f}x"
        lines.append(f"| {text} | {shown} | {'yes' if value <= limit else '**no**'} |")
    return "\n".join(lines) + "\n"


def _first_line(argv: list[str]) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    return out.strip().splitlines()[0] if out.strip() else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(data.PROFILES), default="100MB")
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engine", choices=["pg", "my"], default="pg")
    parser.add_argument("--pattern", choices=PATTERNS, default="hot1")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each timed variant")
    parser.add_argument("--no-restic", dest="restic", action="store_false")
    args = parser.parse_args()
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    (work / "spool").mkdir(parents=True)
    identity = pyrage.x25519.Identity.generate()
    identity_file, key_file = work / "identity.txt", work / "dedup.key"
    for path, text in ((identity_file, str(identity)), (key_file, new_dedup_key())):
        path.write_text(f"{text}\n")
        path.chmod(0o600)
    ctx = cases.Context(
        work=work,
        sizes=data.PROFILES[args.size],
        recipient=str(identity.to_public()),
        identity=identity_file,
    )
    meta = run._meta(args)
    meta |= {"engine": args.engine, "pattern": args.pattern, "days": args.days}
    meta["versions"] += (
        f"; pyfastcdc {version('pyfastcdc')}; {_first_line(['restic', 'version'])}"
        if args.restic
        else f"; pyfastcdc {version('pyfastcdc')}"
    )
    with contextlib.ExitStack() as stack:
        ctx.prefect_env = stack.enter_context(run.prefect_server(work / "prefect-home"))
        result = {"meta": meta, **chain_run(args, ctx, key_file)}
    meta["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    meta["load_after"] = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    result["ratios"] = ratios(result)
    (args.out / "results.json").write_text(json.dumps(result, indent=1, default=str))
    text = markdown(result)
    (args.out / "results.md").write_text(text)
    shutil.rmtree(work, ignore_errors=True)
    print("\n" + text, flush=True)


if __name__ == "__main__":
    sys.exit(main())
