"""A seeded synthetic marketplace: app catalog, users, campaigns and weeks of feedback events.

``appsim simulate`` gives the embedded mode data to learn from, with known answers:

- apps sit at latent positions (a mixture of category clusters and genre sub-clusters in 16-d);
  the catalog's category, region, pricing model, features and description are derived from those
  positions, informative but noisy (some apps mislabelled, features sampled);
- users have latent tastes near one or two clusters and activity that varies a lot; ads are
  targeted at the user's clusters most of the time, popular apps (Zipf-like) are shown more, and
  whether an impression is clicked (and converts) depends on user-app affinity, so co-engagement
  carries the latent similarity and a co-engagement model can beat popularity;
- serving's prediction log and the recommendation-attributed clicks that follow it;
- optional input drift (``drift_days``): over the last days the apps of ``DRIFT_CATEGORIES``
  categories become ``DRIFT_BOOST`` times as popular, so the query and impression mix shifts
  (what ``appsim drift check`` must catch);
- faults at ``fault_rate`` (duplicates, truncated JSON, missing or mistyped fields, unknown event
  types, unknown app ids, late arrivals), each recorded with its file and line so tests can check
  that prepare quarantines exactly these, with the right reason.

Events are written as gzip JSON lines in Firehose's layout (``feedback/YYYY/MM/DD/HH/``, the hour of
arrival), one hour at a time, so memory stays flat however many events are generated. The same
seed and parameters give byte-identical files. The data covers ``[end - days, end)``: run prepare
with ``window_end = end`` and ``window_days = days``.
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import faiss
import numpy as np
import orjson
import pandas as pd

from models import layout, storage
from models.events import SCHEMA_VERSION
from models.progress import Progress

DEFAULT_END = "2026-11-02T00:00:00Z"

LATENT_DIM = 16
GENRES_PER_CATEGORY = 4
GENRE_SPREAD = 0.5          # genre centre offset from its category centre (category centre has norm 1)
APP_SPREAD = 0.5            # app offset from its genre centre
TASTE_SPREAD = 0.4          # user taste offset from the apps it is anchored on
MISLABEL_FRACTION = 0.08    # apps whose catalog category is a random one
POPULARITY_EXPONENT = 0.9   # Zipf-like exposure: weight ~ 1 / (rank + 5) ** exponent
TARGETED_FRACTION = 0.75    # impressions targeted at one of the user's clusters; the rest by popularity
SECOND_CLUSTER_FRACTION = 0.35
CLICK_BIAS, CLICK_SLOPE = -5.0, 6.5             # P(click) = sigmoid(bias + slope * cos(user, app))
CONVERSION_BIAS, CONVERSION_SLOPE = -3.0, 2.5   # P(convert | click), same form
CONVERSION_DELAY_MEAN_S = 45 * 60
PREDICTIONS_PER_IMPRESSION = 0.05  # serving requests per ad impression; each leads to one attributed impression
NEIGHBORS_PER_PREDICTION = 10
TRUE_NEIGHBORS = 20
ARMS = (("champion", 1, 0.9, 0.35), ("challenger", 2, 0.1, 0.2))  # name, model version, share, noise
DRIFT_CATEGORIES = 3        # drift mode: categories whose apps become more popular
DRIFT_BOOST = 6.0

# Hourly traffic shape (UTC), so hour folders differ in size as real ones do.
DIURNAL = np.array([3, 2, 2, 2, 2, 3, 4, 5, 6, 6, 6, 6, 7, 7, 7, 7, 7, 8, 8, 8, 7, 6, 5, 4], dtype=float)
DIURNAL /= DIURNAL.sum()

FAULT_KINDS = ("duplicate", "late", "malformed_json", "missing_field", "invalid_field",
               "unknown_event_type", "unknown_app_id")
FAULT_WEIGHTS = np.array([0.25, 0.2, 0.12, 0.12, 0.12, 0.04, 0.15])
# What prepare must do with each kind: the quarantine reason (or, for KEPT_FAULTS, the kept reason: a valid
# event for an app not yet in the catalog is kept, not bad), or None when the line is used as is
# (a late event is valid and used; a duplicate delivery is dropped and counted as a duplicate).
FAULT_REASON: dict[str, str | None] = {
    "duplicate": None, "late": None, "malformed_json": "malformed_json", "missing_field": "missing_field",
    "invalid_field": "invalid_field", "unknown_event_type": "unknown_event_type", "unknown_app_id": "app_not_in_catalog",
}
KEPT_FAULTS = ("unknown_app_id",)
# Fields a producer bug can drop (never event_type: its absence reads as an unknown event type).
REQUIRED_FIELDS = {
    "click": ("event_id", "ts", "app_id", "campaign_id", "partner_id", "user_id", "clicked"),
    "conversion": ("event_id", "ts", "app_id", "campaign_id", "user_id", "converted"),
    "prediction": ("event_id", "ts", "request_id", "app_id", "model_version", "arm", "neighbors"),
}
# Values of the wrong JSON type that a producer bug might send.
MISTYPED_VALUES = {
    "click": (("clicked", "yes"), ("clicked", 1), ("user_id", 12345), ("ts", 1793577600)),
    "conversion": (("converted", "true"), ("revenue", "4.99"), ("ts", "yesterday")),
    "prediction": (("model_version", "3"), ("neighbors", "app-1,app-2"), ("scores", "high")),
}

CATEGORIES = (
    ("Action Games", ("Blaster", "Strike", "Raiders"), ("arena combat", "boss battles", "shooter missions", "platform runs")),
    ("Puzzle Games", ("Match", "Blocks", "Riddle"), ("match-three levels", "logic grids", "word puzzles", "brain teasers")),
    ("Casual Games", ("Pop", "Tap", "Idle"), ("idle tycoon", "merge play", "hyper-casual taps", "pet care")),
    ("Strategy Games", ("Empire", "Tactics", "Kingdom"), ("base building", "card battles", "tower defense", "war strategy")),
    ("Sports", ("League", "Goal", "Court"), ("football scores", "fantasy teams", "golf swings", "racing")),
    ("Finance", ("Wallet", "Budget", "Invest"), ("stock trading", "budget planning", "crypto tracking", "mobile banking")),
    ("Shopping", ("Cart", "Deals", "Market"), ("fashion deals", "grocery delivery", "second-hand market", "coupons")),
    ("Health & Fitness", ("Fit", "Pulse", "Move"), ("home workouts", "running plans", "meditation", "diet tracking")),
    ("Education", ("Learn", "Study", "Tutor"), ("language lessons", "math practice", "exam prep", "kids learning")),
    ("Travel", ("Trip", "Voyage", "Stay"), ("flight search", "hotel booking", "trip planning", "city guides")),
    ("Food & Drink", ("Chef", "Bites", "Menu"), ("recipe ideas", "food delivery", "restaurant reviews", "meal kits")),
    ("Music", ("Beat", "Tune", "Sound"), ("music streaming", "karaoke", "radio", "music making")),
    ("Photo & Video", ("Snap", "Lens", "Frame"), ("photo editing", "video editing", "collage making", "camera effects")),
    ("Social", ("Chat", "Circle", "Meet"), ("group chat", "dating", "short videos", "community forums")),
    ("Productivity", ("Task", "Note", "Focus"), ("note taking", "task lists", "document scanning", "calendar planning")),
    ("News", ("Daily", "Brief", "Herald"), ("breaking news", "local news", "tech news", "business news")),
    ("Entertainment", ("Stream", "Show", "Fun"), ("movie streaming", "live shows", "comics", "celebrity gossip")),
    ("Lifestyle", ("Home", "Style", "Zen"), ("home decor", "astrology", "fashion tips", "gardening")),
    ("Navigation", ("Route", "Map", "Ride"), ("offline maps", "ride hailing", "transit times", "parking")),
    ("Utilities", ("Clean", "Boost", "Guard"), ("phone cleaning", "vpn", "battery saving", "file management")),
)
ADJECTIVES = ("Super", "Happy", "Smart", "Epic", "Pocket", "Daily", "Magic", "Swift", "Bright", "Mighty",
              "Tiny", "Golden", "Urban", "Cosmic", "Lucky", "Clever")
NAME_SUFFIXES = ("", "", "", " Pro", " Plus", " Go", " HD", " Lite", " 2", " World")
FEATURES = (
    "offline mode", "multiplayer", "leaderboards", "daily rewards", "in-app purchases", "ad-free option",
    "cloud sync", "dark mode", "widgets", "push notifications", "social sharing", "voice control",
    "ar camera", "video streaming", "live chat", "price alerts", "budget tracking", "step counter",
    "workout plans", "meal planner", "flashcards", "quizzes", "maps", "turn-by-turn directions",
    "playlists", "podcasts", "photo filters", "video editor", "stickers", "group chat", "calendar sync",
    "to-do lists", "news alerts", "recipes", "wearable sync", "family sharing", "tournaments", "guilds",
    "level editor", "achievements",
)
REGIONS = ("NA", "EU", "LATAM", "APAC", "MEA")
PRICING_MODELS = ("free", "freemium", "paid", "subscription")
PRICING_BIAS = np.array([1.0, 1.2, -0.8, -0.3])
PRICE_POINTS = {"paid": (0.99, 1.99, 2.99, 4.99, 9.99), "subscription": (2.99, 4.99, 7.99, 9.99, 14.99)}


class SimulationError(ValueError):
    """Simulation parameters or a target store that cannot be used."""


@dataclass(frozen=True)
class SimulationParameters:
    apps: int
    users: int
    days: int
    events_per_day: int
    seed: int
    fault_rate: float
    end: datetime
    drift_days: int = 0

    def validate(self) -> None:
        if self.apps < 2 or self.users < 1 or self.days < 1 or self.events_per_day < 1:
            raise SimulationError(
                f"apps ({self.apps}) must be >= 2 and users ({self.users}), days ({self.days}) and "
                f"events_per_day ({self.events_per_day}) >= 1"
            )
        if not 0 <= self.drift_days <= self.days:
            raise SimulationError(f"drift_days ({self.drift_days}) must be between 0 and days ({self.days})")
        if not 0 <= self.fault_rate < 0.5:
            raise SimulationError(f"fault_rate {self.fault_rate} must be in [0, 0.5), e.g. 0.02")
        if self.end.tzinfo is None or self.end.utcoffset() != timedelta(0):
            raise SimulationError(f"end {self.end} must be a UTC time, e.g. {DEFAULT_END}")
        if self.end.minute or self.end.second or self.end.microsecond:
            raise SimulationError(f"end {self.end.isoformat()} must be on a whole hour, e.g. {DEFAULT_END}")

    @property
    def start(self) -> datetime:
        return self.end - timedelta(days=self.days)


@dataclass(frozen=True)
class World:
    """The hidden truth the events are drawn from: latent positions, popularity, users, campaigns."""

    app_ids: np.ndarray             # str, row i is app i
    positions: np.ndarray           # float32 (apps, LATENT_DIM), L2-normalised
    cluster: np.ndarray             # int, the app's category cluster
    genre: np.ndarray               # int, genre index within the cluster
    popularity: np.ndarray          # float64, sums to 1
    user_ids: np.ndarray            # str
    tastes: np.ndarray              # float32 (users, LATENT_DIM), L2-normalised
    user_clusters: np.ndarray       # int (users, 2): primary and secondary cluster
    user_primary_weight: np.ndarray  # P(targeted impression uses the primary cluster)
    user_activity_cdf: np.ndarray
    app_popularity_cdf: np.ndarray
    cluster_app_order: np.ndarray   # app indices sorted by cluster
    cluster_cdf_keys: np.ndarray    # cluster + within-cluster popularity cdf, aligned with cluster_app_order
    partner_ids: np.ndarray
    campaign_ids: np.ndarray
    campaign_partner: np.ndarray    # int, partner of each campaign
    app_first_campaign: np.ndarray  # campaigns of app a are app_first_campaign[a] + range(app_campaign_count[a])
    app_campaign_count: np.ndarray
    app_payout: np.ndarray          # mean revenue per conversion


def drifted_world(world: World, seed: int) -> tuple[World, list[str]]:
    """Input drift: the apps of ``DRIFT_CATEGORIES`` categories (picked by the seed) become
    ``DRIFT_BOOST`` times as popular; returns the drifted world and those categories."""
    clusters = np.random.default_rng([seed, 4]).choice(len(CATEGORIES), DRIFT_CATEGORIES, replace=False)
    popularity = world.popularity * np.where(np.isin(world.cluster, clusters), DRIFT_BOOST, 1.0)
    popularity /= popularity.sum()
    drifted = replace(world, popularity=popularity, app_popularity_cdf=np.cumsum(popularity))
    return drifted, [CATEGORIES[c][0] for c in sorted(clusters)]


def _normalize(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _sample_cdf(cdf: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), len(cdf) - 1)


def make_world(apps: int, users: int, seed: int) -> World:
    """The latent marketplace for a seed (pure, deterministic)."""
    rng = np.random.default_rng([seed, 0])
    n_clusters = len(CATEGORIES)
    centers = _normalize(rng.standard_normal((n_clusters, LATENT_DIM)))
    genre_centers = centers[:, None, :] + GENRE_SPREAD * rng.standard_normal(
        (n_clusters, GENRES_PER_CATEGORY, LATENT_DIM)) / np.sqrt(LATENT_DIM)

    cluster_share = rng.dirichlet(np.full(n_clusters, 3.0))
    cluster = rng.choice(n_clusters, size=apps, p=cluster_share)
    genre = rng.integers(0, GENRES_PER_CATEGORY, size=apps)
    positions = _normalize(genre_centers[cluster, genre]
                           + APP_SPREAD * rng.standard_normal((apps, LATENT_DIM)) / np.sqrt(LATENT_DIM))

    rank = rng.permutation(apps)
    popularity = 1.0 / (rank + 5.0) ** POPULARITY_EXPONENT
    popularity /= popularity.sum()

    order = np.argsort(cluster, kind="stable")
    sorted_cluster = cluster[order]
    sorted_pop = popularity[order]
    totals = np.bincount(sorted_cluster, weights=sorted_pop, minlength=n_clusters)
    within = np.empty(apps)
    for k in np.unique(sorted_cluster):
        rows = np.flatnonzero(sorted_cluster == k)
        within[rows] = np.cumsum(sorted_pop[rows]) / totals[k]
        within[rows[-1]] = 1.0  # exact, so a draw for cluster k can never land in cluster k + 1

    # Users: tastes anchored on one app of their primary cluster and, for some, one of a second.
    counts = np.bincount(cluster, minlength=n_clusters)
    user_clusters = rng.choice(n_clusters, size=(users, 2), p=counts / apps)
    single = rng.random(users) >= SECOND_CLUSTER_FRACTION
    user_clusters[single, 1] = user_clusters[single, 0]
    primary_weight = np.where(single, 1.0, rng.uniform(0.55, 0.8, users))
    anchors = np.empty((users, 2), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for column in range(2):
        k = user_clusters[:, column]
        anchors[:, column] = order[starts[k] + rng.integers(0, counts[k])]
    tastes = _normalize(primary_weight[:, None] * positions[anchors[:, 0]]
                        + (1 - primary_weight[:, None]) * positions[anchors[:, 1]]
                        + TASTE_SPREAD * rng.standard_normal((users, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    activity = rng.lognormal(0.0, 1.0, users)

    # Partners run campaigns; every app has at least one, popular apps more.
    n_partners = max(3, apps // 25)
    campaign_count = 1 + rng.poisson(3.0 * popularity * apps / (1.0 + popularity * apps))
    first_campaign = np.concatenate([[0], np.cumsum(campaign_count)[:-1]])
    n_campaigns = int(campaign_count.sum())
    app_width, user_width, campaign_width = max(6, len(str(apps))), max(7, len(str(users))), max(6, len(str(n_campaigns)))
    return World(
        app_ids=np.array([f"app-{i:0{app_width}d}" for i in range(apps)]),
        positions=positions.astype(np.float32),
        cluster=cluster,
        genre=genre,
        popularity=popularity,
        user_ids=np.array([f"user-{i:0{user_width}d}" for i in range(users)]),
        tastes=tastes.astype(np.float32),
        user_clusters=user_clusters,
        user_primary_weight=primary_weight,
        user_activity_cdf=np.cumsum(activity),
        app_popularity_cdf=np.cumsum(popularity),
        cluster_app_order=order,
        cluster_cdf_keys=sorted_cluster + within,
        partner_ids=np.array([f"partner-{i:03d}" for i in range(n_partners)]),
        campaign_ids=np.array([f"cmp-{i:0{campaign_width}d}" for i in range(n_campaigns)]),
        campaign_partner=rng.integers(0, n_partners, n_campaigns),
        app_first_campaign=first_campaign,
        app_campaign_count=campaign_count,
        app_payout=rng.lognormal(0.3, 0.5, apps),
    )


def make_catalog(world: World, seed: int) -> pd.DataFrame:
    """The catalog snapshot: metadata derived from latent positions, informative but noisy."""
    rng = np.random.default_rng([seed, 1])
    apps = len(world.app_ids)
    n_clusters = len(CATEGORIES)
    positions = world.positions.astype(np.float64)

    def noisy_argmax(logits: np.ndarray) -> np.ndarray:
        return np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)

    label = np.where(rng.random(apps) < MISLABEL_FRACTION, rng.integers(0, n_clusters, apps), world.cluster)
    region = noisy_argmax(6.0 * positions @ _normalize(rng.standard_normal((len(REGIONS), LATENT_DIM))).T)
    pricing = noisy_argmax(4.0 * positions @ _normalize(rng.standard_normal((len(PRICING_MODELS), LATENT_DIM))).T
                           + PRICING_BIAS)
    feature_scores = 8.0 * positions @ _normalize(rng.standard_normal((len(FEATURES), LATENT_DIM))).T
    feature_scores += rng.gumbel(size=feature_scores.shape)
    n_features = rng.integers(3, 8, apps)
    top_features = np.argsort(-feature_scores, axis=1, kind="stable")

    adjective = rng.integers(0, len(ADJECTIVES), apps)
    noun = rng.integers(0, 3, apps)
    suffix = rng.integers(0, len(NAME_SUFFIXES), apps)
    quality = rng.standard_normal(apps)
    rating = np.clip(np.round(4.0 + 0.35 * quality + 0.15 * rng.standard_normal(apps), 1), 1.0, 5.0)
    size_mb = np.round(rng.lognormal(4.0, 0.8, apps), 1)
    price_choice = rng.integers(0, 5, apps)

    rows: dict[str, list[Any]] = defaultdict(list)
    for i in range(apps):
        true_name, nouns, keywords = CATEGORIES[world.cluster[i]]
        pricing_model = PRICING_MODELS[pricing[i]]
        features = [FEATURES[j] for j in top_features[i, : n_features[i]]]
        name = f"{ADJECTIVES[adjective[i]]} {nouns[noun[i]]}{NAME_SUFFIXES[suffix[i]]}"
        # The description speaks of the app's true genre, so it stays informative when the label is wrong.
        rows["name"].append(name)
        rows["category"].append(CATEGORIES[label[i]][0])
        rows["region"].append(REGIONS[region[i]])
        rows["pricing_model"].append(pricing_model)
        rows["features"].append(features)
        rows["description"].append(
            f"{name} is a {pricing_model} {true_name.lower()} app for {keywords[world.genre[i]]}. "
            f"Highlights: {', '.join(features)}."
        )
        rows["price"].append(PRICE_POINTS[pricing_model][price_choice[i]] if pricing_model in PRICE_POINTS else 0.0)
    return pd.DataFrame({
        "app_id": world.app_ids,
        "name": rows["name"],
        "category": rows["category"],
        "region": rows["region"],
        "pricing_model": rows["pricing_model"],
        "features": rows["features"],
        "description": rows["description"],
        "avg_rating": rating,
        "size_mb": size_mb,
        "price": np.asarray(rows["price"], dtype=np.float64),
    })


def nearest_neighbors(positions: np.ndarray, k: int = TRUE_NEIGHBORS) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k cosine neighbours of every row (itself excluded): (indices, similarities), best first.

    Exact search (FAISS IndexFlatIP) costs O(apps^2): about a second at 10K apps, minutes at 100K+.
    """
    apps = len(positions)
    k = min(k, apps - 1)
    index = faiss.IndexFlatIP(positions.shape[1])
    index.add(np.ascontiguousarray(positions, dtype=np.float32))
    similarities, indices = index.search(index.reconstruct_n(0, apps), k + 1)
    # Drop each row's own entry (the last one in the rare row where a tie pushed it out of the top k + 1).
    keep = np.argsort(indices == np.arange(apps)[:, None], axis=1, kind="stable")[:, :k]
    return np.take_along_axis(indices, keep, axis=1), np.take_along_axis(similarities, keep, axis=1)


