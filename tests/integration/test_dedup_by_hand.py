"""The runbook's restore of a deduplicated backup without dbbackup (docs/restore-runbook.md,
"A deduplicated backup (format chunks-v1)"), run as written with the real `age`, `zstd`,
`openssl`, `jq` (and `aws` for S3) against backups dbbackup made, then restored with
`pg_restore` / `mariadb` and compared with the source. The script and the commands are
read from the runbook itself, so the document and this test cannot drift apart."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prefect_dbbackup.blocks.registry import load_storage
from prefect_dbbackup.tasks.catalog import list_backups
from prefect_dbbackup.tasks.dedup.layout import FOSSILS, chunk_key, recipient_set
from prefect_dbbackup.tasks.layout import encode_name

from tests.helpers import MY, PG
from tests.s3server import ACCESS_KEY, SECRET_KEY

RUNBOOK = Path(__file__).parents[2] / "docs" / "restore-runbook.md"
# .ci/setup installs the aws CLI here (its own venv: its pinned botocore is not the project's)
# when none is on PATH
AWS_VENV = Path(__file__).parents[2] / ".ci" / "aws-cli"
SECTION = "### A deduplicated backup (format chunks-v1)"
ROWS = 100_000  # two md5s of random() per row: ~7 MB of dump, several chunks of ~1-2 MiB
TOOLS = ("bash", "age", "age-keygen", "zstd", "openssl", "jq", "pg_restore", "createdb", "mariadb")

# the runbook's placeholders
LOCAL_STORE, S3_STORE = "/srv/backups", "s3://my-bucket/my-prefix"
PG_BACKUP, MY_BACKUP = "local-pg/shop/20261206T031500Z-3f9a", "local-my/shop/20261206T031500Z-3f9a"
VERIFY_KEY = "dbbackup-ed25519:MCowBQYDK2VwAyEA..."


def section_blocks() -> list[str]:
    """The ```bash blocks of the runbook's chunks-v1 section."""
    text = RUNBOOK.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def script() -> str:
    [found] = [b for b in section_blocks() if b.startswith("#!/usr/bin/env bash\n# dedup-restore")]
    return found


def commands(containing: str) -> str:
    blocks = [b for b in section_blocks() if b != script()]
    [found] = [b for b in blocks if containing in b and "bash dedup-restore.sh " in b]
    return found


def backup(env, server: str, database: str) -> tuple[str, object]:  # noqa: ANN001
    """Back up one database through dbbackup; (its folder below the storage root, manifest)."""
    result = env.cli("backup", server, "--database", database)
    assert result.exit_code == 0, result.output
    [manifest] = list_backups(load_storage(env.storage), server, database)
    assert manifest.format == "chunks-v1"
    # several different chunks, or the by-hand path proves little
    assert len({cid for cid, _ in manifest.chunks.order}) >= 3
    return f"{encode_name(server)}/{encode_name(database)}/{manifest.backup_id}", manifest


def aws_cli() -> str:
    """The aws CLI the S3 variant runs: .ci/setup's, else one on PATH; none is a failure."""
    own = AWS_VENV / "bin" / "aws"
    found = str(own) if os.access(own, os.X_OK) else shutil.which("aws")
    assert found, f"no aws CLI for the runbook's S3 restore: run .ci/setup (installs it in {own})"
    return found


def run(block: str, cwd: Path, env, replace: dict[str, str]) -> subprocess.CompletedProcess:  # noqa: ANN001
    """Run a runbook block under `set -euo pipefail`, its placeholders replaced, with the real
    binaries on PATH and only the environment the runbook sets."""
    for old, new in replace.items():
        block = block.replace(old, new)
    (cwd / "dedup-restore.sh").write_text(script())
    (cwd / "restore.cnf").write_text(f"[client]\nhost={MY['host']}\nuser={MY['user']}\n")
    (cwd / "restore.cnf").chmod(0o600)
    found = [shutil.which(tool) for tool in TOOLS]
    if env.bucket:
        found.append(aws_cli())
    path = os.pathsep.join(dict.fromkeys(str(Path(f).parent) for f in found if f))
    variables = {"PATH": path, "HOME": str(cwd), "LC_ALL": "C.UTF-8"}
    if env.bucket:  # what an operator sets for an S3 that is not AWS
        variables |= {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": load_storage(env.storage).endpoint_url,
        }
    return subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + block],
        cwd=cwd, env=variables, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def placeholders(env, tmp: Path, folder: str, target: str, source: str) -> dict[str, str]:  # noqa: ANN001
    if env.bucket:
        store = f"s3://{env.bucket}/{env.s3_prefix.rstrip('/')}"
    else:
        store = str(env.storage_path)
    return {
        "export AWS_PROFILE=backup-reader": "",  # the test's S3 credentials are in the environment
        LOCAL_STORE: store,
        S3_STORE: store,
        PG_BACKUP: folder,
        MY_BACKUP: folder,
        VERIFY_KEY: env.signing_fields()["manifest_verify_keys"][0],
        "/secure/identity.txt": str(env.identity_file),
        "/secure/tmp": str(tmp / "private"),
        "db1.example.com": PG["host"],
        "shop_restored": target,
        "`shop`": f"`{source}`",
    }


@pytest.fixture(autouse=True)
def _tools() -> None:
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"the runbook's tools are missing: {missing} (apt-get install age jq)"


def _pg_source(pg_db, pg_admin) -> str:  # noqa: ANN001
    db = pg_db()
    pg_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, md5(random()::text) || md5(random()::text) "
        f"FROM generate_series(1, {ROWS}) g;"
        "CREATE TABLE small (k text PRIMARY KEY, n numeric); INSERT INTO small VALUES ('a', 1.5);",
    )
    return db


@pytest.fixture(params=["local", "s3"])
def by_hand_env(request: pytest.FixtureRequest, env):  # noqa: ANN001, ANN201
    """A deduplicating storage, local then S3 (the S3 case needs the `aws` CLI)."""
    if request.param == "s3":
        version = subprocess.run([aws_cli(), "--version"], capture_output=True, text=True)
        assert version.returncode == 0, f"the aws CLI does not run: {version.stderr}"
        return env.with_dedup(request.getfixturevalue("s3_server"))
    return env.with_dedup()


def test_postgres_backup_restores_by_hand(by_hand_env, pg_db, pg_admin, cleanup_pg, tmp_path):
    env = by_hand_env
    db = _pg_source(pg_db, pg_admin)
    folder, manifest = backup(env, env.pg, db)
    target = f"{db}_by_hand"
    cleanup_pg.append(target)
    done = run(commands("createdb"), tmp_path, env, placeholders(env, tmp_path, folder, target, db))
    assert done.returncode == 0, done.stderr
    assert f"{len(manifest.chunks.order)} chunks checked (0 from fossils)" in done.stdout
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)
    assert not list((tmp_path / "private").iterdir())  # the dump and the work dir are gone


def test_mariadb_backup_restores_by_hand(by_hand_env, my_db, my_admin, cleanup_my, tmp_path):
    env = by_hand_env
    db = my_db()
    my_admin.execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(64))",
        "INSERT INTO t SELECT seq, concat(md5(rand()), md5(rand())) FROM seq_1_to_100000",
        "CREATE TABLE small (k varchar(10) PRIMARY KEY, n decimal(5,2))",
        "INSERT INTO small VALUES ('a', 1.5)",
    )
    folder, _ = backup(env, env.my, db)
    target = f"{db}_by_hand"
    cleanup_my.append(target)
    done = run(commands("mariadb"), tmp_path, env, placeholders(env, tmp_path, folder, target, db))
    assert done.returncode == 0, done.stderr
    assert my_admin.table_fingerprints(target) == my_admin.table_fingerprints(db)


def test_a_chunk_set_aside_by_a_prune_is_read_from_fossils(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    env = env.with_dedup()
    db = _pg_source(pg_db, pg_admin)
    folder, manifest = backup(env, env.pg, db)
    rset = recipient_set(manifest.recipients)
    cid = manifest.chunks.order[1][0]
    fossil = env.storage_path / f"{FOSSILS}/20261206T031500Z-0a1b2c3d/{rset}/{cid[:2]}/{cid}"
    fossil.parent.mkdir(parents=True)
    (env.storage_path / chunk_key(rset, cid)).rename(fossil)
    target = f"{db}_by_hand"
    cleanup_pg.append(target)
    done = run(commands("createdb"), tmp_path, env, placeholders(env, tmp_path, folder, target, db))
    assert done.returncode == 0, done.stderr
    assert f"{cid}: from _dedup/fossils/20261206T031500Z-0a1b2c3d/" in done.stderr
    assert "(1 from fossils)" in done.stdout
    assert pg_admin.table_fingerprints(target) == pg_admin.table_fingerprints(db)


def test_a_flipped_byte_fails_naming_the_chunk_and_nothing_is_restored(
    env, pg_db, pg_admin, cleanup_pg, tmp_path
):
    env = env.with_dedup()
    db = _pg_source(pg_db, pg_admin)
    folder, manifest = backup(env, env.pg, db)
    rset = recipient_set(manifest.recipients)
    cid = manifest.chunks.order[2][0]
    stored = env.storage_path / chunk_key(rset, cid)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(bytes(data))
    target = f"{db}_by_hand"
    cleanup_pg.append(target)
    done = run(commands("createdb"), tmp_path, env, placeholders(env, tmp_path, folder, target, db))
    assert done.returncode == 1, done.stderr
    assert f"dedup-restore: chunk 3/{len(manifest.chunks.order)} {cid} is damaged" in done.stderr
    assert not pg_admin.exists(target)  # the commands after the script never ran
    assert not list((tmp_path / "private").iterdir())  # no partial dump left behind

    # a manifest signed by a key the operator does not trust is refused before any chunk
    other = placeholders(env, tmp_path, folder, target, db)
    other[VERIFY_KEY] = "dbbackup-ed25519:bm90LXRoaXMta2V5"
    done = run(commands("createdb"), tmp_path, env, other)
    assert done.returncode == 1 and "not one of VERIFY_KEYS" in done.stderr, done.stderr
