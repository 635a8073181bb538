"""The API against its own OpenAPI schema: schemathesis with every check, on a real server on 127.0.0.1.

Bounded: a fixed number of examples per operation, generated deterministically (the same cases
on every run), so the run takes a few tens of seconds and a failure reproduces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import KEY, settings_for
from tests.serving.helpers import build_artifact, publish, running_server, wait_for

HERE = Path(__file__).parent / "schemathesis"
ROOT = Path(__file__).parents[2]
SCHEMATHESIS = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
EXAMPLES = 6


def test_every_operation_meets_its_schema_under_all_checks(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    # Limits that a test run does not reach: the 429 paths are covered in tests/serving/test_security.py.
    settings = settings_for(tmp_path, rate_per_second=1e6, rate_burst=1e6, auth_failure_burst=1e6)
    with running_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
        run = subprocess.run(
            [SCHEMATHESIS, "--config-file", str(HERE / "schemathesis.toml"), "--no-color", "run", f"{url}/openapi.json",
             "--checks", "all", "--max-examples", str(EXAMPLES), "--generation-deterministic",
             "--header", f"X-API-Key: {KEY}", "--request-timeout", "10"],
            env=os.environ | {"SCHEMATHESIS_HOOKS": "tests.integration.schemathesis.hooks", "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its crash cache stays out of the repo
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-3000:]  # schemathesis exits 1 on any failure
    assert "Tested: 8" in run.stdout  # every operation was exercised
