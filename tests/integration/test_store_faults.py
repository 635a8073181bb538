"""Fault suite for the store and its artifacts, as users meet the faults: a real uvicorn server on
127.0.0.1 and the `appsim` CLI in subprocesses.

- a truncated champion artifact: a restarted server answers from the previous Approved version;
- an artifact missing for a while: served once it reappears;
- a store copied elsewhere (the old path gone): it checks whole, serves and retrains;
- user errors: one line on stderr, no traceback, exit 2 for usage and 1 for failures, and the
  read-only commands work on a read-only store;
- kill -9 of a retrain mid-way: the next command shows the run abandoned.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from models import storage
from models.registry_sqlite import SQLiteRegistry
from pipelines.cli import cli
from pipelines.config import load_config
from pipelines.runner import LocalRunner
from pipelines.runs import RunRecord, save_run
from serving.app import create_app
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import build_artifact, publish, running_server, wait_for

REPO = Path(__file__).resolve().parents[2]
END = "2026-11-02T00:00:00Z"
DAYS = "4"
RETRAIN = ["--param", f"window_end={END}", "--param", f"window_days={DAYS}", "--param", "bootstrap_samples=50"]


def appsim(*args: str, wrap: tuple[str, ...] = ()) -> list[str]:
    return [*wrap, sys.executable, "-m", "pipelines.cli", *args]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(appsim(*args), capture_output=True, text=True, cwd=REPO, env=_env(), timeout=300)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    env.pop("APPSIM_STORE", None)
    return env


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A small marketplace (catalog, four days of feedback) with version 1 trained on it."""
    store = tmp_path_factory.mktemp("trained") / "store"
    done = run("simulate", "--store", str(store), "--apps", "120", "--users", "300", "--days", DAYS,
               "--events-per-day", "1500", "--seed", "3", "--end", END)
    assert done.returncode == 0, done.stderr
    config = load_config(store=str(store)).with_overrides([p for p in RETRAIN if p != "--param"])
    assert LocalRunner(config).run().result["version"] == 1
    return store


def _similar(http: httpx.Client) -> int:
    answer = http.get("/v1/apps/app-00001/similar", params={"k": 3}, headers=HEADERS)
    assert answer.status_code == 200, answer.text
    return answer.json()["model_version"]


