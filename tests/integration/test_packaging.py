"""A non-editable install (a built wheel) holds only the prefect_dbbackup package (its
`__init__` from api/, its subpackages from blocks/, tasks/, flows/, deployments/) and the
`dbbackup` script, carries the shipped automations and prefect.yaml, and exports the
Python API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("blocks", "tasks", "flows", "deployments")
TOP = "api"  # the source folder of prefect_dbbackup/__init__.py (pyproject.toml)


def clean_source(target: Path) -> Path:
    """The files a wheel is built from, copied without the checkout's build/ and egg-info:
    setuptools would reuse a package left in build/ by an earlier build."""
    target.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, target / name)
    for package in (*PACKAGES, TOP):
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return target


def test_wheel_installs_only_the_package_and_ships_automations(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
        + ["-w", str(wheels), str(clean_source(tmp_path / "src"))],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("prefect_dbbackup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"prefect_dbbackup"}
    assert "prefect_dbbackup/deployments/automations/backup-failed.yaml" in names
    assert "prefect_dbbackup/deployments/prefect.yaml" in names
    # every module of the tree, subpackages included (pyproject lists packages one by one)
    modules = {
        f"prefect_dbbackup/{path.relative_to(ROOT).as_posix()}"
        for package in PACKAGES
        for path in (ROOT / package).rglob("*.py")
    }
    assert "prefect_dbbackup/__init__.py" in names  # api/__init__.py
    assert sorted(modules - set(names)) == [], "modules missing from the wheel"

    # a venv that sees the machine's dependencies but not the editable checkout
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps"]
        + ["--force-reinstall", str(wheel)],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}"}
    where = subprocess.run(
        [str(python), "-c", "import prefect_dbbackup.flows.cli as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(env_dir)), where.stdout
    api = subprocess.run(
        [
            str(python),
            "-c",
            "import prefect_dbbackup as p; from prefect_dbbackup import backup_server, "
            "PostgresServer; print(p.__file__); print(backup_server.name, PostgresServer.__module__)",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    init, names_line = api.stdout.splitlines()
    assert init.startswith(str(env_dir)) and init.endswith("/prefect_dbbackup/__init__.py"), init
    assert names_line == "backup-server prefect_dbbackup.blocks.postgres"
    done = subprocess.run(
        [str(env_dir / "bin" / "dbbackup"), "automations", "apply", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "automations" in done.stdout.lower()
    listed = subprocess.run(
        [
            str(python),
            "-c",
            "from prefect_dbbackup.flows.automations import AUTOMATIONS_DIR as d;"
            "print(sorted(p.name for p in d.iterdir()))",
        ],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "backup-failed.yaml" in listed.stdout
    assert (
        str(env_dir)
        in subprocess.run(
            [
                str(python),
                "-c",
                "from prefect_dbbackup.flows.automations import AUTOMATIONS_DIR as d;print(d)",
            ],
            cwd=tmp_path,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
