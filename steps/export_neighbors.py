"""ExportNeighbors: the top-K neighbours and predicted CTR/CVR of every catalog app, as Parquet.

The bulk counterpart of ``GET /v1/apps/{id}/similar`` and ``POST /v1/predict``: the same
``Predictor`` calls (``similar_many`` then ``rates``), batched over the whole catalog, so an
exported row equals the API's answer for that app and k (a test checks it against a server).

Output, under ``<store>/neighbors/v<N>/``:

- ``neighbors.parquet``: one row per app (``NEIGHBOR_SCHEMA``), one row group per search batch;
- ``manifest.json``: version, k, app count, the artifact's embeddings checksum, timing; written last, so a folder
  without it is an unfinished export.

The apps are exported in chunks of ``batch`` apps in app order, each chunk a task on one of
``threads`` worker threads: search, the query itself dropped, CTR/CVR posteriors, an Arrow table.
The calling thread writes the finished tables to Parquet in app order (one row group each) while
the workers search the next chunks; at most ``threads + 1`` chunks are in flight, so memory stays
bounded at any catalog size. Every heavy call (FAISS, BLAS, numpy, scipy, Arrow) releases the GIL,
and each worker runs one FAISS/BLAS thread, so the workers keep every core busy. The result does not
depend on ``threads``: each chunk is searched on its own, and written in order.

The search: for an inner-product IVF-Flat index (what TrainEmbeddings builds above 100K apps), a
chunk's probed lists come from the coarse quantizer and ``models.index.ListScan`` scores each list
against all the chunk's apps that probe it with one matrix product (the same candidates as
``index.search``). Other indexes go through ``Predictor.similar_rows`` (FAISS batch search).
Speed at 1M apps: README, "Bulk neighbours" (bench/neighbors_export.py).
"""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from threadpoolctl import threadpool_limits

from models import layout, storage
from models.artifact import EMBEDDINGS, ModelArtifact
from models.events import format_ts
from models.index import ListScan
from models.predictor import Predictor, check_k, without_query
from models.progress import Progress

NEIGHBORS_FILE = "neighbors.parquet"
MANIFEST_FILE = "manifest.json"
# Apps per worker task and Parquet row group: big enough that each IVF list is scored against a few
# hundred apps at once (bigger matrix products, fewer Python steps), small enough to bound memory.
EXPORT_BATCH = 131_072
RATE_COLUMNS = ("ctr", "ctr_low", "ctr_high", "cvr", "cvr_low", "cvr_high")
# Measured on 131K export rows (bench/neighbors_export.py's shape): Arrow's defaults cost 3.9 us a
# row; without dictionaries (ids are unique, scores and rates are floats: a dictionary never pays)
# and with zstd level 1, 1.6 us and a third fewer bytes. Statistics only where a reader filters:
# rows are in app order, so app_id ranges let a reader skip row groups.
PARQUET_OPTIONS: dict[str, Any] = {"use_dictionary": False, "compression": "zstd", "compression_level": 1,
                                   "write_statistics": ["app_id"]}
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


Search = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def chunk_search(artifact: ModelArtifact, predictor: Predictor, k: int) -> Search:
    """A function from artifact rows to their top-``k`` (positions, scores), each (n, k), as
    ``Predictor.similar_rows`` gives them; safe to call from several threads at once."""
    if not ListScan.supports(artifact.index):
        return lambda rows: predictor.similar_rows(rows, k)
    scan = ListScan(faiss.downcast_index(artifact.index))

    def search(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        queries = artifact.embeddings[rows]
        found_scores, found = scan.search(queries, scan.probes(queries), k + 1)
        return without_query(rows, found, found_scores, k)

    return search


def export(artifact: ModelArtifact, out_uri: str, version: int, k: int, *, batch: int = EXPORT_BATCH,
           threads: int | None = None, progress: Progress | None = None) -> ExportResult:
    """Write every app's top-``k`` neighbours and rates to ``out_uri`` (a folder URI)."""
    k = check_k(k)
    predictor = Predictor(artifact)
    n_apps = len(artifact.app_ids)
    threads = threads or os.cpu_count() or 1
    search = chunk_search(artifact, predictor, k)
    ids = pa.array(artifact.app_ids, pa.string())

    def table(rows: np.ndarray) -> pa.Table:
        positions, scores = search(rows)
        return rows_to_table(predictor, ids, rows, positions, scores)

    written = (progress or Progress.quiet()).child("export", n_apps, unit="apps")
    started = time.perf_counter()
    pending: deque[Future[pa.Table]] = deque()
    try:
        # One FAISS (OpenMP) and one BLAS thread per worker: the workers are the parallelism. OpenMP's
        # thread count is a per-thread setting, so each worker sets its own (set here, the workers' FAISS
        # calls would run 2 OpenMP threads each, spinning: measured +55% CPU in the coarse quantizer).
        with threadpool_limits(limits=1, user_api="blas"), \
                ThreadPoolExecutor(max_workers=threads, initializer=faiss.omp_set_num_threads, initargs=(1,)) as workers, \
                storage.open_uri(storage.join(out_uri, NEIGHBORS_FILE), "wb") as handle, \
                pq.ParquetWriter(handle, NEIGHBOR_SCHEMA, **PARQUET_OPTIONS) as writer:
            for rows in batches(n_apps, batch):
                pending.append(workers.submit(table, rows))
                if len(pending) > threads:
                    _write(writer, pending.popleft().result(), written)
            while pending:
                _write(writer, pending.popleft().result(), written)
    finally:
        for queued in pending:  # a failed chunk: the workers stop after the chunks they are on
            queued.cancel()
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


def export_manifest(uri: str) -> dict[str, Any]:
    """The manifest of a finished export folder; ``FileNotFoundError`` names an unfinished one."""
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if not storage.exists(manifest_uri):
        raise FileNotFoundError(f"{uri} holds no finished neighbour export (no {MANIFEST_FILE}); "
                                "run `appsim neighbors export --version N`")
    return storage.read_json(manifest_uri)


def read_neighbors(uri: str, app_ids: Sequence[str] | None = None, columns: list[str] | None = None) -> pa.Table:
    """An export folder's rows (``columns``, default all); with ``app_ids``, only those apps' rows, read one
    row group at a time so memory stays at one group's, not the whole export's."""
    with storage.open_uri(storage.join(uri, NEIGHBORS_FILE)) as handle:
        if app_ids is None:
            return pq.read_table(handle, columns=columns)
        parquet = pq.ParquetFile(handle)
        wanted = pa.array(list(app_ids), pa.string())
        parts = []
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=columns)
            parts.append(table.filter(pc.is_in(table["app_id"], value_set=wanted)))
        if parts:
            return pa.concat_tables(parts)
        empty = parquet.schema_arrow.empty_table()  # an export of no apps has no row group
        return empty.select(columns) if columns else empty


def read_export(uri: str) -> tuple[dict[str, Any], pa.Table]:
    """(manifest, table) of a finished export folder; ``FileNotFoundError`` names an unfinished one."""
    return export_manifest(uri), read_neighbors(uri)