def test_a_restarted_server_answers_from_the_previous_approved_when_the_champion_is_truncated(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    publish(registry, tmp_path, build_artifact())
    champion = publish(registry, tmp_path, build_artifact(seed=2, shift=0.3))
    settings = settings_for(tmp_path, feedback_uri="none")
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        assert _similar(http) == champion
    tarball = storage.local_path(registry.get(champion).artifact_uri)
    tarball.write_bytes(tarball.read_bytes()[: tarball.stat().st_size // 2])  # an interrupted copy

    with running_server(create_app(settings)) as url, httpx.Client(base_url=url) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        assert _similar(http) == 1
        refused = http.get("/v1/models", headers=HEADERS).json()["refused_versions"]
        metrics = http.get("/metrics").text
    assert refused[str(champion)].startswith("corrupt: ") and "EOFError" in refused[str(champion)]
    assert f'appsim_model_refused{{reason="corrupt",version="{champion}"}} 1.0' in metrics


def test_an_artifact_missing_for_a_while_is_served_once_it_reappears(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    publish(registry, tmp_path, build_artifact())
    with running_server(create_app(settings_for(tmp_path, feedback_uri="none", poll_seconds=0.05))) as url, \
            httpx.Client(base_url=url) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        tarball = tmp_path / "late" / "model.tar.gz"
        build_artifact(seed=5, shift=0.3).save_tarball(str(tarball))
        aside = tarball.rename(tmp_path / "late" / "still-copying")
        late = registry.register(storage.normalize(tarball), "Approved", {}, {}).version

        def models() -> dict:
            return http.get("/v1/models", headers=HEADERS).json()

        wait_for(lambda: str(late) in models()["retrying_versions"])
        assert models()["retrying_versions"][str(late)].startswith("missing: ") and models()["refused_versions"] == {}
        assert f'appsim_model_retrying{{reason="missing",version="{late}"}} 1.0' in http.get("/metrics").text
        assert _similar(http) == 1  # the previous version serves meanwhile
        aside.rename(tarball)
        wait_for(lambda: _similar(http) == late, timeout=30)
        assert models()["retrying_versions"] == {}


def test_a_copied_store_checks_whole_serves_and_retrains(trained, tmp_path):
    original = tmp_path / "original"
    shutil.copytree(trained, original)
    moved = original.rename(tmp_path / "restored")  # the path the store was written at is gone

    check = run("store", "check", "--json", "--store", str(moved))
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["ok"]
    with running_server(create_app(settings_for(moved, feedback_uri="none"))) as url, \
            httpx.Client(base_url=url) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        answer = http.get("/v1/apps/app-000001/similar", params={"k": 3}, headers=HEADERS)
        assert answer.status_code == 200 and answer.json()["model_version"] == 1
    second = run("retrain", "--store", str(moved), "--json", *RETRAIN)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["version"] == 2 and result["metrics"]["champion"] is not None  # the champion was loaded and scored
    assert result["evaluation_uri"].startswith(storage.normalize(moved))


def _read_only(store: Path) -> tuple[str, ...]:
    """A prefix that runs a command with ``store`` read-only: a read-only bind mount for root (who
    ignores permissions), the folder's write bits removed for anyone else."""
    if os.geteuid() != 0:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return ()
    # No silent skip: as root the only honest read-only store is a read-only mount, so say what is missing.
    assert shutil.which("unshare") and not subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode, (
        "running as root needs mount namespaces (util-linux `unshare -m`) to make a read-only store; "
        "run the suite as a non-root user or in a container allowed CAP_SYS_ADMIN")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    return ("unshare", "-m", "sh", "-c", script, str(store))


def test_every_user_error_is_one_line_with_its_exit_code_and_a_read_only_store_still_reads(tmp_path):
    a_file = tmp_path / "not-a-folder"
    a_file.write_text("x")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "registry.db").write_bytes(b"overwritten by accident " * 400)
    read_only = tmp_path / "read-only"
    registry = SQLiteRegistry(read_only / "registry.db")
    registry.register(storage.normalize(read_only / "runs" / "r1" / "model.tar.gz"), "Approved", {"recall_at_10": 0.4},
                      {"run_id": "r1"})
    save_run(RunRecord(run_id="20261101T000000Z-r1", started_at="2026-11-01T00:00:00+00:00", parameters={},
                       store=storage.normalize(read_only), registry=registry.uri, status="succeeded"))
    locked = _read_only(read_only)
    # (arguments, wrapper, exit code, what the one line must say)
    cases = [
        (["registry", "list", "--store", str(a_file)], (), 2, "is a file, not a folder: pass --store with a folder"),
        (["retrain", "--store", str(read_only), "--param", "seed=-1"], (), 2, "seed=-1: Input should be greater"),
        (["retrain", "--store", str(read_only), "--param", "window_end=9999-12-31T00:00:00Z"], (), 2,
         "outside the dates feedback can have; give one from 2000-01-01"),
        (["registry", "show", "99", "--store", str(read_only)], (), 2, "`appsim registry list` shows the versions"),
        (["registry", "list", "--store", str(damaged)], (), 1,
         "registry.db is not a readable SQLite database (file is not a database); restore it from a backup"),
        (["retrain", "--store", str(read_only), *RETRAIN], locked, 1, "is read-only for this process"),
        (["registry", "approve", "1", "--store", str(read_only)], locked, 1, "run it on a writable store"),
    ]
    works = [(["registry", "list", "--store", str(read_only)], "Approved"),
             (["registry", "show", "1", "--store", str(read_only)], '"version": 1'),
             (["runs", "list", "--store", str(read_only)], "20261101T000000Z-r1"),
             (["runs", "show", "20261101T000000Z-r1", "--store", str(read_only)], "succeeded")]
    try:
        started = [subprocess.Popen(appsim(*args, wrap=wrap), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=REPO, env=_env())
                   for args, wrap in [(c[0], c[1]) for c in cases] + [(w[0], locked) for w in works]]
        outputs = [process.communicate(timeout=120) for process in started]
    finally:
        for path in [read_only, *read_only.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    for (args, _, code, said), process, (out, err) in zip(cases, started, outputs):
        assert process.returncode == code, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and said in err, (args, err)
    for (args, said), process, (out, err) in zip(works, started[len(cases):], outputs[len(cases):]):
        assert process.returncode == 0 and said in out and err == "", (args, out, err)


def test_kill_9_mid_retrain_shows_the_run_abandoned_at_the_next_command(trained, tmp_path):
    store = tmp_path / "store"
    shutil.copytree(trained, store)
    retrain = subprocess.Popen(appsim("retrain", "--store", str(store), *RETRAIN), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, cwd=REPO, env=_env())
    deadline = time.monotonic() + 120
    for line in retrain.stderr:  # type: ignore[union-attr]
        if "[TrainEmbeddings] started" in line or time.monotonic() > deadline:
            break
    os.kill(retrain.pid, signal.SIGKILL)
    retrain.wait(timeout=30)
    assert retrain.returncode == -signal.SIGKILL

    listed = run("runs", "list", "--json", "--store", str(store))
    assert listed.returncode == 0, listed.stderr
    killed = json.loads(listed.stdout)[0]  # newest first
    statuses = [s["status"] for s in killed["steps"]]
    stopped = statuses.index("abandoned")
    assert killed["status"] == "abandoned" and stopped >= 1  # killed after PrepareFeedback had finished
    assert set(statuses[:stopped]) == {"succeeded"} and set(statuses[stopped + 1:]) == {"pending"}
    assert f"its process {retrain.pid}" in killed["steps"][stopped]["error"]
    table = CliRunner().invoke(cli, ["runs", "list", "--store", str(store)], catch_exceptions=False).output
    assert f"{killed['run_id']}  abandoned" in table  # saved by the first command: the mark stays
