"""Point-in-time recovery for MariaDB (#27), measured in one run:

    python3 -m tests.benchmarks.pitr [--seconds 60] [--interval 10] [--rows 100000]
        [--repeat 3] [--out DIR]

1. RPO: a writer commits one row per transaction (each commit's time recorded) on a private
   MariaDB with pitr for --seconds while `dbbackup archive` runs as a child process every
   --interval seconds (a schedule: the next run starts on time, or at once after a late
   one); then kill -9 of the server, its data directory deleted, and `restore --to-time
   latest --from-server` onto a second private server. Reports the seconds between the
   last restored commit and the kill, the rows lost, the archive runs' durations, and
   whether the issue's bound held: loss <= interval + one run's duration (the longest).
2. Keeping up: per archive run, its end minus the time of the newest event it archived
   (binlog times are whole seconds), and the slope of that series over the runs.
3. Replay against the bare tools: a dump, then --rows rows inserted and updated (~1.7 KB of
   binlog per row), archived; `dbbackup restore --to-time latest` onto another private
   server against `mariadb < dump.sql` and `mariadb-binlog --database=DB FILES | mariadb DB`
   from local copies, and the dump's restore alone both ways (to tell the replay from the
   dump and a command's fixed cost), interleaved, --repeat times; each result checked by
   CHECKSUM TABLE against the source (untimed) and dropped.

Only private servers (tests/mariadb_private.py) it starts and stops; the machine's :3306 is
never used. Storage: a local storage block in a temp dir; the Prefect API: harness.
prefect_api(). Writes results.json and results.md into --out. Not a test: no timed
assertions. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyrage

from tests.benchmarks.harness import Group, Variant, prefect_api, run_group, summarise
from tests.mariadb_private import PrivateMariaDB

CLI = [sys.executable, "-c", "from prefect_dbbackup.flows.cli import main; main()"]
DB = "bench"
PAD = 1000  # bytes of each row the RPO writer commits
BATCH = 1000  # rows per transaction of the replay case's load
PITR, BARE_PITR = (
    "dbbackup restore --to-time latest",
    "mariadb < dump.sql; mariadb-binlog | mariadb",
)
DUMP, BARE_DUMP = "dbbackup restore (the dump only)", "mariadb < dump.sql"


def log(message: str) -> None:
    print(f"[pitr {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Setup:
    """The storage and encryption blocks every dbbackup child uses, and its environment."""

    root: Path
    storage: Any  # the LocalBackupStorage block (read in-process for the lag)
    storage_name: str
    encryption_name: str
    env: dict[str, str]

    def dbbackup(self, *args: str, check: bool = True) -> tuple[float, int, str]:
        """Run `dbbackup ARGS --storage --encryption` as a child: (seconds, exit code, stderr)."""
        argv = [*CLI, *args, "--storage", self.storage_name, "--encryption", self.encryption_name]
        started = time.perf_counter()
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if check and done.returncode != 0:
            raise RuntimeError(
                f"dbbackup {args[0]} exited {done.returncode}: {done.stderr[-3000:]}"
            )
        return seconds, done.returncode, done.stderr

    def argv(self, *args: str) -> list[str]:
        return [*CLI, *args, "--storage", self.storage_name, "--encryption", self.encryption_name]


def make_setup(root: Path) -> Setup:
    """Save an age key, a signed local storage and the encryption block (API entered)."""
    from prefect.settings import PREFECT_API_URL
    from prefect_dbbackup.blocks import AgeEncryption, LocalBackupStorage

    from tests.helpers import signing_fields

    identity = pyrage.x25519.Identity.generate()
    key = root / "identity.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    tag = uuid.uuid4().hex[:8]
    storage = LocalBackupStorage(path=str(root / "backups"), **signing_fields())
    storage.save(f"pitr-store-{tag}")
    AgeEncryption(recipients=[str(identity.to_public())], identity_file=str(key)).save(
        f"pitr-keys-{tag}"
    )
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return Setup(root, storage, f"pitr-store-{tag}", f"pitr-keys-{tag}", env)


def save_server(server: PrivateMariaDB, role: str) -> str:
    from prefect_dbbackup.blocks import MySQLServer

    name = f"pitr-{role}-{uuid.uuid4().hex[:8]}"
    MySQLServer(host="127.0.0.1", port=server.port, user="root", pitr=True).save(name)
    return name


# --- 1 and 2: RPO and keeping up ------------------------------------------------------


@dataclass
class ArchiveRun:
    began: float  # epoch seconds
    ended: float
    exit_code: int
    lag_s: float | None = None  # ended - newest archived event (None: no manifest found)
    raw_bytes: int = 0


@dataclass
class Writer:
    """Commits one row per transaction until the server dies or stop is set."""

    server: PrivateMariaDB
    committed: list[float] = field(default_factory=list)  # row id - 1 -> commit time
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        pad = "x" * PAD
        with self.server.connect(DB) as conn, conn.cursor() as cur:
            conn.autocommit(False)
            while not self.stop.is_set():
                try:
                    cur.execute("INSERT INTO t VALUES (%s, %s)", (len(self.committed) + 1, pad))
                    conn.commit()
                except Exception:  # noqa: BLE001 (the server was killed under it)
                    return
                self.committed.append(time.time())


def schedule(
    setup: Setup, server: str, interval: float, stop: threading.Event, runs: list[ArchiveRun]
) -> None:
    """`dbbackup archive` every interval seconds from now (late: at once) until stop; a failed
    run is recorded (its exit code) and the next one goes on, as on a schedule."""
    start = time.monotonic()
    while not stop.wait(max(0.0, start + len(runs) * interval - time.monotonic())):
        began = time.time()
        _, code, err = setup.dbbackup("archive", server, check=False)
        runs.append(ArchiveRun(began, time.time(), code))
        log(f"  archive run {len(runs)}: {runs[-1].ended - began:.2f} s, exit {code}")
        if code != 0 and not stop.is_set():
            log(err[-1000:])


def attach_lags(setup: Setup, server: str, runs: list[ArchiveRun]) -> None:
    """Each run's lag and bytes, from the run manifest it stored (matched by start time)."""
    from prefect_dbbackup.tasks.archive import read_archive

    for manifest in read_archive(setup.storage, server).trusted:
        at = manifest.started_at.timestamp()
        run = next((r for r in runs if r.began <= at <= r.ended), None)
        times = [p.last_event_at for p in manifest.pieces if p.last_event_at]
        if run is not None and times:
            run.lag_s = run.ended - max(times).timestamp()
            run.raw_bytes = sum(p.stats.raw_bytes for p in manifest.pieces)


