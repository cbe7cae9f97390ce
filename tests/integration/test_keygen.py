"""`dbbackup keygen` writes the private key so that no other local user can get it."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import pytest
from prefect_dbbackup.flows.cli import app
from typer.testing import CliRunner

NOBODY = pwd.getpwnam("nobody")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to nobody needs root")


def keygen(*args: str):
    return CliRunner().invoke(app, ["keygen", *args], catch_exceptions=False)


def _recipient_of(path: Path) -> str:
    derived = subprocess.run(["age-keygen", "-y", str(path)], capture_output=True, text=True)
    assert derived.returncode == 0, derived.stderr
    return derived.stdout.strip()


def _assert_private_key(path: Path, recipient: str) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert _recipient_of(path) == recipient


def _nobody_file(path: Path, mode: int = 0o666) -> None:
    path.write_text("")
    os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
    path.chmod(mode)


@needs_root
def test_a_planted_tmp_file_owned_by_another_user_never_receives_the_key(tmp_path):
    output = tmp_path / "identity.txt"
    planted = tmp_path / "identity.txt.tmp"
    _nobody_file(planted)
    with planted.open() as attacker:  # the other user keeps it open, as an attacker would
        result = keygen("--output", str(output))
        assert result.exit_code == 0, result.output
        recipient = result.stdout.strip().splitlines()[-1]
        assert attacker.read() == ""
    assert planted.read_text() == ""
    assert planted.stat().st_uid == NOBODY.pw_uid
    _assert_private_key(output, recipient)
    assert "AGE-SECRET-KEY-1" not in "".join(
        p.read_text() for p in tmp_path.iterdir() if p != output
    )


@needs_root
def test_a_planted_symlink_is_not_followed(tmp_path):
    target = tmp_path / "stolen"
    _nobody_file(target)
    (tmp_path / "identity.txt.tmp").symlink_to(target)
    output = tmp_path / "identity.txt"
    result = keygen("--output", str(output))
    assert result.exit_code == 0, result.output
    assert target.read_text() == ""
    _assert_private_key(output, result.stdout.strip().splitlines()[-1])


def test_an_existing_identity_is_kept_without_force_and_replaced_with_it(tmp_path):
    output = tmp_path / "identity.txt"
    first = keygen("-o", str(output))
    assert first.exit_code == 0, first.output
    original = output.read_text()

    again = keygen("-o", str(output))
    assert again.exit_code == 3
    assert "exists; refusing to overwrite a key (use --force)" in again.output
    assert "Traceback" not in again.output
    assert output.read_text() == original

    forced = keygen("-o", str(output), "--force")
    assert forced.exit_code == 0, forced.output
    assert output.read_text() != original
    _assert_private_key(output, forced.stdout.strip().splitlines()[-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["identity.txt"]  # no temp left


def test_a_dangling_symlink_at_the_target_counts_as_existing(tmp_path):
    output = tmp_path / "identity.txt"
    output.symlink_to(tmp_path / "elsewhere")
    result = keygen("-o", str(output))
    assert result.exit_code == 3 and "refusing to overwrite" in result.output
    assert not (tmp_path / "elsewhere").exists()


@needs_root
def test_force_replaces_a_file_another_user_can_read_with_a_new_private_one(tmp_path):
    output = tmp_path / "identity.txt"
    _nobody_file(output)
    with output.open() as attacker:
        result = keygen("-o", str(output), "--force")
        assert result.exit_code == 0, result.output
        assert attacker.read() == ""  # the old inode never held the key
    _assert_private_key(output, result.stdout.strip().splitlines()[-1])


def test_missing_directories_are_created_private_and_umask_does_not_widen_the_file(tmp_path):
    output = tmp_path / "a" / "b" / "identity.txt"
    old = os.umask(0)
    try:
        result = keygen("-o", str(output))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    _assert_private_key(output, result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_a_directory_others_can_write_without_sticky_bit_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    result = keygen("-o", str(shared / "identity.txt"))
    assert result.exit_code == 3
    assert "writable by other users" in result.output and "Traceback" not in result.output
    assert list(shared.iterdir()) == []


def test_a_sticky_world_writable_directory_is_accepted(tmp_path):
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    result = keygen("-o", str(sticky / "identity.txt"))
    assert result.exit_code == 0, result.output
    _assert_private_key(sticky / "identity.txt", result.stdout.strip().splitlines()[-1])


@needs_root
def test_a_directory_owned_by_another_user_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY.pw_uid, NOBODY.pw_gid)
    result = keygen("-o", str(theirs / "identity.txt"))
    assert result.exit_code == 3
    assert "belongs to another user" in result.output
    assert list(theirs.iterdir()) == []
