"""The model artifact: what a trained version is, as data (never pickle).

A folder (``model.tar.gz`` when shipped; SageMaker extracts it to ``/opt/ml/model``) holding:

- ``manifest.json``: format version, embedding dim, metric, app count, index type and params
  (and its measured recall@10 against exact search), training data window, event counts,
  parameters, seed, code version, and the sha256 of every other file;
- ``app_ids.json``: the app ids, row i of the embeddings is app i;
- ``embeddings.npy``: float32, L2-normalised rows (loaded with ``allow_pickle=False``);
- ``index.faiss``: the FAISS inner-product index searched with the embeddings; it holds each
  app's unit-norm item vector, which is the embedding itself for a symmetric (cosine) model and
  the asymmetric inner-product form for the trainer's (models/embedding.py);
- ``encoder.json`` + ``encoder_weights.npy``: the metadata encoder for cold start
  (vocabulary and the projection from metadata tokens to the embedding space);
- ``app_stats.parquet``: per-app performance statistics (impressions, clicks, conversions,
  revenue, smoothed CTR and CVR) that predictions are made from.

``ModelArtifact.load`` verifies every checksum before anything is used. An artifact that does
not load is refused with one ``ArtifactError`` subclass whose ``reason`` code says why
(``missing``, ``corrupt``, ``manifest_missing``, ``unknown_format``, ``checksum_mismatch``,
``inconsistent``); only ``missing`` may heal by itself (a copy still in flight, a restore).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd

from models import storage
from models.dataset import APP_STATS_COLUMNS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
APP_IDS = "app_ids.json"
EMBEDDINGS = "embeddings.npy"
INDEX = "index.faiss"
ENCODER = "encoder.json"
ENCODER_WEIGHTS = "encoder_weights.npy"
APP_STATS = "app_stats.parquet"


class ArtifactError(RuntimeError):
    """An artifact that cannot be loaded; ``reason`` is a stable code for metrics and logs."""

    reason = "invalid"


class ArtifactMissing(ArtifactError):
    """The artifact (or its folder) is not there: it may appear later, so callers retry."""

    reason = "missing"


class ArtifactCorrupt(ArtifactError):
    """The tarball does not decompress or unpack (truncated, random bytes, unsafe entries)."""

    reason = "corrupt"


class ManifestMissing(ArtifactError):
    reason = "manifest_missing"


class UnknownFormat(ArtifactError):
    reason = "unknown_format"


class ChecksumMismatch(ArtifactError):
    reason = "checksum_mismatch"


class InconsistentArtifact(ArtifactError):
    """Files that verify but disagree with the manifest or with each other."""

    reason = "inconsistent"


# What a damaged tar.gz raises while being read: a truncated stream (EOFError), a bad header or
# member (tarfile.ReadError), a broken deflate stream (zlib.error), not gzip at all (BadGzipFile).
_DAMAGED_TARBALL = (EOFError, tarfile.TarError, zlib.error, gzip.BadGzipFile)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ModelArtifact:
    app_ids: list[str]
    embeddings: np.ndarray
    index: faiss.Index
    encoder: dict[str, Any]
    encoder_weights: np.ndarray
    app_stats: pd.DataFrame
    manifest: dict[str, Any] = field(default_factory=dict)
    _positions: dict[str, int] | None = field(default=None, repr=False)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def positions(self) -> dict[str, int]:
        """app id -> row, built once."""
        if self._positions is None:
            self._positions = {app_id: i for i, app_id in enumerate(self.app_ids)}
        return self._positions

    @property
    def checksum(self) -> str:
        """sha256 of the embeddings file's bytes, the artifact's identity for reproducibility."""
        return self.manifest["files"][EMBEDDINGS]

    # -- writing -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write every file, then the manifest with their checksums. Returns the folder."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        if self.embeddings.dtype != np.float32 or self.embeddings.ndim != 2:
            raise ArtifactError("embeddings must be a 2-D float32 array")
        if len(self.app_ids) != self.embeddings.shape[0]:
            raise ArtifactError(f"{len(self.app_ids)} app ids but {self.embeddings.shape[0]} embedding rows")
        if self.index.ntotal != len(self.app_ids):
            raise ArtifactError(f"index holds {self.index.ntotal} vectors but there are {len(self.app_ids)} apps")
        (out / APP_IDS).write_text(json.dumps(self.app_ids))
        np.save(out / EMBEDDINGS, self.embeddings, allow_pickle=False)
        faiss.write_index(self.index, str(out / INDEX))
        (out / ENCODER).write_text(json.dumps(self.encoder, sort_keys=True))
        np.save(out / ENCODER_WEIGHTS, self.encoder_weights.astype(np.float32), allow_pickle=False)
        stats = self.app_stats.loc[:, list(APP_STATS_COLUMNS)].reset_index(drop=True)
        stats.to_parquet(out / APP_STATS, index=False)
        files = {name: sha256_file(out / name) for name in (APP_IDS, EMBEDDINGS, INDEX, ENCODER, ENCODER_WEIGHTS, APP_STATS)}
        manifest = dict(self.manifest)
        manifest.update(
            format_version=FORMAT_VERSION,
            embedding_dim=self.dim,
            metric="inner_product",
            app_count=len(self.app_ids),
            files=files,
        )
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        self.manifest = manifest
        return out

    def save_tarball(self, uri: str) -> str:
        """Write ``model.tar.gz`` (deterministic bytes) to a store URI; returns the URI."""
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            storage.write_bytes(uri, storage.make_tarball(tmp))
        return uri

    # -- reading -----------------------------------------------------------------------
    @staticmethod
    def verify(directory: str | Path) -> dict[str, Any]:
        """Check an extracted artifact's format and every checksum; returns its manifest."""
        folder = Path(directory)
        if not folder.is_dir():
            raise ArtifactMissing(f"model folder {folder} does not exist")
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise ManifestMissing(f"{folder} holds no {MANIFEST}: not a model artifact")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ArtifactCorrupt(f"{manifest_path} is not valid JSON: {error}") from error
        if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
            version = manifest.get("format_version") if isinstance(manifest, dict) else None
            raise UnknownFormat(f"artifact format {version!r} is not supported (this code reads {FORMAT_VERSION})")
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise InconsistentArtifact(f"{manifest_path} lists no file checksums")
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                raise InconsistentArtifact(f"artifact file {name} is missing from {folder}")
            actual = sha256_file(path)
            if actual != expected:
                raise ChecksumMismatch(f"checksum mismatch for {name}: manifest says {str(expected)[:12]}, file is {actual[:12]}")
        missing = {APP_IDS, EMBEDDINGS, INDEX, ENCODER, ENCODER_WEIGHTS, APP_STATS} - set(files)
        if missing:
            raise InconsistentArtifact(f"manifest lists no checksum for {', '.join(sorted(missing))}")
        return manifest

    @classmethod
    def load(cls, directory: str | Path) -> "ModelArtifact":
        """Load an extracted artifact, verifying format and every checksum first."""
        folder = Path(directory)
        manifest = cls.verify(folder)
        app_ids = json.loads((folder / APP_IDS).read_text())
        embeddings = np.load(folder / EMBEDDINGS, allow_pickle=False)
        index = faiss.read_index(str(folder / INDEX))
        if embeddings.shape != (manifest["app_count"], manifest["embedding_dim"]) or index.ntotal != len(app_ids):
            raise InconsistentArtifact("artifact shapes disagree with its manifest")
        return cls(
            app_ids=app_ids,
            embeddings=embeddings,
            index=index,
            encoder=json.loads((folder / ENCODER).read_text()),
            encoder_weights=np.load(folder / ENCODER_WEIGHTS, allow_pickle=False),
            app_stats=pd.read_parquet(folder / APP_STATS),
            manifest=manifest,
        )

    @classmethod
    def load_uri(cls, uri: str, workdir: str | Path | None = None) -> "ModelArtifact":
        """Load from a ``model.tar.gz`` URI or an extracted folder URI (file:// or s3://)."""
        if not uri.endswith(".tar.gz"):
            return cls.load(storage.local_path(uri))
        if workdir is not None:
            return cls.load(extract_uri(uri, workdir))
        with tempfile.TemporaryDirectory() as tmp:
            return cls.load(extract_uri(uri, tmp))

    @classmethod
    def verify_uri(cls, uri: str) -> dict[str, Any]:
        """Check a ``model.tar.gz`` or folder URI without loading it (``appsim store check``)."""
        if not uri.endswith(".tar.gz"):
            return cls.verify(storage.local_path(uri))
        with tempfile.TemporaryDirectory() as tmp:
            return cls.verify(extract_uri(uri, tmp))


def extract_uri(uri: str, target_dir: str | Path) -> Path:
    """Download and unpack a ``model.tar.gz``; a missing or damaged one raises its ``ArtifactError``."""
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError as error:
        raise ArtifactMissing(f"model artifact {uri} does not exist") from error
    try:
        return storage.extract_tarball(data, target_dir)
    except _DAMAGED_TARBALL as error:
        raise ArtifactCorrupt(f"model artifact {uri} is damaged ({len(data):,} bytes): "
                              f"{type(error).__name__}: {error}") from error
    except storage.UnsafeTarball as error:
        raise ArtifactCorrupt(f"model artifact {uri}: {error}") from error