def neighbors_table(app_ids: np.ndarray, indices: np.ndarray, similarities: np.ndarray) -> pd.DataFrame:
    """The ground-truth neighbours as rows (app_id, neighbor_id, rank, similarity)."""
    apps, k = indices.shape
    return pd.DataFrame({
        "app_id": np.repeat(app_ids, k),
        "neighbor_id": app_ids[indices.ravel()],
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), apps),
        "similarity": similarities.ravel().astype(np.float32),
    })


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _iso(timestamps_us: np.ndarray) -> list[str]:
    text = np.datetime_as_string(timestamps_us.astype("datetime64[us]"), unit="us")
    return [t + "Z" for t in text.tolist()]


def _json_line(event: dict) -> str:
    # orjson's bytes keep a 4 KB allocation each; the decoded str is exact-size (a 15x smaller buffer).
    return orjson.dumps(event).decode()


@dataclass
class _PendingLine:
    arrival_us: int
    line: str
    fault: tuple[str, str, str] | None  # (kind, event_id, event_type)


class _HourGenerator:
    """Draws one hour of events (predictions, impressions, conversions)."""

    def __init__(self, world: World, true_top: np.ndarray, end_us: int):
        self.world = world
        self.true_top = true_top  # (apps, >= NEIGHBORS_PER_PREDICTION) neighbour indices, best first
        self.end_us = end_us

    def _targeted_apps(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        w = self.world
        use_primary = rng.random(len(users)) < w.user_primary_weight[users]
        clusters = np.where(use_primary, w.user_clusters[users, 0], w.user_clusters[users, 1])
        keys = clusters + rng.random(len(users))
        slots = np.minimum(np.searchsorted(w.cluster_cdf_keys, keys, side="right"), len(w.cluster_app_order) - 1)
        return w.cluster_app_order[slots]

    def generate(self, hour_start_us: int, n_impressions: int, rng: np.random.Generator,
                 tag: str) -> tuple["_HourEvents", Counter]:
        """Events of one hour (with their timestamps, microseconds since the epoch) and their counts."""
        w = self.world
        hour_us = 3_600_000_000
        n_predictions = int(rng.binomial(n_impressions, PREDICTIONS_PER_IMPRESSION))
        n_organic = n_impressions - n_predictions

        # Serving's prediction log; each request leads to one impression of one of its neighbours.
        pred_ts = hour_start_us + np.sort(rng.integers(0, hour_us, n_predictions))
        query = _sample_cdf(w.app_popularity_cdf, rng, n_predictions)
        arm = rng.choice(len(ARMS), size=n_predictions, p=[a[2] for a in ARMS])
        noise = np.array([a[3] for a in ARMS])[arm]
        shown = self.true_top[query][:, :NEIGHBORS_PER_PREDICTION].copy()
        replaced = rng.random(shown.shape) < noise[:, None]
        shown[replaced] = rng.integers(0, len(w.app_ids), int(replaced.sum()))
        scores = np.round(np.sort(rng.uniform(0.3, 0.95, shown.shape), axis=1)[:, ::-1], 4)
        predicted_ctr = np.round(rng.uniform(0.01, 0.2, n_predictions), 4)
        request_ids = [f"req-{tag}-{i:06d}" for i in range(n_predictions)]
        partners = rng.integers(0, len(w.partner_ids), n_predictions)

        # Impressions: organic (targeted or by popularity) then recommendation-attributed.
        users = _sample_cdf(w.user_activity_cdf, rng, n_impressions)
        targeted = rng.random(n_organic) < TARGETED_FRACTION
        organic_apps = np.where(targeted, self._targeted_apps(users[:n_organic], rng),
                                _sample_cdf(w.app_popularity_cdf, rng, n_organic))
        rank_weights = 1.0 / np.arange(1, NEIGHBORS_PER_PREDICTION + 1)
        picked_rank = rng.choice(NEIGHBORS_PER_PREDICTION, size=n_predictions, p=rank_weights / rank_weights.sum())
        apps = np.concatenate([organic_apps, shown[np.arange(n_predictions), picked_rank]])
        imp_ts = np.concatenate([
            hour_start_us + rng.integers(0, hour_us, n_organic),
            np.minimum(pred_ts + rng.integers(1_000_000, 120_000_000, n_predictions), hour_start_us + hour_us - 1),
        ])
        attributed = np.arange(n_impressions) >= n_organic
        campaigns = w.app_first_campaign[apps] + (rng.random(n_impressions) * w.app_campaign_count[apps]).astype(np.int64)
        affinity = np.einsum("ij,ij->i", w.tastes[users], w.positions[apps]).astype(np.float64)
        clicked = rng.random(n_impressions) < _sigmoid(CLICK_BIAS + CLICK_SLOPE * affinity)
        converted = clicked & (rng.random(n_impressions) < _sigmoid(CONVERSION_BIAS + CONVERSION_SLOPE * affinity))
        conv_ts = imp_ts + (rng.exponential(CONVERSION_DELAY_MEAN_S, n_impressions) * 1e6).astype(np.int64) + 1
        converted &= conv_ts < self.end_us
        revenue = np.round(w.app_payout[apps] * rng.lognormal(0.0, 0.3, n_impressions), 2)

        conversions = np.flatnonzero(converted)
        request_ids = np.array(request_ids, dtype=object)
        impression_request = np.concatenate([np.full(n_organic, None, dtype=object), request_ids])
        events = _HourEvents(
            tag=tag, pred_ts_text=_iso(pred_ts), request_ids=request_ids,
            pred_partner_ids=w.partner_ids[partners], query_ids=w.app_ids[query],
            arm_names=np.array([a[0] for a in ARMS])[arm], model_versions=np.array([a[1] for a in ARMS])[arm],
            shown_ids=w.app_ids[shown], scores=scores, predicted_ctr=predicted_ctr,
            imp_ts_text=_iso(imp_ts), app_ids=w.app_ids[apps], campaign_ids=w.campaign_ids[campaigns],
            partner_ids=w.partner_ids[w.campaign_partner[campaigns]], user_ids=w.user_ids[users], clicked=clicked,
            impression_request=impression_request, conversions=conversions,
            conv_ts_text=_iso(conv_ts[conversions]), revenue=revenue[conversions],
            timestamps=np.concatenate([pred_ts, imp_ts, conv_ts[conversions]]),
        )
        counts = Counter(prediction=n_predictions, click=n_impressions, conversion=len(conversions),
                         clicked=int(clicked.sum()), attributed_clicks=int((clicked & attributed).sum()))
        return events, counts


@dataclass(frozen=True)
class _HourEvents:
    """One hour's events as columns, in delivery order: predictions, impressions (click events), conversions.

    ``lines()`` writes every event's JSON line at once; ``event(i)`` is event ``i`` as the dict the
    producers serialise (what a fault breaks), and its ``_json_line`` is exactly ``lines()[i]`` (tested).
    """

    tag: str
    pred_ts_text: list[str]
    request_ids: np.ndarray          # object: str
    pred_partner_ids: np.ndarray
    query_ids: np.ndarray
    arm_names: np.ndarray
    model_versions: np.ndarray
    shown_ids: np.ndarray            # (predictions, NEIGHBORS_PER_PREDICTION)
    scores: np.ndarray
    predicted_ctr: np.ndarray
    imp_ts_text: list[str]
    app_ids: np.ndarray              # per impression
    campaign_ids: np.ndarray
    partner_ids: np.ndarray
    user_ids: np.ndarray
    clicked: np.ndarray
    impression_request: np.ndarray   # object: request id, or None for an organic impression
    conversions: np.ndarray          # impression index of each conversion
    conv_ts_text: list[str]
    revenue: np.ndarray              # per conversion
    timestamps: np.ndarray           # microseconds, per event

    def __len__(self) -> int:
        return len(self.timestamps)

    def event(self, i: int) -> dict:
        n_predictions, n_impressions = len(self.pred_ts_text), len(self.imp_ts_text)
        if i < n_predictions:
            return {
                "event_id": f"prd-{self.tag}-{i:06d}", "ts": self.pred_ts_text[i], "schema_version": SCHEMA_VERSION,
                "event_type": "prediction", "request_id": self.request_ids[i],
                "partner_id": str(self.pred_partner_ids[i]), "app_id": str(self.query_ids[i]),
                "model_version": int(self.model_versions[i]), "arm": str(self.arm_names[i]),
                "neighbors": self.shown_ids[i].tolist(), "scores": self.scores[i].tolist(),
                "predicted_ctr": float(self.predicted_ctr[i]),
            }
        i -= n_predictions
        if i < n_impressions:
            return {
                "event_id": f"clk-{self.tag}-{i:06d}", "ts": self.imp_ts_text[i], "schema_version": SCHEMA_VERSION,
                "event_type": "click", "app_id": str(self.app_ids[i]), "campaign_id": str(self.campaign_ids[i]),
                "partner_id": str(self.partner_ids[i]), "user_id": str(self.user_ids[i]),
                "clicked": bool(self.clicked[i]), "request_id": self.impression_request[i],
            }
        j = i - n_impressions
        i = int(self.conversions[j])
        return {
            "event_id": f"cnv-{self.tag}-{i:06d}", "ts": self.conv_ts_text[j], "schema_version": SCHEMA_VERSION,
            "event_type": "conversion", "app_id": str(self.app_ids[i]), "campaign_id": str(self.campaign_ids[i]),
            "partner_id": str(self.partner_ids[i]), "user_id": str(self.user_ids[i]), "converted": True,
            "revenue": float(self.revenue[j]), "request_id": self.impression_request[i],
        }

    def lines(self) -> list[str]:
        """Every event's JSON line, as ``_json_line(self.event(i))`` would write it, without building the dicts:
        the ids are plain ASCII, so each value's JSON text is the id in quotes; numbers go through orjson."""
        tag, version = self.tag, SCHEMA_VERSION
        lines = [
            f'{{"event_id":"prd-{tag}-{i:06d}","ts":"{ts}","schema_version":{version},"event_type":"prediction",'
            f'"request_id":"{request}","partner_id":"{partner}","app_id":"{query}","model_version":{model},'
            f'"arm":"{arm}","neighbors":["{neighbors}"],"scores":{scores},"predicted_ctr":{ctr}}}'
            for i, (ts, request, partner, query, model, arm, neighbors, scores, ctr) in enumerate(zip(
                self.pred_ts_text, self.request_ids.tolist(), self.pred_partner_ids.tolist(), self.query_ids.tolist(),
                self.model_versions.tolist(), self.arm_names.tolist(),
                ['","'.join(row) for row in self.shown_ids.tolist()], _json_numbers(self.scores),
                _json_numbers(self.predicted_ctr)))
        ]
        requests = [_JSON_NULL if r is None else f'"{r}"' for r in self.impression_request.tolist()]
        apps, campaigns = self.app_ids.tolist(), self.campaign_ids.tolist()
        partners, users = self.partner_ids.tolist(), self.user_ids.tolist()
        lines += [
            f'{{"event_id":"clk-{tag}-{i:06d}","ts":"{ts}","schema_version":{version},"event_type":"click",'
            f'"app_id":"{app}","campaign_id":"{campaign}","partner_id":"{partner}","user_id":"{user}",'
            f'"clicked":{"true" if clicked else "false"},"request_id":{request}}}'
            for i, (ts, app, campaign, partner, user, clicked, request) in enumerate(zip(
                self.imp_ts_text, apps, campaigns, partners, users, self.clicked.tolist(), requests))
        ]
        lines += [
            f'{{"event_id":"cnv-{tag}-{i:06d}","ts":"{ts}","schema_version":{version},"event_type":"conversion",'
            f'"app_id":"{apps[i]}","campaign_id":"{campaigns[i]}","partner_id":"{partners[i]}","user_id":"{users[i]}",'
            f'"converted":true,"revenue":{revenue},"request_id":{requests[i]}}}'
            for i, ts, revenue in zip(self.conversions.tolist(), self.conv_ts_text, _json_numbers(self.revenue))
        ]
        return lines


_JSON_NULL = "null"


def _json_numbers(values: np.ndarray) -> list[str]:
    """orjson's text of each row (a list) or each value, as it writes them inside an event."""
    text = orjson.dumps(values.tolist()).decode()
    if values.ndim == 2:
        return [f"[{row}]" for row in text[2:-2].split("],[")] if values.size else ["[]"] * len(values)
    return text[1:-1].split(",") if values.size else []


@dataclass(frozen=True)
class _DrawnHour:
    """One hour of events as text, with the fault draws made right after them from the hour's generator."""

    lines: list[str]
    timestamps: np.ndarray
    counts: Counter
    faulty: dict[int, tuple[dict, int, float]]  # event index -> (the event, FAULT_KINDS index, draw)


def draw_faults(events: "_HourEvents", fault_rate: float, rng: np.random.Generator) -> dict[int, tuple[dict, int, float]]:
    """Which events a producer bug breaks, how, and the draw that shapes the fault (dicts for those only)."""
    faulty = rng.random(len(events)) < fault_rate
    kinds = rng.choice(len(FAULT_KINDS), size=len(events), p=FAULT_WEIGHTS / FAULT_WEIGHTS.sum())
    draws = rng.random(len(events))
    return {i: (events.event(i), int(kinds[i]), float(draws[i])) for i in np.flatnonzero(faulty).tolist()}


class _FaultInjector:
    """Turns events into delivered lines, breaking the drawn ones on purpose (in hour order: the unknown app
    ids it makes up are numbered across the whole run)."""

    def __init__(self, end_us: int):
        self.end_us = end_us
        self.unknown_apps = 0

    def deliver(self, hour: _DrawnHour) -> "_Delivery":
        if not hour.faulty:
            return _Delivery(hour.timestamps, hour.lines, {})
        arrivals, delivered, faults = [], [], {}
        timestamps, lines = hour.timestamps.tolist(), hour.lines
        done = 0
        for i, (event, kind_index, draw) in sorted(hour.faulty.items()):
            arrivals += timestamps[done:i]
            delivered += lines[done:i]
            done = i + 1
            kind = FAULT_KINDS[kind_index]
            if kind == "unknown_app_id" and event["event_type"] == "prediction":
                # Only clicks and conversions get unknown apps: a prediction about an app outside the
                # catalog can be legitimate (cold start from metadata), so it is not a producer fault.
                kind = "invalid_field"
            for pending in self._inject(kind, event, timestamps[i], draw):
                if pending.fault is not None:
                    faults[len(delivered)] = pending.fault
                arrivals.append(pending.arrival_us)
                delivered.append(pending.line)
        arrivals += timestamps[done:]
        delivered += lines[done:]
        return _Delivery(np.array(arrivals, dtype=np.int64), delivered, faults)

    def _inject(self, kind: str, event: dict, ts_us: int, draw: float) -> list[_PendingLine]:
        event_id, event_type = event["event_id"], event["event_type"]
        fault = (kind, event_id, event_type)
        line = _json_line(event)
        if kind == "duplicate":
            # The producer retried: the same line again, up to 90 minutes later (often another file).
            copy_us = min(ts_us + int(60e6 + draw * 5340e6), self.end_us - 1)
            return [_PendingLine(ts_us, line, None), _PendingLine(copy_us, line, fault)]
        if kind == "late":
            late_us = ts_us + int(3600e6 * (1 + 11 * draw))  # at least one hour folder later
            if late_us >= self.end_us:
                return [_PendingLine(ts_us, line, None)]  # would arrive after the data ends: delivered on time
            return [_PendingLine(late_us, line, fault)]
        broken = dict(event)
        if kind == "malformed_json":
            cut = 1 + int(draw * (len(line) - 2))
            return [_PendingLine(ts_us, line[:cut], fault)]
        if kind == "missing_field":
            fields = REQUIRED_FIELDS[event_type]
            del broken[fields[int(draw * len(fields))]]
        elif kind == "invalid_field":
            options = MISTYPED_VALUES[event_type]
            field, value = options[int(draw * len(options))]
            broken[field] = value
        elif kind == "unknown_event_type":
            broken["event_type"] = "impression"
        else:  # unknown_app_id: a well-formed id that the catalog does not hold
            self.unknown_apps += 1
            broken["app_id"] = f"app-unknown-{self.unknown_apps:06d}"
        return [_PendingLine(ts_us, _json_line(broken), fault)]


@dataclass(frozen=True)
class _Delivery:
    """Delivered lines in delivery order, their arrival times and the faults among them (by position)."""

    arrival_us: np.ndarray
    lines: list[str]
    faults: dict[int, tuple[str, str, str]]

    @classmethod
    def of(cls, pending: list[_PendingLine]) -> "_Delivery":
        return cls(np.array([p.arrival_us for p in pending], dtype=np.int64), [p.line for p in pending],
                   {i: p.fault for i, p in enumerate(pending) if p.fault is not None})


class _FirehoseWriter:
    """Writes delivered lines to ``feedback/YYYY/MM/DD/HH/`` by arrival hour, one gzip object per hour."""

    def __init__(self, store_uri: str, params: SimulationParameters, background: bool = False):
        self.store_uri = store_uri
        self.params = params
        self.start_us = int(params.start.timestamp() * 1_000_000)
        self.pending: dict[int, list[_Delivery]] = defaultdict(list)
        self.lines_written = 0
        self.files_written = 0
        self.faults: dict[str, list[Any]] = defaultdict(list)
        # gzip releases the GIL: with ``background`` a thread compresses and writes while the next hour is built.
        self.compressor = ThreadPoolExecutor(1, thread_name_prefix="gzip") if background else None
        self.writes: deque[Future] = deque()

    def __enter__(self) -> "_FirehoseWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.compressor is not None:
            self.compressor.shutdown(wait=True)
            while self.writes:
                self.writes.popleft().result()  # re-raises a failed write

    def _write(self, relative: str, payload: bytes) -> None:
        uri = storage.join(self.store_uri, relative)
        if self.compressor is None:
            storage.write_bytes(uri, gzip.compress(payload, compresslevel=3, mtime=0))
            return
        while len(self.writes) >= 4 or (self.writes and self.writes[0].done()):
            self.writes.popleft().result()
        self.writes.append(self.compressor.submit(
            lambda: storage.write_bytes(uri, gzip.compress(payload, compresslevel=3, mtime=0))))

    def add(self, lines: list[_PendingLine] | _Delivery) -> None:
        delivery = lines if isinstance(lines, _Delivery) else _Delivery.of(lines)
        if not delivery.lines:
            return
        hours = (delivery.arrival_us - self.start_us) // 3_600_000_000
        if hours[0] == hours[-1] and (hours == hours[0]).all():
            self.pending[int(hours[0])].append(delivery)
            return
        for hour in np.unique(hours).tolist():
            rows = np.flatnonzero(hours == hour)
            position = {row: i for i, row in enumerate(rows.tolist())}
            self.pending[hour].append(_Delivery(
                delivery.arrival_us[rows], [delivery.lines[row] for row in rows.tolist()],
                {position[row]: fault for row, fault in delivery.faults.items() if row in position}))

    def flush_hour(self, hour: int) -> None:
        chunks = self.pending.pop(hour, [])
        if not chunks:
            return
        # Stable: lines with the same arrival keep their delivery order, so a duplicate never precedes its original.
        order = np.argsort(np.concatenate([c.arrival_us for c in chunks]), kind="stable")
        lines = [line for c in chunks for line in c.lines]
        hour_start = self.params.start + timedelta(hours=hour)
        relative = layout.feedback_prefix(hour_start) + f"appsim-feedback-1-{hour_start:%Y-%m-%d-%H}-00-00-seed{self.params.seed}.gz"
        self._write(relative, ("\n".join([lines[i] for i in order.tolist()]) + "\n").encode())
        offsets = np.cumsum([0] + [len(c.lines) for c in chunks])
        faults = {offset + i: fault for offset, c in zip(offsets.tolist(), chunks) for i, fault in c.faults.items()}
        if faults:
            number_of = np.empty(len(order), dtype=np.int64)
            number_of[order] = np.arange(1, len(order) + 1)
            for number, (kind, event_id, event_type) in sorted((int(number_of[i]), f) for i, f in faults.items()):
                for column, value in (("file", relative), ("line", number), ("kind", kind),
                                      ("reason", FAULT_REASON[kind]), ("event_id", event_id),
                                      ("event_type", event_type)):
                    self.faults[column].append(value)
        self.lines_written += len(lines)
        self.files_written += 1

    def fault_table(self) -> pd.DataFrame:
        columns = ("file", "line", "kind", "reason", "event_id", "event_type")
        return pd.DataFrame({c: pd.Series(self.faults[c], dtype="int64" if c == "line" else "string") for c in columns})


class _DayDrawer:
    """Draws the days' events; each hour from its own seeded generator, so any process can draw any day."""

    def __init__(self, params: SimulationParameters, generator: _HourGenerator, drifted: _HourGenerator):
        self.params = params
        self.generator = generator
        self.drifted = drifted

    def draw_day(self, day: int) -> list[_DrawnHour]:
        p = self.params
        hourly = np.random.default_rng([p.seed, 2, day]).multinomial(p.events_per_day, DIURNAL)
        generator = self.drifted if day >= p.days - p.drift_days else self.generator
        drawn = []
        for hour_of_day in range(24):
            hour = day * 24 + hour_of_day
            hour_start = p.start + timedelta(hours=hour)
            rng = np.random.default_rng([p.seed, 3, hour])
            events, counts = generator.generate(
                int(hour_start.timestamp() * 1_000_000), int(hourly[hour_of_day]), rng, f"{hour_start:%Y%m%d%H}")
            drawn.append(_DrawnHour(events.lines(), events.timestamps, counts, draw_faults(events, p.fault_rate, rng)))
        return drawn


# Below this many impressions in total one process is quicker than starting workers.
PARALLEL_MIN_IMPRESSIONS = 2_000_000
_WORKER_DRAWER: _DayDrawer | None = None


def _start_worker(drawer: _DayDrawer) -> None:
    global _WORKER_DRAWER
    _WORKER_DRAWER = drawer


def _draw_day_in_worker(day: int) -> list[_DrawnHour]:
    return _WORKER_DRAWER.draw_day(day)


def _drawn_days(drawer: _DayDrawer, workers: int) -> Iterator[list[_DrawnHour]]:
    """The days in order, drawn by ``workers`` processes (days are independent; delivery stays in order here).
    At most two days per worker are in flight, so memory stays flat however long the run."""
    days = drawer.params.days
    if workers <= 1:
        yield from (drawer.draw_day(day) for day in range(days))
        return
    # fork: the workers share the world with this process (no copy); they use no OpenMP (FAISS) after it.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"), initializer=_start_worker,
                             initargs=(drawer,)) as pool:
        in_flight = deque(pool.submit(_draw_day_in_worker, day) for day in range(min(days, 2 * workers)))
        for day in range(len(in_flight), days + len(in_flight)):
            drawn = in_flight.popleft().result()
            if day < days:
                in_flight.append(pool.submit(_draw_day_in_worker, day))
            yield drawn


