"""TrainEmbeddings core at scale: synthetic co-engagement of N apps / M interaction rows.

    .venv/bin/python bench/train_scale.py --apps 200000 --rows 10000000 --users 1000000 --data /tmp/train-scale-200k

Prints wall and CPU seconds per phase and the peak RSS of training alone (data generation is
measured separately; ``--data`` keeps the generated tables there as parquet and reuses them on the next
run with the same sizes): first the fit with fixed defaults (the trainer before model selection, the
reference), then what TrainEmbeddings runs (``select_params`` alone, then with the fit), as wall and CPU
ratios to the reference measured in the same run. Nothing here is asserted in tests; rerun it on the
target machine.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.embedding import EmbeddingParams, gaussian_start, single_threaded, train_embeddings
from models.index import build_index
from models.progress import Progress
from steps.train import select_params


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def synthetic(apps: int, rows: int, users: int, clusters: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    app_cluster = rng.integers(0, clusters, apps)
    words = np.array([f"word{i}" for i in range(20_000)])
    catalog = pd.DataFrame({
        "app_id": [f"app{i:07d}" for i in range(apps)],
        "category": [f"cat{c % 50}" for c in app_cluster],
        "region": rng.choice(["us", "eu", "apac"], apps),
        "pricing_model": rng.choice(["free", "freemium", "paid"], apps),
        "features": [[f"tag{(c * 7 + j) % 3000}" for j in range(4)] for c in app_cluster],
        "description": [" ".join(words[(c * 13 + np.arange(15) * 101) % 20_000]) for c in app_cluster],
        "avg_rating": rng.uniform(1, 5, apps),
    })
    order = np.argsort(app_cluster, kind="stable")
    bounds = np.searchsorted(app_cluster[order], np.arange(clusters + 1))
    user_home = rng.integers(0, clusters, users)
    user = rng.integers(0, users, rows)
    home = user_home[user]
    app = order[bounds[home] + (rng.random(rows) * (bounds[home + 1] - bounds[home])).astype(np.int64)]
    noise = rng.random(rows) < 0.2
    app[noise] = rng.integers(0, apps, int(noise.sum()))
    interactions = pd.DataFrame({
        "user_id": np.char.add("u", user.astype(str)),
        "app_id": catalog["app_id"].to_numpy()[app],
        "clicks": rng.integers(1, 4, rows),
        "conversions": (rng.random(rows) < 0.1).astype(np.int64),
        "first_ts": pd.Timestamp("2026-10-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 28 * 86_400, rows), unit="s"),
    }).drop_duplicates(["user_id", "app_id"])
    interactions["last_ts"] = interactions["first_ts"]
    return catalog, interactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=200_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--index-type", default="auto")
    parser.add_argument("--data", default="", help="folder where the generated tables are kept and reused")
    args = parser.parse_args()

    started = time.perf_counter()
    cached = Path(args.data) / f"{args.apps}-{args.rows}-{args.users}-{args.clusters}" if args.data else None
    if cached is not None and (cached / "interactions.parquet").exists():
        catalog, interactions = (pd.read_parquet(cached / name) for name in ("catalog.parquet", "interactions.parquet"))
    else:
        catalog, interactions = synthetic(args.apps, args.rows, args.users, args.clusters, seed=0)
        if cached is not None:
            cached.mkdir(parents=True, exist_ok=True)
            catalog.to_parquet(cached / "catalog.parquet")
            interactions.to_parquet(cached / "interactions.parquet")
    print(f"data: {len(catalog):,} apps, {len(interactions):,} (user, app) rows in {time.perf_counter() - started:.1f}s, "
          f"peak RSS so far {peak_rss_gb():.2f} GB", flush=True)
    # Numerics on one thread, as TrainEmbeddings runs them (models/embedding.single_threaded)
    with single_threaded():
        progress = Progress("train", every=10)
        wall, cpu = time.perf_counter(), time.process_time()
        train_embeddings(catalog, interactions, EmbeddingParams(args.dim, seed=1), progress)
        reference_wall, reference_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"train_embeddings with fixed defaults (the reference): wall {reference_wall:.1f}s, cpu {reference_cpu:.1f}s, "
              f"peak RSS {peak_rss_gb():.2f} GB", flush=True)
        # What TrainEmbeddings runs: the validation choice of family and knobs, then the fit. It draws the
        # factorisations' random start itself (the reference's is not reused).
        gaussian_start.cache_clear()
        wall, cpu = time.perf_counter(), time.process_time()
        params, selection = select_params(catalog, interactions, EmbeddingParams(args.dim, seed=1), progress)
        selection_wall, selection_cpu = time.perf_counter() - wall, time.process_time() - cpu
        trained = train_embeddings(catalog, interactions, params, progress)
        selected_wall, selected_cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"select_params: wall {selection_wall:.1f}s, cpu {selection_cpu:.1f}s ({len(selection['candidates'])} candidates, "
              f"{selection.get('validation_queries', 0)} validation queries, {selection.get('fit_pairs', 0):,} fit pairs)\n"
              f"select_params + train_embeddings: wall {selected_wall:.1f}s ({selected_wall / reference_wall:.2f}x the "
              f"reference), cpu {selected_cpu:.1f}s ({selected_cpu / reference_cpu:.2f}x), peak RSS {peak_rss_gb():.2f} GB; "
              f"chosen {selection['chosen']}", flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        _, info = build_index(trained.embeddings, args.index_type, 100_000, seed=1, progress=progress)
        print(f"build_index: wall {time.perf_counter() - wall:.1f}s, cpu {time.process_time() - cpu:.1f}s, {info}", flush=True)


if __name__ == "__main__":
    main()
