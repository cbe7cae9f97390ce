"""docs/quickstart.md says what its commands really print: its ```sh blocks are run in
order, in an empty directory, against the machine's PostgreSQL and MariaDB and the test's
Prefect API, and each output the guide shows (the plain ``` block right after a command
block) is compared with what the commands printed. Only what changes from run to run is
normalised (backup ids, sizes, times, keys, the directory). The README's first command is
the quickstart's, after its install step.

Blocks in ```shell (installing, pointing Prefect elsewhere) are shown, not run. The demo
database gets a unique name in the run (other test runs share the servers) and is shown
under its guide name again before comparing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.integration.cli_process import MAIN, child_env

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
DEMO = "dbbackup_demo"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
VOLATILE = [  # (pattern, what stands for it in both texts)
    (re.compile(r"\b\d{8}T\d{6}Z-[0-9a-f]{4}\b"), "BACKUP_ID"),
    (re.compile(r"\b\d{8}T\d{6}Z\b"), "STAMP"),  # in flow run names
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ"), "DATE TIME"),
    (re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \|", re.MULTILINE), "TIME |"),
    (re.compile(r"\(\d+(\.\d+)?x\) in \d+(\.\d+)? s \(\d+ MB/s\)"), "(RATIO) in SECONDS (RATE)"),
    (re.compile(r"\b\d+(\.\d+)? (B|kB|MB|GB)\b"), "SIZE"),  # after the rate, which it would eat
    (re.compile(r"\bin \d+(\.\d+)? s\b"), "in SECONDS"),
    (
        re.compile(r"127\.0\.0\.1:\d+/runs/flow-run/[0-9a-f-]{36}"),
        "127.0.0.1:PORT/runs/flow-run/ID",
    ),
    # the whole server's accounts: other users of the machine's servers add and drop theirs
    (
        re.compile(r"backed up \d+ users/roles of (\S+) \(\d+ statements\)"),
        r"backed up N users/roles of \1",
    ),
    (re.compile(r"\(PostgreSQL \d+\.\d+ \(.*?\)\);"), "(PostgreSQL VERSION);"),  # apt upgrades it
    # the list's name column is padded to 30: the run's database name is longer than the guide's
    (re.compile(rf"({DEMO}(_restored)?) {{2,}}"), r"\1  "),
]
LOG_LINE = re.compile(r"^TIME \| ")  # Prefect's console log: concurrent tasks interleave


def _normal(text: str) -> tuple[list[str], list[str]]:
    """(the command's own lines in order, Prefect's log lines sorted), normalised."""
    for pattern, shown in VOLATILE:
        text = pattern.sub(shown, text)
    lines = [line.rstrip() for line in text.strip().splitlines()]
    logs = sorted(line for line in lines if LOG_LINE.match(line))
    return [line for line in lines if not LOG_LINE.match(line)], logs


def steps(markdown: str) -> list[tuple[str, str | None]]:
    """The guide's ```sh blocks in order, each with the output block shown right after it
    (a fence without language), or None."""
    blocks = [(m.group(1), m.group(2), m.start(), m.end()) for m in FENCE.finditer(markdown)]
    found = []
    for i, (language, body, _, end) in enumerate(blocks):
        if language != "sh":
            continue
        shown = None
        if i + 1 < len(blocks) and blocks[i + 1][0] == "":
            between = markdown[end : blocks[i + 1][2]]
            if not between.strip():
                shown = blocks[i + 1][1]
        found.append((body, shown))
    return found


def readme_first_command() -> str:
    readme = (ROOT / "README.md").read_text()
    return next(body for language, body in FENCE.findall(readme) if language == "sh").strip()


@pytest.fixture
def shell(prefect_api, tmp_path: Path):
    """Run a guide's command block in a fresh directory, `dbbackup` being this checkout's."""
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "dbbackup"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{MAIN}" "$@"\n')
    shim.chmod(0o755)
    environment = child_env(
        tmp_path / "runs", PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONUNBUFFERED="1"
    )
    suffix = uuid.uuid4().hex[:8]
    names = {"database": f"{DEMO}_{suffix}"}

    def run(body: str) -> str:
        script = body.replace(DEMO, names["database"])
        done = subprocess.run(
            ["bash", "-eo", "pipefail", "-c", script],
            cwd=work,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        printed = done.stdout.replace(names["database"], DEMO).replace(f"{work}/", "")
        assert done.returncode == 0, f"$ {body}\n{printed}"
        return printed

    yield run
    _drop_demo_databases(names["database"])
    _delete_blocks()


def _drop_demo_databases(database: str) -> None:
    for name in (database, f"{database}_restored"):
        subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", name])
        subprocess.run(
            ["mariadb", "-h", "127.0.0.1", "-uroot", "-e", f"DROP DATABASE IF EXISTS {name}"]
        )


def _delete_blocks() -> None:
    """The guide's block names are fixed (local-pg, default): leave none behind in the
    worker's Prefect API for the tests that come after."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for slug, name in [
            ("postgres-server", "local-pg"),
            ("mysql-server", "local-my"),
            ("local-backup-storage", "default"),
            ("age-encryption", "default"),
        ]:
            try:
                document = client.read_block_document_by_name(name, slug)
            except ObjectNotFound:  # not made by this run
                continue
            client.delete_block_document(document.id)


def test_the_quickstart_prints_what_it_shows(shell):
    guide = steps(QUICKSTART.read_text())
    assert len(guide) >= 8, "the quickstart lost its command blocks"
    for body, shown in guide:
        started = time.monotonic()
        printed = shell(body)
        if os.environ.get("QUICKSTART_SHOW"):  # to write the guide: what each block printed
            print(f"$ {body}{printed}({time.monotonic() - started:.1f} s)\n")
            continue
        if shown is not None:
            assert _normal(printed) == _normal(shown), f"$ {body}"


def test_the_readme_first_command_is_the_quickstart_after_installing():
    command = readme_first_command()
    install, _, rest = command.partition(" && ")
    assert install == "bash .ci/install"
    commands = [body.strip() for body, _ in steps(QUICKSTART.read_text())]
    for part in rest.split(" && "):
        assert any(c == part or c.startswith(part + " ") for c in commands), part
