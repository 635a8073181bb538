"""`appsim store check`: what is missing or corrupt in a store, with the fix, and the exit code."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from models import storage
from models.registry_sqlite import SQLiteRegistry
from pipelines.cli import cli
from pipelines.runs import RunRecord, save_run
from tests.serving.helpers import build_artifact, catalog


@pytest.fixture()
def store(tmp_path):
    """A whole store: catalog, two Approved versions and a Rejected one, their run records."""
    root = tmp_path / "store"
    (root / "catalog").mkdir(parents=True)
    catalog(240).to_parquet(root / "catalog" / "apps.parquet")
    registry = SQLiteRegistry(root / "registry.db")
    for n, status in enumerate(["Approved", "Approved", "Rejected"], start=1):
        run_id = f"20261101T00000{n}Z-run{n}"
        uri = build_artifact(seed=n).save_tarball(storage.normalize(root / "runs" / run_id / "train" / "model.tar.gz"))
        storage.write_json(storage.normalize(root / "runs" / run_id / "evaluate" / "evaluation.json"), {"decision": "x"})
        registry.register(uri, status, {}, {"run_id": run_id},
                          evaluation_uri=storage.normalize(root / "runs" / run_id / "evaluate" / "evaluation.json"))
        save_run(RunRecord(run_id=run_id, started_at="2026-11-01T00:00:00+00:00", parameters={},
                           store=storage.normalize(root), registry=registry.uri, status="succeeded"))
    return root


def check(store) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["store", "check", "--json", "--store", str(store)], catch_exceptions=False)
    return result.exit_code, json.loads(result.output)


def problems(report: dict) -> dict[str, tuple[str, str]]:
    return {f["item"]: (f["status"], f["detail"]) for f in report["findings"] if f["status"] != "ok"}


def test_a_whole_store_passes(store):
    code, report = check(store)
    assert code == 0 and report["ok"] and problems(report) == {}
    assert [f["item"] for f in report["findings"]][:4] == [
        "registry", "version 3 (Rejected)", "version 2 (Approved)", "version 1 (Approved)"]


def test_missing_and_corrupt_parts_are_named_with_their_fix(store):
    champion = store / "runs" / "20261101T000002Z-run2" / "train" / "model.tar.gz"
    champion.write_bytes(champion.read_bytes()[:1000])  # truncated
    (store / "runs" / "20261101T000003Z-run3" / "train" / "model.tar.gz").unlink()  # a Rejected one cleaned up
    (store / "runs" / "20261101T000001Z-run1" / "run.json").write_text("{not json")
    (store / "catalog" / "apps.parquet").unlink()
    code, report = check(store)
    assert code == 1 and not report["ok"] and report["errors"] == 3 and report["warnings"] == 1
    found = problems(report)
    assert found["version 2 (Approved)"][0] == "error" and "artifact is corrupt" in found["version 2 (Approved)"][1]
    assert found["version 3 (Rejected)"] == ("warning", f"artifact {storage.normalize(store)}/runs/20261101T000003Z-run3"
                                                        "/train/model.tar.gz is missing")
    assert found["catalog"][0] == "error" and found["run 20261101T000001Z-run1"][0] == "error"
    fixes = {f["item"]: f["fix"] for f in report["findings"]}
    assert "appsim registry reject 2" in fixes["version 2 (Approved)"] and "restore" in fixes["version 2 (Approved)"]
    assert "catalog/apps.parquet" in fixes["catalog"]


def test_a_damaged_registry_is_one_error_and_the_text_report_names_the_fix(store):
    (store / "registry.db").write_bytes(b"\0garbage" * 512)
    for suffix in ("-wal", "-shm"):
        (store / f"registry.db{suffix}").unlink(missing_ok=True)
    result = CliRunner().invoke(cli, ["store", "check", "--store", str(store)], catch_exceptions=False)
    assert result.exit_code == 1
    assert "ERROR  registry:" in result.output and "fix: restore registry.db from a backup" in result.output
