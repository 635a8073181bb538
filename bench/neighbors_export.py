"""Bulk neighbour export at scale: `appsim neighbors export`'s core on N synthetic apps.

    .venv/bin/python bench/neighbors_export.py --apps 1000000 --k 10

Builds clustered unit embeddings and an index of the type and parameters TrainEmbeddings chooses
at that size (IVF with nlist = 4 sqrt(N), nprobe 16 above 100K apps; the IVF centroids trained on a
sample of ``--train-sample`` apps, which changes the build time, not the search cost), saved as a
model artifact under ``--cache`` and reused by the next run with the same settings (the 1M-app
build takes minutes), then measures in the same run:

- the reference: a plain FAISS batch search (``index.search(embeddings[rows], k + 1)``, all cores,
  rows in app order) of ``--reference-queries`` apps, the search any export would pay with FAISS;
- the export of every app: search + exclusion of the query + CTR/CVR posteriors + Parquet, to a temp folder.

Prints apps/s of each (wall clock, and per CPU-second of this process, which a shared machine
disturbs less) and the export's ratio to the reference (the ratio is the figure to compare
across runs). Stops by itself: nothing waits on input or runs unbounded. Nothing here is asserted
in tests.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from models.artifact import ModelArtifact
from models.index import IVF_MIN_POINTS_PER_LIST, IVF_NPROBE, choose_index_type, ivf_list_count
from models.predictor import Neighbor, Predictor
from steps.export_neighbors import export


def synthetic_index(embeddings: np.ndarray, train_sample: int, seed: int) -> tuple[faiss.Index, dict]:
    n, dim = embeddings.shape
    if choose_index_type(n, "auto", 100_000) == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(embeddings)
        return index, {"type": "flat", "params": {}}
    nlist = ivf_list_count(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n, size=min(n, max(train_sample, IVF_MIN_POINTS_PER_LIST * nlist)), replace=False)
    index.train(embeddings[np.sort(sample)])
    index.add(embeddings)
    index.nprobe = IVF_NPROBE
    return index, {"type": "ivf", "params": {"nlist": nlist, "nprobe": IVF_NPROBE}}


def synthetic_artifact(apps: int, dim: int, clusters: int, seed: int, train_sample: int) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    embeddings = centers[rng.integers(0, clusters, apps)] + 0.5 * rng.normal(size=(apps, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    started = time.perf_counter()
    index, record = synthetic_index(embeddings, train_sample, seed)
    print(f"index: {record['type']} {record['params']} built in {time.perf_counter() - started:.1f} s")
    impressions = rng.integers(0, 5000, apps)
    clicks = rng.binomial(impressions, 0.02)
    conversions = rng.binomial(clicks, 0.1)
    app_ids = [f"app{i:07d}" for i in range(apps)]
    stats = pd.DataFrame({"app_id": app_ids, "impressions": impressions, "clicks": clicks,
                          "conversions": conversions, "revenue": conversions * 1.5,
                          "ctr": (clicks + 1) / (impressions + 2), "cvr": (conversions + 1) / (clicks + 2)})
    return ModelArtifact(app_ids=app_ids, embeddings=embeddings, index=index, encoder={},
                         encoder_weights=np.zeros((1, dim), np.float32), app_stats=stats,
                         manifest={"index": {"type": record.get("type"), "params": record.get("params")}})


def cached_artifact(cache: Path, apps: int, dim: int, clusters: int, seed: int, train_sample: int) -> ModelArtifact:
    """The synthetic artifact from ``cache`` when an earlier run saved it, else built and saved there."""
    folder = cache / f"apps{apps}-dim{dim}-clusters{clusters}-seed{seed}-train{train_sample}"
    if (folder / "manifest.json").is_file():
        print(f"reusing {folder}")
        return ModelArtifact.load(folder)
    artifact = synthetic_artifact(apps, dim, clusters, seed, train_sample)
    artifact.save(folder)
    print(f"saved to {folder} for the next run")
    return artifact


def rate(label: str, apps: int, wall: float, cpu: float) -> float:
    print(f"{label}: {apps / wall:,.0f} apps/s ({wall:.1f} s wall, {apps / cpu:,.0f} apps per CPU-second)")
    return apps / wall


def popular_from_table(artifact: ModelArtifact, k: int, popular: int, requests: int, seed: int) -> None:
    """What serving would gain by answering popular apps from the exported table: one ``/similar``
    answer (its ``Neighbor`` list) from FAISS (one thread, as serving runs) against a dict of the
    exported rows, for the ``popular`` apps with the most impressions."""
    predictor = Predictor(artifact)
    rows = np.argsort(-artifact.app_stats.set_index("app_id").reindex(artifact.app_ids)["impressions"].to_numpy(),
                      kind="stable")[:popular]
    positions, scores = predictor.similar_rows(rows, k)
    ids = artifact.app_ids
    table = {ids[row]: ([ids[p] for p in positions[i] if p >= 0], scores[i].tolist()) for i, row in enumerate(rows)}
    asked = [ids[row] for row in np.random.default_rng(seed).choice(rows, size=requests)]
    faiss.omp_set_num_threads(1)
    # CPU time of this one thread: what an answer costs a worker, whatever else the machine runs
    started = time.thread_time()
    for app_id in asked:
        predictor.similar(app_id, k)
    searched = (time.thread_time() - started) / requests
    started = time.thread_time()
    for app_id in asked:
        neighbor_ids, neighbor_scores = table[app_id]
        [Neighbor(a, s) for a, s in zip(neighbor_ids[:k], neighbor_scores[:k])]
    looked_up = (time.thread_time() - started) / requests
    print(f"popular apps ({popular:,}, {requests:,} answers), CPU per answer: FAISS {searched * 1e6:,.1f} us, from the "
          f"table {looked_up * 1e6:,.1f} us; a /similar request would save {(searched - looked_up) * 1e6:,.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-sample", type=int, default=160_000, help="apps the IVF centroids are trained on")
    parser.add_argument("--reference-queries", type=int, default=50_000)
    parser.add_argument("--popular", type=int, default=10_000, help="popular apps answered from the table (0: skip)")
    parser.add_argument("--skip-export", action="store_true", help="only the reference and the popular-apps comparison")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "appsim-bench-neighbors",
                        help="where the synthetic model is saved and reused")
    args = parser.parse_args()
    threads = os.cpu_count() or 1

    started = time.perf_counter()
    artifact = cached_artifact(args.cache, args.apps, args.dim, args.clusters, args.seed, args.train_sample)
    print(f"{args.apps:,} apps x {args.dim} dims ready in {time.perf_counter() - started:.1f} s; {threads} cores; "
          f"index {artifact.manifest['index']}; load average {os.getloadavg()[0]:.1f}")

    faiss.omp_set_num_threads(threads)
    queries = min(args.reference_queries, args.apps)
    started, cpu = time.perf_counter(), time.process_time()
    artifact.index.search(artifact.embeddings[:queries], args.k + 1)
    reference = rate(f"reference, plain FAISS batch search of {queries:,} apps (k+1={args.k + 1})", queries,
                     time.perf_counter() - started, time.process_time() - cpu)

    if args.popular:
        popular_from_table(artifact, args.k, min(args.popular, args.apps), 20_000, args.seed)
    if args.skip_export:
        return
    faiss.omp_set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        cpu = time.process_time()
        result = export(artifact, tmp, version=1, k=args.k, threads=threads)
        cpu = time.process_time() - cpu
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
    exported = rate(f"export of all {result.apps:,} apps (search + rates + Parquet, {size_mb:.0f} MB)", result.apps,
                    result.seconds, cpu)
    print(f"ratio export / plain batch search: {exported / reference:.2f}; load average {os.getloadavg()[0]:.1f}; "
          f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB (the model included)")
    print(f"goal >= 20,000 apps/s at 1M apps: {'met' if exported >= 20_000 else 'NOT met'} on the wall clock")


if __name__ == "__main__":
    main()
