"""The embedded registry's file: portable paths, read-only opening, and a damaged file named with its fix."""

from __future__ import annotations

import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest

from models import storage
from models.registry_sqlite import RegistryUnavailable, SQLiteRegistry


def _register(registry: SQLiteRegistry, artifact_uri: str) -> int:
    evaluation = artifact_uri.replace("train/model.tar.gz", "evaluate/evaluation.json")
    return registry.register(artifact_uri, "Approved", {"recall_at_10": 0.3}, {}, evaluation_uri=evaluation).version


def _stored(path, version: int) -> tuple[str, str]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT artifact_uri, evaluation_uri FROM model_versions WHERE version = ?",
                            (version,)).fetchone()


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_locations_in_the_store_are_recorded_relative_and_follow_a_copied_store(tmp_path):
    store = tmp_path / "store"
    artifact = store / "runs" / "r1" / "train" / "model.tar.gz"
    _touch(artifact)
    registry = SQLiteRegistry(store / "registry.db")
    version = _register(registry, storage.normalize(artifact))
    outside = _register(registry, "s3://bucket/runs/r2/train/model.tar.gz")
    assert _stored(store / "registry.db", version) == ("runs/r1/train/model.tar.gz", "runs/r1/evaluate/evaluation.json")
    assert registry.get(version).artifact_uri == storage.normalize(artifact)

    shutil.copytree(store, tmp_path / "restored")
    shutil.rmtree(store)
    moved = SQLiteRegistry(tmp_path / "restored" / "registry.db")
    assert moved.get(version).artifact_uri == storage.normalize(tmp_path / "restored" / "runs/r1/train/model.tar.gz")
    assert storage.exists(moved.get(version).artifact_uri)
    assert moved.get(outside).artifact_uri == "s3://bucket/runs/r2/train/model.tar.gz"  # never rewritten


def test_rows_with_absolute_paths_resolve_by_their_tail_once_the_old_path_is_gone(tmp_path):
    store = tmp_path / "restored"
    _touch(store / "runs" / "r1" / "train" / "model.tar.gz")
    _touch(tmp_path / "elsewhere" / "model.tar.gz")
    registry = SQLiteRegistry(store / "registry.db")
    with sqlite3.connect(store / "registry.db") as conn:  # rows as an older appsim wrote them
        conn.executemany(
            "INSERT INTO model_versions VALUES (?, 'Approved', '2026-11-01T00:00:00+00:00', ?, NULL, '{}', '{}', '')",
            [(1, "file:///old/host/store/runs/r1/train/model.tar.gz"),
             (2, storage.normalize(tmp_path / "elsewhere" / "model.tar.gz")),
             (3, "file:///old/host/store/runs/gone/train/model.tar.gz")])
    assert registry.get(1).artifact_uri == storage.normalize(store / "runs/r1/train/model.tar.gz")
    assert registry.get(2).artifact_uri == storage.normalize(tmp_path / "elsewhere" / "model.tar.gz")  # still there
    assert registry.get(3).artifact_uri == "file:///old/host/store/runs/gone/train/model.tar.gz"  # reported missing


def test_a_read_only_registry_reads_without_writing_and_refuses_writes_with_the_fix(tmp_path):
    absent = SQLiteRegistry(tmp_path / "new" / "registry.db", read_only=True)
    assert absent.list_versions() == [] and absent.champion() is None
    assert not (tmp_path / "new").exists()  # reading created nothing

    writer = SQLiteRegistry(tmp_path / "registry.db")
    _register(writer, "s3://bucket/runs/r1/train/model.tar.gz")
    reader = SQLiteRegistry(tmp_path / "registry.db", read_only=True)
    assert [v.version for v in reader.list_versions()] == [1] and reader.quick_check() == "ok"
    with pytest.raises(RegistryUnavailable, match="is read-only .* run it on a writable store") as caught:
        reader.set_status(1, "Rejected")
    assert caught.value.reason == "read_only"


@pytest.mark.parametrize("read_only", [False, True])
def test_a_damaged_registry_file_is_named_with_the_fix(tmp_path, read_only):
    path = tmp_path / "registry.db"
    path.write_bytes(b"this is not SQLite, it was overwritten by accident\n" * 200)
    with pytest.raises(RegistryUnavailable, match=f"{path} is not a readable SQLite database .* restore it from a backup") as caught:
        SQLiteRegistry(path, read_only=read_only).list_versions()
    assert caught.value.reason == "corrupt"


def test_many_threads_creating_one_new_registry_all_open_it(tmp_path):
    # Switching a new file to WAL could fail at once with "database is locked" (no busy handler): ~4% of such rounds.
    for round_number in range(100):
        path = tmp_path / f"round{round_number}" / "registry.db"
        with ThreadPoolExecutor(max_workers=6) as pool:
            registries = list(pool.map(lambda _: SQLiteRegistry(path), range(12)))
        assert {registry.path for registry in registries} == {path}
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
