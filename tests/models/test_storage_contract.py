"""One contract, both store backends: a local folder (file://) and S3 (s3:// on a moto server)."""

from __future__ import annotations

import gzip
import uuid

import boto3
import pytest

from models import storage


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path) -> str:
    if request.param == "file":
        return storage.normalize(tmp_path / "store")
    request.getfixturevalue("aws_server_env")  # s3fs is not patched in-process: a real server on 127.0.0.1
    bucket = f"appsim-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/store"


def test_write_read_exists(store):
    uri = storage.join(store, "runs", "r1", "note.txt")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"hello")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"hello"
    storage.write_bytes(uri, b"replaced")
    assert storage.read_bytes(uri) == b"replaced"


def test_write_json_round_trips(store):
    uri = storage.join(store, "runs", "r1", "run.json")
    storage.write_json(uri, {"b": 2, "a": [1, 2], "when": "2026-01-31T00:00:00Z"})
    assert storage.read_json(uri) == {"a": [1, 2], "b": 2, "when": "2026-01-31T00:00:00Z"}


def test_list_files_is_recursive_sorted_and_filtered(store):
    for name in ("feedback/2026/01/31/23/b.gz", "feedback/2026/01/31/22/a.gz", "feedback/2026/01/31/22/c.json",
                 "feedback/2026/01/31/22/.hidden.gz"):
        storage.write_bytes(storage.join(store, name), b"x")
    root = storage.join(store, "feedback")
    found = storage.list_files(root)
    assert [f.split("/feedback/", 1)[1] for f in found] == [
        "2026/01/31/22/a.gz", "2026/01/31/22/c.json", "2026/01/31/23/b.gz"]
    assert all(f.startswith(store.split("://")[0] + "://") for f in found)
    assert [f.rsplit("/", 1)[1] for f in storage.list_files(root, suffixes=(".gz",))] == ["a.gz", "b.gz"]
    assert storage.list_files(storage.join(store, "nothing-here")) == []
    assert storage.list_dirs(storage.join(store, "feedback", "2026", "01", "31")) == ["22", "23"]


def test_iter_lines_reads_plain_and_gzip_objects(store):
    lines = [b'{"event_id": "e1"}', b'{"event_id": "e2"}', b""]
    storage.write_bytes(storage.join(store, "f", "plain"), b"\n".join(lines[:2]) + b"\n")
    storage.write_bytes(storage.join(store, "f", "batch.gz"), gzip.compress(b"\r\n".join(lines[:2]) + b"\n"))
    assert list(storage.iter_lines(storage.join(store, "f", "plain"))) == lines[:2]
    assert list(storage.iter_lines(storage.join(store, "f", "batch.gz"))) == lines[:2]


def test_upload_and_download_dir_keep_the_tree(store, tmp_path):
    source = tmp_path / "model"
    (source / "nested").mkdir(parents=True)
    (source / "manifest.json").write_text("{}")
    (source / "nested" / "weights.npy").write_bytes(bytes(range(256)) * 10)
    target_uri = storage.join(store, "runs", "r1", "train")
    storage.upload_dir(source, target_uri)
    copy = storage.download_dir(target_uri, tmp_path / "copy")
    assert (copy / "manifest.json").read_text() == "{}"
    assert (copy / "nested" / "weights.npy").read_bytes() == bytes(range(256)) * 10


def test_remove_deletes_a_tree(store):
    storage.write_bytes(storage.join(store, "tmp", "a", "b.txt"), b"x")
    storage.remove(storage.join(store, "tmp"))
    assert storage.list_files(storage.join(store, "tmp")) == []