def _write_parquet(frame: pd.DataFrame, uri: str) -> None:
    with storage.open_uri(uri, "wb") as handle:
        frame.to_parquet(handle, index=False)


def _clear_outputs(store_uri: str, overwrite: bool) -> None:
    outputs = [layout.catalog_uri(store_uri), layout.feedback_uri(store_uri), layout.ground_truth_uri(store_uri)]
    existing = [uri for uri in outputs if storage.exists(uri)]
    if existing and not overwrite:
        raise SimulationError(
            f"{', '.join(existing)} already exist; simulate into an empty store, or pass --overwrite "
            "(overwrite=True) to replace the catalog, feedback and ground truth there"
        )
    for uri in existing:
        storage.remove(uri)


def _write_catalog_and_truth(store_uri: str, world: World, seed: int) -> np.ndarray:
    """Write the catalog and the ground truth about apps; return the true neighbour indices."""
    _write_parquet(make_catalog(world, seed), layout.catalog_uri(store_uri))
    true_top, true_similarity = nearest_neighbors(world.positions)
    ground_truth = layout.ground_truth_uri(store_uri)
    _write_parquet(neighbors_table(world.app_ids, true_top, true_similarity),
                   storage.join(ground_truth, "neighbors.parquet"))
    _write_parquet(pd.DataFrame({
        "app_id": world.app_ids, "cluster": world.cluster, "genre": world.genre,
        "popularity": world.popularity, "latent": list(world.positions),
    }), storage.join(ground_truth, "apps.parquet"))
    return true_top


