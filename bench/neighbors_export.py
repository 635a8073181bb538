"""Bulk neighbour export at scale: `appsim neighbors export`'s core on N synthetic apps.

    .venv/bin/python bench/neighbors_export.py --apps 1000000 --k 10

Builds clustered unit embeddings and an index of the type and parameters TrainEmbeddings chooses
at that size (IVF with nlist = 4 sqrt(N), nprobe 16 above 100K apps; the IVF centroids trained on a
sample of ``--train-sample`` apps, which changes the build time, not the search cost), then
measures in the same run:

- the reference: a plain FAISS batch search (``index.search(embeddings[rows], k + 1)``, all cores,
  rows in app order) of ``--reference-queries`` apps, the search any export pays;
- the export of every app: search + exclusion of the query + CTR/CVR posteriors + Parquet, to a temp folder.

Prints apps/s of each and the export's ratio to the reference (the machine is shared, so the
ratio is the figure to compare across runs). Nothing here is asserted in tests.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import faiss
import numpy as np
import pandas as pd

from models.artifact import ModelArtifact
from models.index import IVF_MIN_POINTS_PER_LIST, IVF_NPROBE, choose_index_type, ivf_list_count
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
                          "conversions": conversions, "revenue": conversions * 1.5})
    return ModelArtifact(app_ids=app_ids, embeddings=embeddings, index=index, encoder={},
                         encoder_weights=np.zeros((1, dim), np.float32), app_stats=stats,
                         manifest={"index": {"type": record.get("type"), "params": record.get("params")}})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--apps", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--train-sample", type=int, default=160_000, help="apps the IVF centroids are trained on")
    parser.add_argument("--reference-queries", type=int, default=100_000)
    args = parser.parse_args()
    threads = os.cpu_count() or 1

    started = time.perf_counter()
    artifact = synthetic_artifact(args.apps, args.dim, args.clusters, args.seed, args.train_sample)
    print(f"{args.apps:,} apps x {args.dim} dims ready in {time.perf_counter() - started:.1f} s; {threads} cores")

    faiss.omp_set_num_threads(threads)
    queries = min(args.reference_queries, args.apps)
    started = time.perf_counter()
    artifact.index.search(artifact.embeddings[:queries], args.k + 1)
    reference = queries / (time.perf_counter() - started)
    print(f"reference, plain FAISS batch search of {queries:,} apps (k+1={args.k + 1}): {reference:,.0f} apps/s")

    with tempfile.TemporaryDirectory() as tmp:
        result = export(artifact, tmp, version=1, k=args.k, threads=threads)
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
    print(f"export (search + rates + Parquet, {size_mb:.0f} MB): {result.apps_per_second:,.0f} apps/s "
          f"({result.seconds:.1f} s for {result.apps:,} apps)")
    print(f"ratio export / plain batch search: {result.apps_per_second / reference:.2f}")
    print(f"goal >= 20,000 apps/s at 1M apps: {'met' if result.apps_per_second >= 20_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
