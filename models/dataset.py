"""The prepared-data contract between PrepareFeedback and the steps that read its output.

A prepared folder holds co-engagement interactions aggregated per (user, app) for the train
and holdout parts of the window (time split), per-app performance statistics for each part,
the quarantine and a manifest. Columns are fixed here so that prepare, train and evaluate
cannot drift apart.
"""

from __future__ import annotations

import pandas as pd

from models import storage

TRAIN_INTERACTIONS = "train_interactions.parquet"
HOLDOUT_INTERACTIONS = "holdout_interactions.parquet"
TRAIN_APP_STATS = "app_stats.parquet"
HOLDOUT_APP_STATS = "holdout_app_stats.parquet"
QUARANTINE = "quarantine/quarantine.jsonl.gz"
KEPT = "kept/kept.jsonl.gz"  # valid events kept but not trained on (cold-start queries, apps not in the catalog)
MANIFEST = "manifest.json"

# One row per (user_id, app_id) with at least one positive (click or conversion) in the part.
INTERACTION_COLUMNS = ("user_id", "app_id", "clicks", "conversions", "first_ts", "last_ts")
# One row per app seen in the part; ctr/cvr are smoothed rates (see steps/prepare.py).
APP_STATS_COLUMNS = ("app_id", "impressions", "clicks", "conversions", "revenue", "ctr", "cvr")


def read_table(prepared_uri: str, name: str) -> pd.DataFrame:
    uri = storage.join(prepared_uri, name)
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri} is missing: run PrepareFeedback first (appsim retrain runs it)")
    with storage.open_uri(uri, "rb") as handle:
        return pd.read_parquet(handle)


def write_table(frame: pd.DataFrame, prepared_uri: str, name: str) -> str:
    uri = storage.join(prepared_uri, name)
    with storage.open_uri(uri, "wb") as handle:
        frame.to_parquet(handle, index=False)
    return uri
