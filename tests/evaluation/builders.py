"""Small hand-built artifacts and prepared folders for the evaluation, predictor and evaluate-step tests.

Apps fall into clusters; users engage with apps of one cluster, and each cluster has its own
CTR. A "clustered" model embeds apps near their cluster's centre (it knows the structure), a
"random" one does not.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import faiss
import numpy as np
import pandas as pd

from models import dataset
from models.artifact import ModelArtifact

N_CLUSTERS = 5
APPS_PER_CLUSTER = 8
DIM = 16


def app_ids(n_clusters: int = N_CLUSTERS, per_cluster: int = APPS_PER_CLUSTER) -> list[str]:
    return [f"app-{c}-{i}" for c in range(n_clusters) for i in range(per_cluster)]


def cluster_of(app_id: str) -> int:
    return int(app_id.split("-")[1])


def cluster_ctr(cluster: int) -> float:
    return 0.02 * (cluster + 1)


def normalized(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered_embeddings(ids: list[str], seed: int = 0, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, DIM))
    return normalized(np.stack([centres[cluster_of(a)] for a in ids]) + noise * rng.normal(size=(len(ids), DIM)))


def random_embeddings(ids: list[str], seed: int = 1) -> np.ndarray:
    return normalized(np.random.default_rng(seed).normal(size=(len(ids), DIM)))


def app_stats(ids: list[str], impressions: int = 1000) -> pd.DataFrame:
    rows = []
    for app_id in ids:
        ctr = cluster_ctr(cluster_of(app_id))
        clicks = int(round(impressions * ctr))
        conversions = clicks // 4
        rows.append({"app_id": app_id, "impressions": impressions, "clicks": clicks, "conversions": conversions,
                     "revenue": float(conversions), "ctr": ctr, "cvr": conversions / max(clicks, 1)})
    return pd.DataFrame(rows, columns=list(dataset.APP_STATS_COLUMNS))


def make_artifact(ids: list[str], embeddings: np.ndarray, stats: pd.DataFrame | None = None) -> ModelArtifact:
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(embeddings)
    return ModelArtifact(
        app_ids=list(ids),
        embeddings=embeddings,
        index=index,
        encoder={},  # the metadata encoder is not exercised by these tests
        encoder_weights=np.zeros((0, embeddings.shape[1]), dtype=np.float32),
        app_stats=app_stats(ids) if stats is None else stats,
        manifest={"seed": 0},
    )


def interactions(ids: list[str], n_users: int, apps_per_user: int, seed: int, user_prefix: str) -> pd.DataFrame:
    """Each user clicks ``apps_per_user`` apps of one cluster."""
    rng = np.random.default_rng(seed)
    by_cluster = {c: [a for a in ids if cluster_of(a) == c] for c in range(N_CLUSTERS)}
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = []
    for u in range(n_users):
        cluster = int(rng.integers(N_CLUSTERS))
        for app_id in rng.choice(by_cluster[cluster], size=apps_per_user, replace=False):
            rows.append({"user_id": f"{user_prefix}{u}", "app_id": str(app_id), "clicks": 1, "conversions": 0,
                         "first_ts": start, "last_ts": start + timedelta(hours=1)})
    return pd.DataFrame(rows, columns=list(dataset.INTERACTION_COLUMNS))


def write_prepared(prepared_uri: str, ids: list[str], n_users: int = 60, seed: int = 0) -> None:
    """A prepared folder: train and holdout interactions and app statistics."""
    dataset.write_table(interactions(ids, n_users, 3, seed, "train-u"), prepared_uri, dataset.TRAIN_INTERACTIONS)
    dataset.write_table(interactions(ids, n_users, 3, seed + 1, "holdout-u"), prepared_uri, dataset.HOLDOUT_INTERACTIONS)
    dataset.write_table(app_stats(ids), prepared_uri, dataset.TRAIN_APP_STATS)
    dataset.write_table(app_stats(ids, impressions=500), prepared_uri, dataset.HOLDOUT_APP_STATS)
