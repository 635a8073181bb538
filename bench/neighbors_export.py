"""Bulk neighbour export at scale: `appsim neighbors export`'s core on N synthetic apps.

    .venv/bin/python bench/neighbors_export.py --apps 1000000 --k 10

Builds clustered unit embeddings and the index TrainEmbeddings would build at that size (IVF above
100K apps), then measures in the same run:

- the reference: one plain FAISS batch search of every app (``index.search(embeddings, k + 1)``,
  all cores), the floor any export pays;
- the export: search + exclusion of the query + CTR/CVR posteriors + Parquet, to a temp folder.

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
from models.index import build_index
from steps.export_neighbors import export


def synthetic_artifact(apps: int, dim: int, clusters: int, seed: int) -> ModelArtifact:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    embeddings = centers[rng.integers(0, clusters, apps)] + 0.5 * rng.normal(size=(apps, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    index, record = build_index(embeddings, "auto", seed=seed)
    print(f"index: {record.get('type')} {record.get('params')} recall@10 {record.get('recall_at_10')} "
          f"built in {record.get('build_seconds', 0):.1f} s")
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
    args = parser.parse_args()
    threads = os.cpu_count() or 1

    started = time.perf_counter()
    artifact = synthetic_artifact(args.apps, args.dim, args.clusters, args.seed)
    print(f"{args.apps:,} apps x {args.dim} dims ready in {time.perf_counter() - started:.1f} s; {threads} cores")

    faiss.omp_set_num_threads(threads)
    started = time.perf_counter()
    artifact.index.search(artifact.embeddings, args.k + 1)
    reference = args.apps / (time.perf_counter() - started)
    print(f"reference, plain FAISS batch search (k+1={args.k + 1}): {reference:,.0f} apps/s")

    with tempfile.TemporaryDirectory() as tmp:
        result = export(artifact, tmp, version=1, k=args.k, threads=threads)
        size_mb = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 1e6
    print(f"export (search + rates + Parquet, {size_mb:.0f} MB): {result.apps_per_second:,.0f} apps/s "
          f"({result.seconds:.1f} s for {result.apps:,} apps)")
    print(f"ratio export / plain batch search: {result.apps_per_second / reference:.2f}")
    print(f"goal >= 20,000 apps/s at 1M apps: {'met' if result.apps_per_second >= 20_000 else 'NOT met'}")


if __name__ == "__main__":
    main()
