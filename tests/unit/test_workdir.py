"""Work dirs left by dead runs (they may hold credentials files) are removed by the next run."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from prefect_dbbackup.tasks.workdir import OWNER_FILE, private_workdir, remove_stale_workdirs


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_only_dirs_of_dead_owners_are_removed(tmp_path: Path, monkeypatch) -> None:
    dead = tmp_path / "dbbackup-dead"
    dead.mkdir()
    (dead / OWNER_FILE).write_text(f"{_dead_pid()} 12345\n")
    (dead / "pgpass-x").write_text("secret")
    reused = tmp_path / "dbbackup-reused"  # our pid, but another start time: pid reused
    reused.mkdir()
    (reused / OWNER_FILE).write_text(f"{os.getpid()} 1\n")
    unknown = tmp_path / "dbbackup-unknown"  # no owner record: not ours to judge
    unknown.mkdir()
    other = tmp_path / "someone-else"
    other.mkdir()
    (other / OWNER_FILE).write_text(f"{_dead_pid()} 1\n")

    monkeypatch.setenv("DBBACKUP_WORK_DIR", str(tmp_path))
    with private_workdir() as mine:
        assert stat.S_IMODE(mine.stat().st_mode) == 0o700
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [mine.name, "dbbackup-unknown", "someone-else"]
        )
        assert remove_stale_workdirs(tmp_path) == []  # a live owner's dir stays
    assert not mine.exists()
