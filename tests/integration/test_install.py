"""appsim installed like any Python package: `pip install <checkout>` (not editable) into a fresh venv,
then `appsim --version`, `appsim simulate` and `appsim retrain` from another directory.

Offline and fast: the new venv sees this venv's installed dependencies through a ``.pth`` line
(site-packages is added to its path, but the ``.pth`` files in it are not run, so this checkout's
editable install stays invisible), and pip builds the wheel without build isolation, without
dependencies and without an index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[2]
NOT_SHIPPED = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                                     "appsim-store", "appsim-*-store", "notebooks", "bench", "tests", "infra", "docs")
END = "2026-05-04T00:00:00Z"


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("install")
    source = root / "checkout"
    shutil.copytree(CHECKOUT, source, ignore=NOT_SHIPPED)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      check=True, capture_output=True, text=True).stdout.strip())
    (target_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("APPSIM_", "PYTHON", "PIP_"))}
    env |= {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "OMP_NUM_THREADS": "1"}
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          "--no-build-isolation", str(source)], cwd=root, env=env)
    shutil.rmtree(source)  # nothing may be read from the checkout once installed
    return venv, env


def test_the_installed_package_is_a_copy_with_its_config_defaults_inside(installed):
    venv, env = installed
    elsewhere = venv.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    probe = ("import pipelines, pipelines.config as c; print(pipelines.__file__); "
             "s = c.config_source(); print(s.origin, s.path)")
    module, source = _run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, env=env).stdout.splitlines()
    assert Path(module).is_relative_to(venv) and "site-packages" in module
    assert source.startswith("package ") and Path(source.split(" ", 1)[1]).is_file()


def test_version_simulate_and_retrain_from_another_directory(installed):
    venv, env = installed
    appsim = str(venv / "bin" / "appsim")
    elsewhere = venv.parent / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    store = elsewhere / "store"
    assert _run([appsim, "--version"], cwd=elsewhere, env=env).stdout.strip() == "appsim 0.1.0"
    simulated = _run([appsim, "simulate", "--store", str(store), "--apps", "120", "--users", "300", "--days", "7",
                      "--events-per-day", "1500", "--end", END], cwd=elsewhere, env=env)
    assert f"next: appsim retrain --store {store} --param window_end={END}" in simulated.stdout
    retrained = _run([appsim, "retrain", "--store", str(store), "--param", f"window_end={END}",
                      "--param", "window_days=7"], cwd=elsewhere, env=env)
    assert "decision: approved" in retrained.stdout and "version 1 registered as Approved" in retrained.stdout
    listed = _run([appsim, "registry", "list", "--store", str(store)], cwd=elsewhere, env=env).stdout
    assert "*1" in listed and "Approved" in listed
