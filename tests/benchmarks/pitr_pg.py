"""Point-in-time recovery for PostgreSQL (#27), measured in one run:

    python3 -m tests.benchmarks.pitr_pg [--scale 68] [--seconds 120] [--interval 10]
        [--wal-mb 1000] [--repeat 3] [--out DIR]

1. RPO: a writer commits one row per transaction (each commit's time recorded) on a private
   cluster with pitr for --seconds while `dbbackup archive` runs as a child process every
   --interval seconds (tests/benchmarks/pitr.py's schedule); then kill -9 of the postmaster,
   its data directory deleted, `restore-cluster --to-time latest` into a new directory,
   started until it has promoted. Reports the seconds between the last commit and the
   newest restored one, the rows lost, the archive runs' durations, and whether the issue's
   bound held: loss <= interval + one run's duration (the longest).
2. Keeping up: `pgbench -c 2 -j 2 -T --seconds` at full speed (scale 10) with the archive
   every --interval seconds; per run the lag in bytes (the server's flush LSN right after
   the run minus where the run's manifest says the archive ends) and in seconds (the run's
   end minus its server_time), and the slope of both over the runs.
3. Restore to latest against the bare tools: `pgbench -i -s --scale` (68: ~1 GB), dbbackup's
   base backup and right after it a plain `pg_basebackup -Ft -X none`, then pgbench until
   --wal-mb of WAL, archived. Interleaved --repeat times: `dbbackup restore-cluster --to-time
   latest` + start + wait until promoted, against untar of the plain backup + recovery.signal
   + `restore_command = 'cp WAL/%f "%p"'` from a local copy of the archived segments (taken
   once, untimed, from a restore's pg_wal) + start + wait until promoted; and restore-cluster
   alone against the untar alone (the fixed cost). Each started result is checked once
   (untimed): pgbench_accounts' rows and sum(abalance), pgbench_history's rows, as the
   source's.

The sources run with full_page_writes = on (tests/pg_cluster.py turns it off; fsync stays
off there, so pgbench commits faster than on a durable disk: a harder case for the archive).
The restored clusters start with PostgreSQL's defaults (fsync on), both ways alike. Only
private clusters it starts and stops (as `nobody`); the machine's :5432 is never used.
Storage: a local storage block in a temp dir; the Prefect API: harness.prefect_api(). Writes
results.json and results.md into --out. Not a test: no timed assertions. See
docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.benchmarks.harness import Group, Variant, prefect_api, run_group, summarise
from tests.benchmarks.pitr import PAD, Setup, log, make_setup, slope
from tests.pg_cluster import DEBIAN_15, RUN_AS, RUNUSER, PrivateCluster, free_port

DB = "bench"
SOURCE_SETTINGS = "-c full_page_writes=on"  # as on a production server: real WAL volume
PITR, BARE = (
    "dbbackup restore-cluster --to-time latest + start",
    "untar pg_basebackup + restore_command cp + start",
)
PITR_PART, BARE_PART = "dbbackup restore-cluster alone", "untar alone"


def bin_(tool: str) -> str:
    return str(DEBIAN_15 / tool)


def save_server(cluster: PrivateCluster, role: str) -> str:
    from prefect_dbbackup.blocks import PostgresServer

    tag = uuid.uuid4().hex[:8]
    name = f"pgpitr-{role}-{tag}"
    PostgresServer(
        host="127.0.0.1", port=cluster.port, user="postgres", pitr=True, pitr_slot=f"dbb_{tag}"
    ).save(name)
    return name


def source(prefix: str) -> PrivateCluster:
    cluster = PrivateCluster.new(prefix=prefix)
    cluster.start(settings=SOURCE_SETTINGS)
    cluster.create(DB)
    return cluster


def pgbench(cluster: PrivateCluster, *args: str) -> str:
    """pgbench against the cluster's bench database: its stdout."""
    argv = [bin_("pgbench"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    done = subprocess.run([*argv, *args, DB], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return done.stdout


def tps(output: str) -> float:
    found = re.search(r"tps = ([0-9.]+)", output)
    return float(found.group(1)) if found else 0.0


def lsn(cluster: PrivateCluster, function: str = "pg_current_wal_lsn") -> int:
    """An LSN of the server as a number (function: pg_current_wal_lsn, ..._flush_lsn)."""
    return int(cluster.query("postgres", f"SELECT {function}() - '0/0'::pg_lsn")[0][0])


def promoted(data: Path) -> PrivateCluster:
    """The restored data directory, owned by the server's user, started; once PostgreSQL has
    replayed the WAL and promoted itself (tests/integration/test_pitr_postgres.py)."""
    cluster = PrivateCluster.new(prefix="dbb-pitrbench-restored-")
    shutil.move(str(data), cluster.data)
    subprocess.run(["chown", "-R", RUN_AS, str(cluster.base)], check=True)
    cluster.launch()
    deadline = time.monotonic() + 1200
    while cluster.query("postgres", "SELECT pg_is_in_recovery()")[0][0]:
        if time.monotonic() > deadline:
            cluster.stop()
            raise RuntimeError("the restored cluster did not promote in 20 minutes")
        time.sleep(0.2)
    return cluster


# --- 1 and 2: RPO and keeping up ------------------------------------------------------


@dataclass
class ArchiveRun:
    began: float  # epoch seconds
    ended: float
    exit_code: int
    flush_lsn: int | None = None  # the server's flush position right after the run
    end_lsn: int | None = None  # where the run's manifest says the archive ends
    server_time: float | None = None  # the manifest's server_time (epoch seconds)
    raw_bytes: int = 0

    @property
    def lag_bytes(self) -> int | None:
        if self.flush_lsn is None or self.end_lsn is None:
            return None
        return self.flush_lsn - self.end_lsn

    @property
    def lag_s(self) -> float | None:
        return None if self.server_time is None else self.ended - self.server_time


def schedule(
    setup: Setup,
    server: str,
    cluster: PrivateCluster,
    interval: float,
    stop: threading.Event,
    runs: list[ArchiveRun],
) -> None:
    """`dbbackup archive` every interval seconds from now (late: at once) until stop, each
    followed by the server's flush LSN; a failed run is recorded and the next one goes on."""
    start = time.monotonic()
    while not stop.wait(max(0.0, start + len(runs) * interval - time.monotonic())):
        began = time.time()
        _, code, err = setup.dbbackup("archive", server, check=False)
        run = ArchiveRun(began, time.time(), code)
        with contextlib.suppress(Exception):  # the server was killed
            run.flush_lsn = lsn(cluster, "pg_current_wal_flush_lsn")
        runs.append(run)
        log(f"  archive run {len(runs)}: {run.ended - began:.2f} s, exit {code}")
        if code != 0 and not stop.is_set():
            log(err[-1000:])


def attach(setup: Setup, server: str, runs: list[ArchiveRun]) -> None:
    """Each run's archive end, server time and bytes, from the manifest it stored (matched by
    its start time)."""
    from prefect_dbbackup.blocks.wal import parse_segment
    from prefect_dbbackup.tasks.archive import read_archive

    for manifest in read_archive(setup.storage, server).trusted:
        at = manifest.started_at.timestamp()
        run = next((r for r in runs if r.began <= at <= r.ended), None)
        if run is None:
            continue  # the base backup's own run
        run.end_lsn = parse_segment(manifest.end.file)[1] + manifest.end.position
        run.server_time = manifest.server_time.timestamp() if manifest.server_time else None
        run.raw_bytes = sum(p.stats.raw_bytes for p in manifest.pieces)


def run_rows(runs: list[ArchiveRun], killed: float | None = None) -> list[dict[str, Any]]:
    return [
        asdict(r)
        | {"seconds": r.ended - r.began, "lag_bytes": r.lag_bytes, "lag_s": r.lag_s}
        | ({"after_kill": r.ended >= killed} if killed else {})
        for r in runs
    ]


@dataclass
class Writer:
    """Commits one row per transaction until the server dies or stop is set."""

    cluster: PrivateCluster
    committed: list[float] = field(default_factory=list)  # row id - 1 -> commit time
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pad = "x" * PAD
        try:
            with self.cluster.connect(DB) as conn:  # autocommit: one transaction each
                while not self.stop.is_set():
                    conn.execute("INSERT INTO t VALUES (%s, %s)", (len(self.committed) + 1, pad))
                    self.committed.append(time.time())
        except Exception:  # noqa: BLE001 (the server was killed under it)
            return


def rpo_case(setup: Setup, seconds: float, interval: float) -> dict[str, Any]:
    """Case 1: write, archive on a schedule, kill -9, restore-cluster to latest elsewhere."""
    lost, restored = source("dbb-pitrbench-lost-"), None
    try:
        name = save_server(lost, "lost")
        lost.execute(DB, "CREATE TABLE t (id int PRIMARY KEY, pad text)")
        base_s, _, _ = setup.dbbackup("base-backup", name)
        writer, stop = Writer(lost), threading.Event()
        runs: list[ArchiveRun] = []
        threads = [
            threading.Thread(target=writer.run),
            threading.Thread(target=schedule, args=(setup, name, lost, interval, stop, runs)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        postmaster = int((lost.data / "postmaster.pid").read_text().split()[0])
        killed = time.time()
        os.kill(postmaster, signal.SIGKILL)
        stop.set()
        writer.stop.set()
        for thread in threads:
            thread.join()
        lost.stop()  # the data directory is gone
        attach(setup, name, runs)
        target = setup.root / "rpo-restored"
        restore_s, _, _ = setup.dbbackup(
            "restore-cluster", name, "--to-time", "latest", "--data-dir", str(target)
        )
        started = time.perf_counter()
        restored = promoted(target)
        replay_s = time.perf_counter() - started
        count, last = restored.query(DB, "SELECT count(*), coalesce(max(id), 0) FROM t")[0]
    finally:
        lost.stop()
        if restored is not None:
            restored.stop()
    if count != last:
        raise RuntimeError(f"restored rows are not 1..{last}: {count} rows")
    done = [r for r in runs if r.ended < killed]
    durations = [r.ended - r.began for r in done] or [float("nan")]  # none ended before
    last_commit = writer.committed[-1]
    newest = writer.committed[last - 1] if 0 < last <= len(writer.committed) else last_commit
    loss = last_commit - newest
    bound = interval + max(durations)
    return {
        "seconds": seconds,
        "interval": interval,
        "commits": len(writer.committed),
        "commits_per_s": len(writer.committed) / seconds,
        "wal_mb_per_s": sum(r.raw_bytes for r in runs) / 1e6 / seconds,
        "restored_rows": count,
        "rows_lost": len(writer.committed) - count,
        "loss_s": loss,
        "kill_minus_newest_s": killed - newest,
        "bound_s": bound,
        "bound_held": loss <= bound,
        "failed_runs": len([r for r in done if r.exit_code != 0]),
        "base_backup_s": base_s,
        "restore_cluster_s": restore_s,
        "start_to_promoted_s": replay_s,
        "run_median_s": statistics.median(durations),
        "run_max_s": max(durations),
        "runs": run_rows(runs, killed),
    }


def keeps_up_case(setup: Setup, seconds: float, interval: float) -> dict[str, Any]:
    """Case 2: pgbench at full speed, archive on a schedule; the lag per run."""
    cluster = source("dbb-pitrbench-busy-")
    try:
        name = save_server(cluster, "busy")
        pgbench(cluster, "-i", "-q", "-s", "10")
        setup.dbbackup("base-backup", name)
        stop, runs = threading.Event(), []
        archiver = threading.Thread(
            target=schedule, args=(setup, name, cluster, interval, stop, runs)
        )
        first = lsn(cluster)
        archiver.start()
        try:
            output = pgbench(cluster, "-n", "-c", "2", "-j", "2", "-T", str(int(seconds)))
        finally:
            wal = lsn(cluster) - first
            stop.set()
            archiver.join()
        attach(setup, name, runs)
    finally:
        cluster.stop()
    rows = [r for r in runs if r.exit_code == 0]
    lag_b = [r.lag_bytes for r in rows if r.lag_bytes is not None]
    lag_s = [r.lag_s for r in rows if r.lag_s is not None]
    durations = [r.ended - r.began for r in runs]
    return {
        "seconds": seconds,
        "interval": interval,
        "tps": tps(output),
        "wal_mb": wal / 1e6,
        "wal_mb_per_s": wal / 1e6 / seconds,
        "failed_runs": len(runs) - len(rows),
        "run_median_s": statistics.median(durations),
        "run_max_s": max(durations),
        "lag_mb": [b / 1e6 for b in lag_b],
        "lag_s": lag_s,
        "lag_mb_slope_per_run": (slope(lag_b) or 0) / 1e6,
        "lag_s_slope_per_run": slope(lag_s),
        "runs": run_rows(runs),
    }


# --- 3: restore to latest against the bare tools --------------------------------------


def counts(port: int) -> tuple[int, int, int]:
    """pgbench_accounts' rows and sum(abalance), pgbench_history's rows."""
    return PrivateCluster(port=port).query(
        DB,
        "SELECT (SELECT count(*) FROM pgbench_accounts), "
        "(SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts), "
        "(SELECT count(*) FROM pgbench_history)",
    )[0]


def start_script(work: Path, port: int) -> str:
    """Start work/data as the server's user, then wait until it has promoted."""
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={work}"
    psql = f"{bin_('psql')} -h 127.0.0.1 -p {port} -U postgres -d postgres -Atc"
    return (
        f"chown -R {RUN_AS} {work}/data && {RUNUSER} -u {RUN_AS} -- {bin_('pg_ctl')} -D "
        f"{work}/data -w -t 1200 -l {work}/server.log -o '{options}' start >/dev/null && "
        f"n=0; until [ \"$({psql} 'SELECT pg_is_in_recovery()' 2>/dev/null)\" = f ]; do "
        "n=$((n + 1)); [ $n -lt 12000 ] || exit 9; sleep 0.1; done"
    )


def restore_case(setup: Setup, scale: int, wal_mb: float, repeat: int) -> dict[str, Any]:
    """Case 3: restore-cluster to latest + start against untar + restore_command cp + start."""
    src = source("dbb-pitrbench-src-")
    work = Path(tempfile.mkdtemp(prefix="dbb-pitrbench-dst-"))  # the server's user's
    shutil.chown(work, RUN_AS)
    data = work / "data"
    try:
        name = save_server(src, "src")
        started = time.perf_counter()
        pgbench(src, "-i", "-q", "-s", str(scale))
        init_s = time.perf_counter() - started
        db_mb = src.query(DB, "SELECT pg_database_size(current_database())")[0][0] / 1e6
        base_s, _, _ = setup.dbbackup("base-backup", name)
        plain = setup.root / "plain"
        subprocess.run(
            [bin_("pg_basebackup"), "-h", "127.0.0.1", "-p", str(src.port), "-U", "postgres"]
            + ["-Ft", "-X", "none", "-c", "fast", "-D", str(plain)],
            check=True,
            capture_output=True,
        )
        first, started, load_tps = lsn(src), time.perf_counter(), []
        while lsn(src) - first < wal_mb * 1e6 and time.perf_counter() - started < 600:
            load_tps.append(tps(pgbench(src, "-n", "-c", "2", "-j", "2", "-T", "10")))
        load_s, wal = time.perf_counter() - started, lsn(src) - first
        archive_s, _, _ = setup.dbbackup("archive", name)
        expected = counts(src.port)
        log(f"  {db_mb:.0f} MB database, {wal / 1e6:.0f} MB of WAL in {load_s:.0f} s, "
            f"archived in {archive_s:.1f} s; source {expected}")  # fmt: skip
        once = setup.root / "once"  # the archived WAL, local: a restore's pg_wal, untimed
        setup.dbbackup("restore-cluster", name, "--to-time", "latest", "--data-dir", str(once))
        wal_dir = work / "wal"
        shutil.move(once / "pg_wal", wal_dir)
        shutil.rmtree(once)
        segments = sorted(p.name for p in wal_dir.iterdir() if p.is_file())
        subprocess.run(["chown", "-R", RUN_AS, str(wal_dir)], check=True)
        port = free_port()

        def after() -> None:
            pg_ctl = [bin_("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            if (data / "postmaster.pid").exists():
                subprocess.run([RUNUSER, "-u", RUN_AS, "--", *pg_ctl], capture_output=True)
            shutil.rmtree(data, ignore_errors=True)
            (work / "server.log").unlink(missing_ok=True)

        def check() -> None:
            if counts(port) != expected:
                raise RuntimeError(f"restored {counts(port)}, source {expected}")

        def unpacked() -> None:
            if not (data / "PG_VERSION").is_file():
                raise RuntimeError(f"{data} holds no PG_VERSION")

        untar = f"mkdir -m 700 {data} && tar -xf {plain}/base.tar -C {data}"
        recovery = (
            f'echo "restore_command = \'cp {wal_dir}/%f \\"%p\\"\'" >> '
            f"{data}/postgresql.auto.conf && touch {data}/recovery.signal"
        )
        restore = shlex.join(
            setup.argv("restore-cluster", name, "--to-time", "latest", "--data-dir", str(data))
        )
        start = start_script(work, port)
        variants = [  # (name, shell command, baseline, check)
            (PITR, f"{restore} >/dev/null && {start}", BARE, check),
            (BARE, f"{untar} && {recovery} && {start}", None, check),
            (PITR_PART, restore, BARE_PART, unpacked),
            (BARE_PART, untar, None, unpacked),
        ]
        group = Group(
            case="restore to latest",
            warmup=False,
            variants=[
                Variant(v, ["bash", "-o", "pipefail", "-c", cmd], base, setup.env, after, chk)
                for v, cmd, base, chk in variants
            ],
        )
        samples = run_group(group, repeat, lambda line: log(line))
    finally:
        src.stop()
        if (data / "postmaster.pid").exists():
            pg_ctl = [bin_("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]
            subprocess.run([RUNUSER, "-u", RUN_AS, "--", *pg_ctl], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    return {
        "scale": scale,
        "db_mb": db_mb,
        "plain_tar_mb": (plain / "base.tar").stat().st_size / 1e6,
        "wal_mb": wal / 1e6,
        "wal_segments": len(segments),
        "init_s": init_s,
        "base_backup_s": base_s,
        "load_s": load_s,
        "load_tps": load_tps,
        "archive_s": archive_s,
        "source": expected,
        "variants": summarise(group, samples),
    }


# --- report ---------------------------------------------------------------------------


def markdown(meta: dict[str, Any], rpo: dict, busy: dict, restore: dict) -> str:
    ok = [r for r in rpo["runs"] if not r["after_kill"]]
    lines = [
        f"Taken {meta['started']} on {meta['host']} ({os.cpu_count()} CPUs), commit "
        f"{meta['commit']}; load average {meta['load_before']} before, {meta['load_after']} "
        f"after; {meta['minutes']:.1f} minutes. Command: `{meta['command']}`",
        "",
        f"RPO: {rpo['seconds']:.0f} s of writes ({rpo['commits']} commits, "
        f"{rpo['commits_per_s']:.0f}/s, {rpo['wal_mb_per_s']:.2f} MB/s of WAL archived), "
        f"archive every {rpo['interval']:.0f} s, then kill -9 of the postmaster and the data "
        "directory deleted.",
        "",
        "| data lost | rows lost | bound (interval + longest run) | held | archive run median"
        " | max | restore-cluster | start to promoted |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
        f"| {rpo['loss_s']:.2f} s | {rpo['rows_lost']} | {rpo['bound_s']:.2f} s | "
        f"{'yes' if rpo['bound_held'] else '**no**'} | {rpo['run_median_s']:.2f} s | "
        f"{rpo['run_max_s']:.2f} s | {rpo['restore_cluster_s']:.2f} s | "
        f"{rpo['start_to_promoted_s']:.2f} s |",
        "",
        f"(kill minus the newest restored commit: {rpo['kill_minus_newest_s']:.2f} s.) Run "
        "durations: "
        + ", ".join(f"{r['seconds']:.1f}" for r in ok)
        + f" s; failed before the kill: {rpo['failed_runs']}.",
        "",
        f"Keeping up: pgbench -c 2 -j 2 for {busy['seconds']:.0f} s at {busy['tps']:.0f} tps, "
        f"{busy['wal_mb']:.0f} MB of WAL ({busy['wal_mb_per_s']:.1f} MB/s), archive every "
        f"{busy['interval']:.0f} s; failed runs: {busy['failed_runs']}.",
        "",
        "| run | seconds | MB stored | lag MB | lag s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for number, r in enumerate(busy["runs"], 1):
        lag_mb = "" if r["lag_bytes"] is None else f"{r['lag_bytes'] / 1e6:.1f}"
        lag_s = "" if r["lag_s"] is None else f"{r['lag_s']:.2f}"
        lines.append(
            f"| {number} | {r['seconds']:.2f} | {r['raw_bytes'] / 1e6:.1f} | {lag_mb} | {lag_s} |"
        )
    lines += [
        "",
        f"Slope of the lag: {busy['lag_mb_slope_per_run']:+.2f} MB and "
        f"{busy['lag_s_slope_per_run'] or 0:+.3f} s per run.",
        "",
        f"Restore to latest: pgbench scale {restore['scale']} ({restore['db_mb']:.0f} MB "
        f"database, plain tar {restore['plain_tar_mb']:.0f} MB), then {restore['wal_mb']:.0f} "
        f"MB of WAL ({restore['wal_segments']} segments, pgbench {restore['load_s']:.0f} s), "
        f"archived in {restore['archive_s']:.1f} s; base backup {restore['base_backup_s']:.1f}"
        " s.",
        "",
        "| variant | median s | min s | max s | ratio | CPU s (children) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in restore["variants"]:
        ratio = f"**{row['ratio']:.2f}**" if row["ratio"] else ""
        lines.append(
            f"| {row['variant']} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['max_s']:.2f} | {ratio} | {row['cpu_s_median']:.2f} |"
        )
    med = {row["variant"]: row["median_s"] for row in restore["variants"]}
    ours, bare = med[PITR] - med[PITR_PART], med[BARE] - med[BARE_PART]
    lines += [
        "",
        f"Start to promoted (the whole minus its part, medians): after restore-cluster "
        f"{ours:.2f} s, after the untar (WAL by restore_command) {bare:.2f} s.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=68)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--wal-mb", type=float, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dbbackup-bench-pitr-pg"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before prefect loads
    root = Path(tempfile.mkdtemp(prefix="dbbackup-pitr-pg-bench-"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    meta = {
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": os.uname().nodename,
        "commit": commit,
        "command": "python3 -m tests.benchmarks.pitr_pg " + " ".join(sys.argv[1:]),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    began = time.monotonic()
    log(f"load before: {meta['load_before']}")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"meta": meta}

    def done(case: str, figures: dict[str, Any]) -> dict[str, Any]:
        """Keep a case's figures (partial.json: what a later failure leaves)."""
        result[case] = figures
        (args.out / "partial.json").write_text(json.dumps(result, indent=2, default=str))
        return figures

    try:
        with prefect_api():
            setup = make_setup(root)
            log(f"RPO: {args.seconds:.0f} s of writes, archive every {args.interval:.0f} s")
            rpo = done("rpo", rpo_case(setup, args.seconds, args.interval))
            log(f"keeping up: pgbench for {args.seconds:.0f} s")
            busy = done("keeps_up", keeps_up_case(setup, args.seconds, args.interval))
            log(f"restore: scale {args.scale}, {args.wal_mb:.0f} MB of WAL, {args.repeat} runs")
            restore = done("restore", restore_case(setup, args.scale, args.wal_mb, args.repeat))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    meta["minutes"] = (time.monotonic() - began) / 60
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    text = markdown(meta, rpo, busy, restore)
    (args.out / "results.md").write_text(text)
    print(text)
    log(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
