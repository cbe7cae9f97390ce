"""Measuring: run each variant of a case in a child process, interleaved, and summarise.

A variant is one command. Its wall time, peak RSS (ru_maxrss from wait4, the
largest of the child and the processes it waited for) and CPU time are taken
here. Python workers (tests.benchmarks.worker) also report the seconds of the
work itself (interpreter start and imports excluded) and their own peak RSS,
which then take precedence.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Hook = Callable[[], None]


@dataclass
class Variant:
    """One command of a case; `baseline` names the variant its ratio is taken against."""

    name: str
    argv: list[str]
    baseline: str | None = None
    env: dict[str, str] | None = None
    after: Hook | None = None  # untimed cleanup after each run (drop a target, delete files)
    check: Hook | None = None  # untimed, after the first run: raises if its result is wrong
    cwd: Path | None = None  # where the command runs (None: the benchmark's own directory)


@dataclass
class Group:
    """Variants measured side by side: run r of every variant before run r + 1 of any."""

    case: str
    variants: list[Variant]
    setup: Hook | None = None
    warmup: bool = True  # one unrecorded run of each variant first (warm caches)
    skipped: str | None = None  # why the case did not run


@dataclass
class Sample:
    seconds: float
    wall: float
    peak_rss_mb: float
    cpu_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class VariantFailed(RuntimeError):
    pass


def run_once(variant: Variant) -> Sample:
    """Run the variant's command once and measure it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            variant.argv, stdout=out, stderr=err, env=variant.env, cwd=variant.cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise VariantFailed(
            f"{variant.name} exited {proc.returncode}: {(stderr or stdout)[-3000:]}"
        )
    sample = Sample(
        seconds=wall,
        wall=wall,
        peak_rss_mb=usage.ru_maxrss / 1024,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
    )
    lines = stdout.strip().splitlines()
    if lines and lines[-1].startswith("{"):
        report = json.loads(lines[-1])
        sample.seconds = report.pop("seconds")
        sample.peak_rss_mb = report.pop("peak_rss_mb", sample.peak_rss_mb)
        sample.extra = report
    return sample


def run_group(group: Group, repeat: int, log: Callable[[str], None]) -> dict[str, list[Sample]]:
    """Measure every variant `repeat` times, interleaved (ABAB...)."""
    samples: dict[str, list[Sample]] = {v.name: [] for v in group.variants}
    if group.setup:
        group.setup()
    rounds = ([False] if group.warmup else []) + [True] * repeat
    for number, record in enumerate(rounds):
        for variant in group.variants:
            try:
                sample = run_once(variant)
                if number == 0 and variant.check:  # a fast wrong result must not look good
                    variant.check()
            finally:
                if variant.after:
                    variant.after()
            what = f"run {number + (0 if group.warmup else 1)}" if record else "warm-up"
            log(f"  {variant.name}: {what} {sample.seconds:.2f} s, {sample.peak_rss_mb:.0f} MB")
            if record:
                samples[variant.name].append(sample)
    return samples


def summarise(group: Group, samples: dict[str, list[Sample]]) -> list[dict[str, Any]]:
    """One row per variant: median/min/max seconds, ratio to its baseline, peak RSS."""
    medians = {name: statistics.median(s.seconds for s in runs) for name, runs in samples.items()}
    rows = []
    for variant in group.variants:
        runs = samples[variant.name]
        times = [s.seconds for s in runs]
        row = {
            "case": group.case,
            "variant": variant.name,
            "baseline": variant.baseline,
            "median_s": medians[variant.name],
            "min_s": min(times),
            "max_s": max(times),
            "ratio": medians[variant.name] / medians[variant.baseline]
            if variant.baseline
            else None,
            "peak_rss_mb": max(s.peak_rss_mb for s in runs),
            "cpu_s_median": statistics.median(s.cpu_seconds for s in runs),
            "runs": [s.__dict__ for s in runs],
        }
        extra = runs[-1].extra
        if "rss_before_mb" in extra:
            row["rss_at_start_mb"] = max(s.extra["rss_before_mb"] for s in runs)
        if "raw_bytes" in extra:
            row["raw_mb"] = extra["raw_bytes"] / 1e6
            row["mb_per_s"] = row["raw_mb"] / row["median_s"]
        rows.append(row)
    return rows


def prefect_api() -> contextlib.AbstractContextManager[object]:
    """PREFECT_API_URL's API when set (nothing to start), else a temporary local one (SQLite)
    for the benchmark's duration."""
    if os.environ.get("PREFECT_API_URL"):
        return contextlib.nullcontext()
    from prefect.testing.utilities import prefect_test_harness

    return prefect_test_harness(server_startup_timeout=120)