def slope(values: list[float]) -> float | None:
    """Least-squares slope of values over their index (seconds of lag per run)."""
    if len(values) < 2:
        return None
    return statistics.linear_regression(range(len(values)), values).slope


def rpo_case(setup: Setup, seconds: float, interval: float) -> dict[str, Any]:
    """Cases 1 and 2: write, archive on a schedule, kill -9, restore to latest elsewhere."""
    lost, new = PrivateMariaDB.start(server_id=7), PrivateMariaDB.start(server_id=8)
    try:
        lost_name, new_name = save_server(lost, "lost"), save_server(new, "new")
        lost.create(DB)
        lost.execute(DB, f"CREATE TABLE t (id INT PRIMARY KEY, pad VARCHAR({PAD})) ENGINE=InnoDB")
        setup.dbbackup("backup", lost_name, "-d", DB)
        writer, stop = Writer(lost), threading.Event()
        runs: list[ArchiveRun] = []
        threads = [
            threading.Thread(target=writer.run),
            threading.Thread(target=schedule, args=(setup, lost_name, interval, stop, runs)),
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        killed = time.time()
        os.kill(lost.process.pid, signal.SIGKILL)
        lost.process.wait(timeout=30)
        stop.set()
        for thread in threads:
            thread.join()
        lost.stop()  # the data directory is gone
        attach_lags(setup, lost_name, runs)
        restore_s, _, _ = setup.dbbackup(
            "restore", new_name, DB, "--to-time", "latest", "--from-server", lost_name
        )
        count, last = new.query(DB, "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM t")[0]
    finally:
        lost.stop()
        new.stop()
    if count != last:
        raise RuntimeError(f"restored rows are not 1..{last}: {count} rows")
    done = [r for r in runs if r.ended < killed]
    failed = [r for r in done if r.exit_code != 0]
    durations = [r.ended - r.began for r in done]
    last_at = writer.committed[last - 1] if 0 < last <= len(writer.committed) else killed
    loss = killed - last_at
    bound = interval + max(durations)
    lags = [r.lag_s for r in done if r.lag_s is not None]
    return {
        "seconds": seconds,
        "interval": interval,
        "commits": len(writer.committed),
        "commits_per_s": len(writer.committed) / seconds,
        "binlog_mb_per_s": sum(r.raw_bytes for r in runs) / 1e6 / seconds,
        "restored_rows": count,
        "rows_lost": len(writer.committed) - count,
        "loss_s": loss,
        "bound_s": bound,
        "bound_held": loss <= bound,
        "failed_runs": len(failed),
        "restore_s": restore_s,
        "run_median_s": statistics.median(durations),
        "run_max_s": max(durations),
        "runs": [
            asdict(r) | {"seconds": r.ended - r.began, "after_kill": r.ended >= killed}
            for r in runs
        ],  # fmt: skip
        "lags_s": lags,
        "lag_slope_s_per_run": slope(lags),
    }


# --- 3: replay against the bare tools -------------------------------------------------


def client(server: PrivateMariaDB, tool: str = "mariadb") -> list[str]:
    return [
        shutil.which(tool) or tool,
        "--protocol=tcp",
        "-h127.0.0.1",
        f"-P{server.port}",
        "-uroot",
    ]


def load(server: PrivateMariaDB, first: int, rows: int) -> None:
    """Insert ids first..first+rows-1, then update each once, BATCH rows per transaction."""
    pad = "REPEAT(MD5(seq), 16)"  # 512 bytes
    with server.connect(DB) as conn, conn.cursor() as cur:
        for a in range(first, first + rows, BATCH):
            b = min(a + BATCH, first + rows) - 1
            cur.execute(f"INSERT INTO t SELECT seq, 0, {pad} FROM seq_{a}_to_{b}")
        for a in range(first, first + rows, BATCH):
            cur.execute("UPDATE t SET n = n + 1 WHERE id BETWEEN %s AND %s", (a, a + BATCH - 1))


def checksum(server: PrivateMariaDB) -> tuple[int, int]:
    count = server.query(DB, "SELECT COUNT(*) FROM t")[0][0]
    return count, server.query(DB, "CHECKSUM TABLE t EXTENDED")[0][1]


def checked(server: PrivateMariaDB, wanted: tuple[int, int]) -> Callable[[], None]:
    """A check that the restored table's rows and checksum are the source's."""

    def check() -> None:
        if checksum(server) != wanted:
            raise RuntimeError(f"restored {checksum(server)}, source {wanted}")

    return check


def replay_case(setup: Setup, rows: int, repeat: int) -> dict[str, Any]:
    """Case 3: dbbackup restore to latest against mariadb < dump + mariadb-binlog | mariadb."""
    src, dst = PrivateMariaDB.start(server_id=11), PrivateMariaDB.start(server_id=12)
    try:
        src_name, dst_name = save_server(src, "src"), save_server(dst, "dst")
        src.create(DB)
        src.execute(
            DB, "CREATE TABLE t (id INT PRIMARY KEY, n INT, pad VARCHAR(600)) ENGINE=InnoDB"
        )
        load(src, 1, max(rows // 10, 1))
        src.execute(DB, "FLUSH BINARY LOGS")  # the files from here on: what the dumps lack
        setup.dbbackup("backup", src_name, "-d", DB)
        dump = setup.root / "dump.sql"
        with dump.open("wb") as out:
            subprocess.run(
                [*client(src, "mariadb-dump"), "--single-transaction", DB], stdout=out, check=True
            )
        dumped = checksum(src)
        first_file = src.query(None, "SHOW MASTER STATUS")[0][0]  # no write since both dumps
        started = time.perf_counter()
        load(src, rows // 10 + 1, rows)
        load_s = time.perf_counter() - started
        src.execute(DB, "FLUSH BINARY LOGS")
        archive_s, _, _ = setup.dbbackup("archive", src_name)
        copies = setup.root / "binlog"
        copies.mkdir()
        files = [shutil.copy(f, copies) for f in src.binlog_files()[:-1] if f.name >= first_file]
        binlog_mb = sum(Path(f).stat().st_size for f in files) / 1e6
        expected = checksum(src)

        def after() -> None:
            dst.drop(DB)
            dst.execute(None, "RESET MASTER")  # the replays' own binlog: disk, not time

        mariadb = " ".join(client(dst))
        dump_bare = f"{mariadb} -e 'CREATE DATABASE {DB}' && {mariadb} {DB} < {dump}"
        replay_bare = (
            f"{dump_bare} && {shutil.which('mariadb-binlog')} --database={DB} "
            f"{' '.join(map(str, files))} | {mariadb} {DB}"
        )
        restore = ("restore", dst_name, DB, "--from-server", src_name)
        variants = [  # (name, argv, baseline, the source's checksum it must restore)
            (PITR, setup.argv(*restore, "--to-time", "latest"), BARE_PITR, expected),
            (BARE_PITR, ["bash", "-o", "pipefail", "-c", replay_bare], None, expected),
            (DUMP, setup.argv(*restore), BARE_DUMP, dumped),
            (BARE_DUMP, ["bash", "-o", "pipefail", "-c", dump_bare], None, dumped),
        ]
        group = Group(
            case="restore to latest",
            warmup=False,
            variants=[
                Variant(name, argv, baseline, setup.env, after, checked(dst, wanted))
                for name, argv, baseline, wanted in variants
            ],
        )
        samples = run_group(group, repeat, lambda line: log(line))
    finally:
        src.stop()
        dst.stop()
    return {
        "rows": rows,
        "binlog_mb": binlog_mb,
        "binlog_files": len(files),
        "dump_mb": dump.stat().st_size / 1e6,
        "load_s": load_s,
        "archive_s": archive_s,
        "variants": summarise(group, samples),
    }


# --- report ---------------------------------------------------------------------------


def markdown(meta: dict[str, Any], rpo: dict[str, Any], replay: dict[str, Any]) -> str:
    lines = [
        f"Taken {meta['started']} on {meta['host']} ({os.cpu_count()} CPUs), commit "
        f"{meta['commit']}; load average {meta['load_before']} before, {meta['load_after']} "
        f"after. Command: `{meta['command']}`",
        "",
        f"RPO: {rpo['seconds']:.0f} s of writes ({rpo['commits']} commits, "
        f"{rpo['commits_per_s']:.0f}/s, {rpo['binlog_mb_per_s']:.2f} MB/s of binlog), "
        f"archive every {rpo['interval']:.0f} s, then kill -9 and the data directory deleted.",
        "",
        "| data lost | rows lost | bound (interval + longest run) | held | archive run median"
        " | max | restore --from-server |",
        "|---:|---:|---:|---|---:|---:|---:|",
        f"| {rpo['loss_s']:.2f} s | {rpo['rows_lost']} | {rpo['bound_s']:.2f} s | "
        f"{'yes' if rpo['bound_held'] else '**no**'} | {rpo['run_median_s']:.2f} s | "
        f"{rpo['run_max_s']:.2f} s | {rpo['restore_s']:.2f} s |",
        "",
        "Lag per archive run (its end minus its newest event, whole seconds): "
        + ", ".join(f"{v:.1f}" for v in rpo["lags_s"])
        + f" s; slope {rpo['lag_slope_s_per_run'] or 0:+.3f} s per run. Run durations: "
        + ", ".join(f"{r['seconds']:.1f}" for r in rpo["runs"] if not r["after_kill"])
        + f" s; failed before the kill: {rpo['failed_runs']}.",
        "",
        f"Replay: {replay['rows']} rows inserted and updated after the dump "
        f"({replay['binlog_mb']:.0f} MB of binlog in {replay['binlog_files']} file(s), dump "
        f"{replay['dump_mb']:.0f} MB), restored to latest onto another server.",
        "",
        "| variant | median s | min s | max s | ratio | binlog MB/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in replay["variants"]:
        ratio = f"{row['ratio']:.2f}" if row["ratio"] else ""
        lines.append(
            f"| {row['variant']} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
            f"{row['max_s']:.2f} | {ratio} | {replay['binlog_mb'] / row['median_s']:.1f} |"
        )
    med = {row["variant"]: row["median_s"] for row in replay["variants"]}
    ours, bare = med[PITR] - med[DUMP], med[BARE_PITR] - med[BARE_DUMP]
    lines += [
        "",
        f"The replay alone (restore to latest minus the dump's restore, medians): dbbackup "
        f"{ours:.2f} s, bare {bare:.2f} s: **{ours / bare:.2f}x**.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--interval", type=float, default=10)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dbbackup-bench-pitr"))
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # before prefect loads
    root = Path(tempfile.mkdtemp(prefix="dbbackup-pitr-bench-"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    meta = {
        "started": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "host": os.uname().nodename,
        "commit": commit,
        "command": "python3 -m tests.benchmarks.pitr " + " ".join(sys.argv[1:]),
        "load_before": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    log(f"load before: {meta['load_before']}")
    try:
        with prefect_api():
            setup = make_setup(root)
            log(f"RPO: {args.seconds:.0f} s of writes, archive every {args.interval:.0f} s")
            rpo = rpo_case(setup, args.seconds, args.interval)
            log(f"replay: {args.rows} rows, {args.repeat} interleaved runs")
            replay = replay_case(setup, args.rows, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    meta["load_after"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"meta": meta, "rpo": rpo, "replay": replay}
    (args.out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    text = markdown(meta, rpo, replay)
    (args.out / "results.md").write_text(text)
    print(text)
    log(f"written: {args.out / 'results.json'}, {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
