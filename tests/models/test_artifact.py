"""The model artifact format: round trip, checksums, no pickle, manifest fields, and every way an
artifact can fail to load refused with its own ``ArtifactError`` and reason code."""

from __future__ import annotations

import gzip
import json
import tarfile
import zlib

import numpy as np
import pytest

from models import storage
from models.artifact import (APP_IDS, EMBEDDINGS, ENCODER, ENCODER_WEIGHTS, INDEX, MANIFEST, ArtifactCorrupt,
                             ArtifactError, ArtifactMissing, ChecksumMismatch, ManifestMissing, ModelArtifact,
                             UnknownFormat)
from models.progress import Progress
from steps.train import train_artifact
from tests.models.coengagement_world import write_world


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> ModelArtifact:
    prepared_uri, catalog_uri = write_world(tmp_path_factory.mktemp("world"), warm_per_cluster=12, cold_per_cluster=3,
                                            users=120)
    return train_artifact(prepared_uri, catalog_uri, embedding_dim=8, seed=2, progress=Progress.quiet())


def test_round_trip_through_a_tarball_keeps_everything(artifact, tmp_path):
    uri = artifact.save_tarball(storage.normalize(tmp_path / "model.tar.gz"))
    loaded = ModelArtifact.load_uri(uri)
    assert loaded.app_ids == artifact.app_ids
    assert np.array_equal(loaded.embeddings, artifact.embeddings)
    assert np.array_equal(loaded.encoder_weights, artifact.encoder_weights)
    assert loaded.encoder == json.loads(json.dumps(artifact.encoder))
    assert loaded.app_stats.equals(artifact.app_stats.reset_index(drop=True))
    # The loaded index answers exactly as the trained one (it holds item vectors, not necessarily the embeddings).
    assert np.array_equal(loaded.index.search(loaded.embeddings, 5)[1], artifact.index.search(artifact.embeddings, 5)[1])
    assert loaded.checksum == loaded.manifest["files"][EMBEDDINGS]
    # The tarball is deterministic: saving again gives the same bytes.
    again = artifact.save_tarball(storage.normalize(tmp_path / "again.tar.gz"))
    assert storage.read_bytes(again) == storage.read_bytes(uri)


def test_manifest_describes_the_model_and_its_lineage(artifact, tmp_path):
    artifact.save(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["format_version"] == 1 and manifest["metric"] == "inner_product"
    assert manifest["embedding_dim"] == 8 and manifest["app_count"] == 60
    for key in ("training_window", "event_counts", "parameters", "seed", "code_version", "index", "trainer",
                "warm_apps", "cold_apps"):
        assert manifest[key] is not None, key
    assert set(manifest["index"]) >= {"type", "params", "recall_at_10_vs_exact", "build_seconds"}
    assert set(manifest["files"]) == {APP_IDS, EMBEDDINGS, INDEX, ENCODER, ENCODER_WEIGHTS, "app_stats.parquet"}


def test_no_pickle_anywhere(artifact, tmp_path):
    artifact.save(tmp_path)
    for name in (EMBEDDINGS, ENCODER_WEIGHTS):
        array = np.load(tmp_path / name, allow_pickle=False)  # raises if the file needed pickle
        assert array.dtype == np.float32
    for path in tmp_path.iterdir():
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks like a pickle stream"
    assert json.loads((tmp_path / ENCODER).read_text())["vocabulary"][0] == "bias"  # plain JSON data


@pytest.mark.parametrize("victim", [EMBEDDINGS, INDEX, ENCODER, APP_IDS])
def test_a_tampered_file_is_refused(artifact, tmp_path, victim):
    artifact.save(tmp_path)
    path = tmp_path / victim
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"checksum mismatch for {victim}"):
        ModelArtifact.load(tmp_path)


def test_missing_or_foreign_artifacts_are_refused(artifact, tmp_path):
    with pytest.raises(ArtifactError, match="not a model artifact"):
        ModelArtifact.load(tmp_path)
    artifact.save(tmp_path)
    (tmp_path / ENCODER_WEIGHTS).unlink()
    with pytest.raises(ArtifactError, match=f"{ENCODER_WEIGHTS} is missing"):
        ModelArtifact.load(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    (tmp_path / MANIFEST).write_text(json.dumps(manifest | {"format_version": 99}))
    with pytest.raises(ArtifactError, match="format 99 is not supported"):
        ModelArtifact.load(tmp_path)
    with pytest.raises(ArtifactError, match="does not exist"):
        ModelArtifact.load_uri(storage.normalize(tmp_path / "absent.tar.gz"))


def test_a_tarball_that_escapes_its_folder_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    (tmp_path / "payload").write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "payload", arcname="../escape")
    with pytest.raises(ArtifactCorrupt, match="escapes"):
        ModelArtifact.load_uri(storage.normalize(evil), workdir=tmp_path / "out")
    assert not (tmp_path / "escape").exists()


def _flip_middle(data: bytes) -> bytes:
    damaged = bytearray(data)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        damaged[i] ^= 0x5A
    return bytes(damaged)


# Each way a model.tar.gz arrives broken, and the exception the standard library raises for it.
DAMAGE = {
    "truncated": (lambda data: data[: len(data) // 2], EOFError),
    "random bytes": (lambda data: bytes(range(256)) * 8, gzip.BadGzipFile),
    # flipped bytes decode as an invalid deflate block, or as wrong bytes that the gzip CRC catches
    "damaged deflate stream": (_flip_middle, (zlib.error, gzip.BadGzipFile)),
    "gzip of something not a tar": (lambda data: gzip.compress(b"\x01" * 4096), tarfile.ReadError),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_tarball_is_refused_as_corrupt_naming_the_cause(artifact, tmp_path, damage):
    uri = artifact.save_tarball(storage.normalize(tmp_path / "model.tar.gz"))
    spoil, raised = DAMAGE[damage]
    (tmp_path / "model.tar.gz").write_bytes(spoil((tmp_path / "model.tar.gz").read_bytes()))
    with pytest.raises(ArtifactCorrupt) as caught:
        ModelArtifact.load_uri(uri)
    assert caught.value.reason == "corrupt" and isinstance(caught.value.__cause__, raised)
    assert uri in str(caught.value) and type(caught.value.__cause__).__name__ in str(caught.value)
    with pytest.raises(ArtifactCorrupt):
        ModelArtifact.verify_uri(uri)


def test_each_refusal_carries_its_reason_code(artifact, tmp_path):
    with pytest.raises(ArtifactMissing) as missing:
        ModelArtifact.load_uri(storage.normalize(tmp_path / "absent" / "model.tar.gz"))
    with pytest.raises(ManifestMissing) as no_manifest:
        ModelArtifact.load(tmp_path)
    artifact.save(tmp_path / "m")
    (tmp_path / "m" / INDEX).write_bytes(b"not an index")
    with pytest.raises(ChecksumMismatch) as mismatch:
        ModelArtifact.load(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST).read_text())
    (tmp_path / "m" / MANIFEST).write_text(json.dumps(manifest | {"format_version": 2}))
    with pytest.raises(UnknownFormat) as unknown:
        ModelArtifact.verify(tmp_path / "m")
    reasons = [e.value.reason for e in (missing, no_manifest, mismatch, unknown)]
    assert reasons == ["missing", "manifest_missing", "checksum_mismatch", "unknown_format"]
    assert all(isinstance(e.value, ArtifactError) for e in (missing, no_manifest, mismatch, unknown))
