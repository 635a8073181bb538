"""ExportNeighbors: the top-K neighbours and predicted CTR/CVR of every catalog app, as Parquet.

The bulk counterpart of ``GET /v1/apps/{id}/similar`` and ``POST /v1/predict``: the same
``Predictor`` calls (``similar_many`` then ``rates``), batched over the whole catalog, so an
exported row equals the API's answer for that app and k (a test checks it against a server).

Output, under ``<store>/neighbors/v<N>/``:

- ``neighbors.parquet``: one row per app (``NEIGHBOR_SCHEMA``), one row group per search batch;
- ``manifest.json``: version, k, app count, the artifact's embeddings checksum, timing; written last, so a folder
  without it is an unfinished export.

Two passes. The search: for an inner-product IVF-Flat index (what TrainEmbeddings builds above
100K apps), every app's probed lists come from one coarse-quantizer pass, the apps are grouped by
their nearest list, and ``models.index.ListScan`` scores each list against all the apps that probe
it with one matrix product, on every core (the same candidates as ``index.search``; the whole
export 1.3-2.5x a plain FAISS batch search at 1M apps: bench/neighbors_export.py). Other indexes go through
``Predictor.similar_rows`` (FAISS batch search on every core). The second pass computes the CTR/CVR
posteriors and writes Parquet in app order, the next row group's numbers on a thread while the
previous one is written.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models import layout, storage
from models.artifact import EMBEDDINGS, ModelArtifact
from models.events import format_ts
from models.index import ListScan
from models.predictor import Predictor, check_k, without_query
from models.progress import Progress

NEIGHBORS_FILE = "neighbors.parquet"
MANIFEST_FILE = "manifest.json"
EXPORT_BATCH = 16_384   # apps per Parquet row group (and per FAISS batch search)
SCAN_BATCH = 131_072    # apps per list-by-list scan of an IVF index: more apps, bigger matrix products
RATE_COLUMNS = ("ctr", "ctr_low", "ctr_high", "cvr", "cvr_low", "cvr_high")
NEIGHBOR_SCHEMA = pa.schema(
    [("app_id", pa.string()), ("neighbor_ids", pa.list_(pa.string())), ("scores", pa.list_(pa.float32()))]
    + [(name, pa.float64()) for name in RATE_COLUMNS]
    + [("support_impressions", pa.int64())]
)


@dataclass(frozen=True)
class ExportResult:
    uri: str
    version: int
    k: int
    apps: int
    seconds: float

    @property
    def apps_per_second(self) -> float:
        return self.apps / self.seconds if self.seconds > 0 else float("inf")


def neighbor_records(predictor: Predictor, rows: np.ndarray, k: int) -> list[dict[str, Any]]:
    """The export rows of artifact rows ``rows`` as dicts (``NEIGHBOR_SCHEMA``'s columns): what
    /invocations answers per JSON line, so Batch Transform produces the same export."""
    positions, scores = predictor.similar_rows(rows, k)
    rates = predictor.rates(positions, scores, rows)
    app_ids = predictor.artifact.app_ids
    return [{"app_id": app_ids[row],
             "neighbor_ids": [app_ids[p] for p in positions[i] if p >= 0],
             "scores": [float(s) for p, s in zip(positions[i], scores[i]) if p >= 0],
             **{name: float(getattr(rates, name)[i]) for name in RATE_COLUMNS},
             "support_impressions": int(rates.support_impressions[i])}
            for i, row in enumerate(rows)]


def rows_to_table(predictor: Predictor, ids: pa.Array, rows: np.ndarray, positions: np.ndarray,
                  scores: np.ndarray) -> pa.Table:
    """The export rows of artifact rows ``rows`` from their search results; ``ids`` is the artifact's
    app ids as an Arrow array (``take`` turns positions into ids without a Python loop)."""
    rates = predictor.rates(positions, scores, rows)
    valid = positions >= 0  # -1 pads a row when the index holds fewer than k other apps
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(valid.sum(axis=1), out=offsets[1:])
    neighbor_ids = pa.ListArray.from_arrays(pa.array(offsets), ids.take(pa.array(positions[valid])))
    neighbor_scores = pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid].astype(np.float32)))
    columns = [ids.take(pa.array(rows)), neighbor_ids, neighbor_scores]
    columns += [pa.array(getattr(rates, name), pa.float64()) for name in RATE_COLUMNS]
    columns.append(pa.array(rates.support_impressions, pa.int64()))
    return pa.Table.from_arrays(columns, schema=NEIGHBOR_SCHEMA)


def batches(n_apps: int, batch: int) -> Iterator[np.ndarray]:
    for start in range(0, n_apps, batch):
        yield np.arange(start, min(start + batch, n_apps), dtype=np.int64)


def search_all(artifact: ModelArtifact, k: int, *, batch: int, scan_batch: int, threads: int,
               progress: Progress) -> tuple[np.ndarray, np.ndarray]:
    """Every app's top-``k`` (positions, scores), each (n_apps, k), as ``Predictor.similar_rows`` gives them."""
    n_apps = len(artifact.app_ids)
    positions = np.empty((n_apps, k), dtype=np.int64)
    scores = np.empty((n_apps, k), dtype=np.float32)
    searched = progress.child("export: search", n_apps, unit="apps")
    if ListScan.supports(artifact.index):
        ivf = faiss.downcast_index(artifact.index)
        probes = np.empty((n_apps, ivf.nprobe), dtype=np.int64)
        for rows in batches(n_apps, batch):
            probes[rows] = ivf.quantizer.search(artifact.embeddings[rows], ivf.nprobe)[1]
        # Apps of one list probe nearly the same lists: a chunk of them gives each list many queries.
        order = np.argsort(probes[:, 0], kind="stable")
        scan = ListScan(ivf, workers=threads)
        for chunk in batches(n_apps, scan_batch):
            rows = order[chunk]
            found_scores, found = scan.search(artifact.embeddings[rows], probes[rows], k + 1)
            positions[rows], scores[rows] = without_query(rows, found, found_scores, k)
            searched.update(len(rows))
    else:
        predictor = Predictor(artifact)
        for rows in batches(n_apps, batch):
            positions[rows], scores[rows] = predictor.similar_rows(rows, k)
            searched.update(len(rows))
    searched.finish()
    return positions, scores


def export(artifact: ModelArtifact, out_uri: str, version: int, k: int, *, batch: int = EXPORT_BATCH,
           scan_batch: int = SCAN_BATCH, threads: int | None = None, progress: Progress | None = None) -> ExportResult:
    """Write every app's top-``k`` neighbours and rates to ``out_uri`` (a folder URI)."""
    k = check_k(k)
    predictor = Predictor(artifact)
    n_apps = len(artifact.app_ids)
    progress = progress or Progress.quiet()
    threads = threads or os.cpu_count() or 1
    previous_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    try:
        positions, scores = search_all(artifact, k, batch=batch, scan_batch=scan_batch, threads=threads,
                                       progress=progress)
    finally:
        faiss.omp_set_num_threads(previous_threads)
    written = progress.child("export: rates and Parquet", n_apps, unit="apps")
    ids = pa.array(artifact.app_ids, pa.string())
    with storage.open_uri(storage.join(out_uri, NEIGHBORS_FILE), "wb") as handle, \
            pq.ParquetWriter(handle, NEIGHBOR_SCHEMA) as writer, ThreadPoolExecutor(max_workers=1) as rate_thread:
        pending = None
        for rows in batches(n_apps, batch):
            following = rate_thread.submit(rows_to_table, predictor, ids, rows, positions[rows], scores[rows])
            if pending is not None:
                _write(writer, pending.result(), written)
            pending = following
        if pending is not None:
            _write(writer, pending.result(), written)
    seconds = time.perf_counter() - started
    written.finish(f"{n_apps:,} apps in {seconds:.1f} s")
    storage.write_json(storage.join(out_uri, MANIFEST_FILE), {
        "model_version": version, "k": k, "apps": n_apps, "file": NEIGHBORS_FILE,
        "embeddings_sha256": artifact.manifest.get("files", {}).get(EMBEDDINGS), "index": artifact.manifest.get("index"),
        "exported_at": format_ts(datetime.now(timezone.utc)), "seconds": round(seconds, 3),
    })
    return ExportResult(out_uri, version, k, n_apps, seconds)


def _write(writer: pq.ParquetWriter, table: pa.Table, step: Progress) -> None:
    writer.write_table(table)
    step.update(table.num_rows)


def run(store: str, artifact_uri: str, version: int, k: int, *, progress: Progress | None = None,
        workdir: str | None = None) -> ExportResult:
    """Export registered ``version`` (its ``model.tar.gz`` at ``artifact_uri``) to ``<store>/neighbors/v<version>/``."""
    artifact = ModelArtifact.load_uri(artifact_uri, workdir)
    return export(artifact, layout.neighbors_uri(store, version), version, k, progress=progress)


def read_export(uri: str) -> tuple[dict[str, Any], pa.Table]:
    """(manifest, table) of a finished export folder; ``FileNotFoundError`` names an unfinished one."""
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{uri} holds no finished neighbour export (no {MANIFEST_FILE}); "
                                "run `appsim neighbors export --version N`")
    with storage.open_uri(storage.join(uri, NEIGHBORS_FILE)) as handle:
        return storage.read_json(manifest_uri), pq.read_table(handle)