def simulate(store_uri: str, *, apps: int, users: int, days: int, events_per_day: int, seed: int,
             fault_rate: float, end: datetime, progress: Progress | None = None,
             overwrite: bool = False, drift_days: int = 0, workers: int | None = None) -> dict:
    """Generate the catalog, feedback events and ground truth into ``store_uri``; return the summary.

    ``workers`` processes draw the days (default: one per core for large runs, else one); the files are
    the same whatever the number.

    ``events_per_day`` counts ad impressions (click events); conversions and prediction events come
    on top. The summary is also written to ``<store>/ground_truth/simulation.json``. With
    ``drift_days`` the last days are drawn from ``drifted_world`` (input drift).
    """
    params = SimulationParameters(apps, users, days, events_per_day, seed, fault_rate, end, drift_days)
    params.validate()
    store_uri = storage.normalize(store_uri)
    progress = progress or Progress.quiet("simulate", days)
    _clear_outputs(store_uri, overwrite)

    world = make_world(apps, users, seed)
    true_top = _write_catalog_and_truth(store_uri, world, seed)
    ground_truth = layout.ground_truth_uri(store_uri)
    if true_top.shape[1] < NEIGHBORS_PER_PREDICTION:  # tiny catalogs: pad the neighbour lists by wrapping
        true_top = np.resize(true_top, (apps, NEIGHBORS_PER_PREDICTION))
    end_us = int(end.timestamp() * 1_000_000)
    generator = _HourGenerator(world, true_top, end_us)
    drift_world, drift_categories = drifted_world(world, seed) if drift_days else (world, [])
    drifted = _HourGenerator(drift_world, true_top, end_us) if drift_days else generator
    injector = _FaultInjector(end_us)
    if workers is None:
        workers = (os.cpu_count() or 1) if days * events_per_day >= PARALLEL_MIN_IMPRESSIONS else 1
    event_counts: Counter = Counter()
    with _FirehoseWriter(store_uri, params, background=workers > 1) as writer:
        for day, drawn_hours in enumerate(_drawn_days(_DayDrawer(params, generator, drifted), workers)):
            for hour_of_day, drawn in enumerate(drawn_hours):
                event_counts.update(drawn.counts)
                writer.add(injector.deliver(drawn))
                writer.flush_hour(day * 24 + hour_of_day)
            progress.update(1)
    leftover = sorted(writer.pending)
    if leftover:  # cannot happen: nothing is delivered at or after `end`
        raise AssertionError(f"lines pending for hours {leftover} beyond the window")

    faults = writer.fault_table()
    _write_parquet(faults, storage.join(ground_truth, "faults.parquet"))
    fault_counts = {kind: int((faults["kind"] == kind).sum()) for kind in FAULT_KINDS}
    quarantined = faults.loc[~faults["kind"].isin(KEPT_FAULTS), "reason"].dropna().value_counts()
    kept = faults.loc[faults["kind"].isin(KEPT_FAULTS), "reason"].value_counts()
    window_end = params.end.strftime("%Y-%m-%dT%H:%M:%SZ")
    summary = {
        "parameters": {**asdict(params), "end": window_end},
        "window_end": window_end,
        "window_days": days,
        "drift": {"days": drift_days, "categories": drift_categories, "boost": DRIFT_BOOST if drift_days else None},
        "catalog": {"apps": apps, "categories": len(CATEGORIES), "users": users,
                    "partners": len(world.partner_ids), "campaigns": len(world.campaign_ids)},
        "events": {k: int(event_counts[k]) for k in ("click", "clicked", "attributed_clicks", "conversion", "prediction")},
        "lines_written": writer.lines_written,
        "files_written": writer.files_written,
        "faults": fault_counts,
        "expected_prepare": {
            "quarantined": {reason: int(n) for reason, n in sorted(quarantined.items())},
            "kept": {reason: int(n) for reason, n in sorted(kept.items())},
            "duplicates": fault_counts["duplicate"],
            "late_accepted": fault_counts["late"],
        },
        "outputs": {
            "catalog": "catalog/apps.parquet",
            "feedback": "feedback/",
            "neighbors": "ground_truth/neighbors.parquet",
            "apps_latent": "ground_truth/apps.parquet",
            "faults": "ground_truth/faults.parquet",
        },
    }
    storage.write_json(storage.join(ground_truth, "simulation.json"), summary)
    progress.finish(f"{writer.lines_written:,} lines in {writer.files_written:,} files")
    return summary


def current_hour() -> datetime:
    """The start of the current UTC hour: simulate's default end, so `appsim retrain` (window_end = now) reads it all."""
    return datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
