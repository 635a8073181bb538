"""A small synthetic co-engagement world for the trainer's tests, built by hand (no simulator).

Apps fall into a few clusters; each cluster has its own category, feature tags and description
words (shared with some noise). Users have a home cluster and engage mostly with its apps,
popular apps more often (Zipf), with a few clicks outside it. Some apps of every cluster never
appear in the interactions: the cold apps.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from models import dataset, storage

CATEGORIES = ("puzzle", "finance", "fitness", "travel")
TAGS = {
    "puzzle": ["match3", "levels", "hints", "offline", "daily-challenge"],
    "finance": ["budgeting", "bank-sync", "charts", "alerts", "crypto"],
    "fitness": ["workouts", "step-counter", "heart-rate", "coaching", "plans"],
    "travel": ["maps", "offline", "booking", "itinerary", "reviews"],
}
WORDS = {
    "puzzle": "puzzle brain tiles colorful relaxing logic match solve",
    "finance": "money budget savings expenses invest account banking spend",
    "fitness": "workout training health exercise running muscle cardio yoga",
    "travel": "trip flights hotels explore journey vacation destinations guide",
}
COMMON_WORDS = "best free simple easy great fast modern daily"
WINDOW_START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_world(warm_per_cluster: int = 30, cold_per_cluster: int = 5, users: int = 400, seed: int = 7
               ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(catalog, train interactions, app stats); app ids look like ``puzzle-012`` (cluster-index)."""
    rng = np.random.default_rng(seed)
    rows = []
    for category in CATEGORIES:
        for i in range(warm_per_cluster + cold_per_cluster):
            tags = list(rng.choice(TAGS[category], size=3, replace=False))
            words = list(rng.choice(WORDS[category].split(), size=4, replace=False))
            words += list(rng.choice(COMMON_WORDS.split(), size=2, replace=False))
            rows.append({
                "app_id": f"{category}-{i:03d}",
                "name": f"{category.title()} {i}",
                "category": category,
                "region": str(rng.choice(["us", "eu", "apac"])),
                "pricing_model": str(rng.choice(["free", "freemium", "paid"])),
                "features": tags,
                "description": " ".join(words),
                "avg_rating": float(np.round(rng.uniform(2.5, 5.0), 1)),
            })
    catalog = pd.DataFrame(rows)

    interactions = []
    popularity = 1.0 / np.arange(1, warm_per_cluster + 1) ** 0.8
    popularity /= popularity.sum()
    for user in range(users):
        home = CATEGORIES[user % len(CATEGORIES)]
        picks = {f"{home}-{i:03d}" for i in rng.choice(warm_per_cluster, size=min(6, warm_per_cluster), replace=False, p=popularity)}
        if rng.random() < 0.3:  # an occasional click outside the home cluster
            other = CATEGORIES[int(rng.integers(len(CATEGORIES)))]
            picks.add(f"{other}-{int(rng.integers(warm_per_cluster)):03d}")
        for app_id in sorted(picks):
            first = WINDOW_START + timedelta(hours=int(rng.integers(0, 500)))
            interactions.append({
                "user_id": f"u{user:05d}",
                "app_id": app_id,
                "clicks": int(rng.integers(1, 4)),
                "conversions": int(rng.random() < 0.2),
                "first_ts": first,
                "last_ts": first + timedelta(hours=int(rng.integers(0, 48))),
            })
    train = pd.DataFrame(interactions, columns=list(dataset.INTERACTION_COLUMNS))

    per_app = train.groupby("app_id").agg(clicks=("clicks", "sum"), conversions=("conversions", "sum")).reset_index()
    per_app["impressions"] = per_app["clicks"] * 20
    per_app["revenue"] = per_app["conversions"] * 1.5
    per_app["ctr"] = (per_app["clicks"] + 1) / (per_app["impressions"] + 20)
    per_app["cvr"] = (per_app["conversions"] + 1) / (per_app["clicks"] + 10)
    stats = per_app.loc[:, list(dataset.APP_STATS_COLUMNS)]
    return catalog, train, stats


def write_world(root: Path, **kwargs: int) -> tuple[str, str]:
    """Write a prepared folder and a catalog folder under ``root``; returns (prepared_uri, catalog_uri)."""
    catalog, train, stats = make_world(**kwargs)
    prepared_uri = storage.normalize(root / "prepared")
    catalog_uri = storage.normalize(root / "catalog")
    dataset.write_table(train, prepared_uri, dataset.TRAIN_INTERACTIONS)
    dataset.write_table(stats, prepared_uri, dataset.TRAIN_APP_STATS)
    storage.write_json(storage.join(prepared_uri, dataset.MANIFEST), {
        "window": {"start": WINDOW_START.isoformat(), "end": (WINDOW_START + timedelta(days=28)).isoformat()},
        "counts": {"events_by_type": {"click": int(train["clicks"].sum()), "conversion": int(train["conversions"].sum())}},
    })
    dataset.write_table(catalog, catalog_uri, "apps.parquet")
    return prepared_uri, catalog_uri


def cluster_of(app_id: str) -> str:
    return app_id.split("-", 1)[0]
