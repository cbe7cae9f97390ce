"""Targets of issue #6 checked against measured rows, and the markdown report."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.benchmarks.cases import (
    PG_CLI,
    PG_CLI_GZIP,
    PG_CLI_TINY,
    PG_PIPE,
    TINY_CONCURRENCY,
    tiny_bare,
    tiny_flow,
)
from tests.benchmarks.data import TINY_COUNTS

Rows = dict[str, dict[str, Any]]
PG_BACKUP, PG_BARE, PG_GZIP = "pg backup: dbbackup", "pg_dump -Fc -Z0", "pg_dump -Fc (gzip)"
SMALL = "pg backup small: dbbackup"


def _ratio(rows: Rows, subject: str, baseline: str) -> float | None:
    if subject in rows and baseline in rows:
        return rows[subject]["median_s"] / rows[baseline]["median_s"]
    return None


def _at_most(limit: float, subject: str, baseline: str) -> Callable[[Rows], Any]:
    def check(rows: Rows) -> tuple[str, bool] | None:
        r = _ratio(rows, subject, baseline)
        return None if r is None else (f"{r:.2f}x", r <= limit)

    return check


def _faster(limit: float, subject: str, baseline: str, unit: str) -> Callable[[Rows], Any]:
    def check(rows: Rows) -> tuple[str, bool] | None:
        r = _ratio(rows, baseline, subject)
        return None if r is None else (f"{r:.2f}x {unit}", r >= limit)

    return check


def _cpu_at_most(limit: float, subject: str, baseline: str) -> Callable[[Rows], Any]:
    """CPU seconds (median; the variant and the children it waited for) within limit x."""

    def check(rows: Rows) -> tuple[str, bool] | None:
        if subject not in rows or baseline not in rows:
            return None
        a, b = rows[subject]["cpu_s_median"], rows[baseline]["cpu_s_median"]
        return f"{a:.2f} s vs {b:.2f} s: {a / b:.2f}x", a / b <= limit

    return check


def _marginal(limit: float, key: str) -> Callable[[Rows], Any]:
    """The CLI backup less the same command on a one-table database (the fixed cost of a
    run: interpreter, imports, flow run, block loads), within limit x the pipeline."""

    def check(rows: Rows) -> tuple[str, bool] | None:
        if not all(n in rows for n in (PG_CLI, PG_CLI_TINY, PG_PIPE)):
            return None
        fixed = rows[PG_CLI_TINY][key]
        r = (rows[PG_CLI][key] - fixed) / rows[PG_PIPE][key]
        return f"{r:.2f}x (fixed cost {fixed:.2f} s)", r <= limit

    return check


def _rss_limit(rows: Rows) -> tuple[str, bool] | None:
    peaks = [rows[n]["peak_rss_mb"] for n in (PG_BACKUP, SMALL) if n in rows]
    return (f"{max(peaks):.0f} MB", max(peaks) <= 200) if peaks else None


def _rss_flat(rows: Rows) -> tuple[str, bool] | None:
    if PG_BACKUP not in rows or SMALL not in rows:
        return None
    large, small = rows[PG_BACKUP], rows[SMALL]
    r = large["peak_rss_mb"] / small["peak_rss_mb"]
    text = (
        f"{small['peak_rss_mb']:.0f} MB ({small.get('raw_mb', 0):.0f} MB dump) vs "
        f"{large['peak_rss_mb']:.0f} MB ({large.get('raw_mb', 0):.0f} MB dump): {r:.2f}x"
    )
    return text, 1 / 1.2 <= r <= 1.2


def _flat_per_database(concurrency: int) -> Callable[[Rows], Any]:
    """Seconds per database of the largest tiny count within 1.2x of the smallest."""
    small, large = min(TINY_COUNTS), max(TINY_COUNTS)

    def check(rows: Rows) -> tuple[str, bool] | None:
        a, b = tiny_flow(small, concurrency), tiny_flow(large, concurrency)
        if a not in rows or b not in rows:
            return None
        per_small = rows[a]["median_s"] / small * 1000
        per_large = rows[b]["median_s"] / large * 1000
        r = per_large / per_small
        return f"{per_small:.0f} ms vs {per_large:.0f} ms: {r:.2f}x", r <= 1.2

    return check


TARGETS: list[tuple[str, Callable[[Rows], tuple[str, bool] | None]]] = [
    ("PostgreSQL backup <= 1.10x bare pg_dump -Fc -Z0", _at_most(1.10, PG_BACKUP, PG_BARE)),
    (
        "PostgreSQL backup >= 2.5x faster than pg_dump -Fc",
        _faster(2.5, PG_BACKUP, PG_GZIP, "faster"),
    ),
    (
        "MariaDB backup <= 1.35x bare mariadb-dump",
        _at_most(1.35, "my backup: dbbackup", "mariadb-dump"),
    ),
    (
        "PostgreSQL restore <= 1.25x bare pg_restore",
        _at_most(1.25, "pg restore: dbbackup", "pg_restore"),
    ),
    (
        "MariaDB restore <= 1.25x bare mariadb < file",
        _at_most(1.25, "my restore: dbbackup", "mariadb < file"),
    ),
    ("Peak RSS of a backup <= 200 MB", _rss_limit),
    ("Peak RSS the same (within 20%) for a small and a large database", _rss_flat),
    *[
        (
            f"{n} tiny databases (concurrency={c}) <= 1.3x a shell loop of pg_dump, zstd, age",
            _at_most(1.3, tiny_flow(n, c), tiny_bare(n, c)),
        )
        for n in TINY_COUNTS
        for c in TINY_CONCURRENCY
    ],
    *[
        (
            f"cost per tiny database flat from {min(TINY_COUNTS)} to {max(TINY_COUNTS)} "
            f"(concurrency={c}, within 1.2x)",
            _flat_per_database(c),
        )
        for c in TINY_CONCURRENCY
    ],
    (
        "S3 upload >= 0.9x the speed of boto3 upload_file",
        _faster(0.9, "S3BackupStorage.put_file", "boto3 upload_file", "the speed"),
    ),
    (
        f"`dbbackup backup` (CLI, end to end) <= 1.25x the {PG_PIPE}",
        _at_most(1.25, PG_CLI, PG_PIPE),
    ),
    (
        "`dbbackup backup` (CLI) faster than pg_dump -Fc",
        _faster(1.0, PG_CLI, PG_CLI_GZIP, "faster"),
    ),
    (
        f"CPU s of `dbbackup backup` (CLI) <= 1.2x the {PG_PIPE}",
        _cpu_at_most(1.2, PG_CLI, PG_PIPE),
    ),
    (
        f"`dbbackup backup` (CLI) less its fixed cost <= 1.25x the {PG_PIPE}",
        _marginal(1.25, "median_s"),
    ),
    (
        f"CPU s of `dbbackup backup` (CLI) less its fixed cost <= 1.2x the {PG_PIPE}",
        _marginal(1.2, "cpu_s_median"),
    ),
]


def check_targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    by_name = {r["variant"]: r for r in rows}
    results = []
    for text, check in TARGETS:
        outcome = check(by_name)
        measured, met = outcome if outcome else ("not run", None)
        results.append({"target": text, "measured": measured, "met": met})
    return results


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]], targets, skipped) -> str:  # noqa: ANN001
    """The report: conditions, every variant's figures, targets, cases not run."""
    lines = [
        f"Taken {meta['date']} on {meta['host']} ({meta['cpus']} CPUs), size {meta['size']}, "
        f"{meta['repeat']} interleaved runs per variant; load average "
        f"{meta['load_before']} before, {meta['load_after']} after.",
        f"{meta['versions']}",
        "",
        "| case | variant | median s | min s | max s | ratio | vs | MB/s | peak RSS MB "
        "| RSS at start MB | CPU s |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['variant']} | {r['median_s']:.2f} | {r['min_s']:.2f} | "
            f"{r['max_s']:.2f} | {_num(r['ratio'], '.2f')} | {r['baseline'] or ''} | "
            f"{_num(r.get('mb_per_s'), '.0f')} | {r['peak_rss_mb']:.0f} | "
            f"{_num(r.get('rss_at_start_mb'), '.0f')} | "
            f"{r['cpu_s_median']:.2f} |"
        )
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for t in targets:
        met = {True: "yes", False: "**no**", None: "not run"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    for case, reason in skipped:
        lines.append(f"\n{case}: {reason}")
    return "\n".join(lines) + "\n"
