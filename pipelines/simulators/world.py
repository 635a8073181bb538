"""A harder simulated marketplace for the quality bench: similarity beyond the cluster.

In ``pipelines/simulators/marketplace.py`` (the fast demo world) co-engagement is "same cluster, popular": every
method that learns clusters and popularity ties the engagement oracle there, so that world cannot
tell a better model from a worse one. Here:

- **taxonomy**: apps sit in a category and a niche within it (``CATEGORIES`` x ``NICHES``), at
  continuous latent positions around their niche centre, so the nearest apps often cross niches
  and categories;
- **continuous taste that moves**: a user's taste starts near one app and drifts towards every app
  the user clicks (``TASTE_STEP``);
- **users move between related apps over time**: a share ``FOLLOW_FRACTION`` of a user's
  impressions are apps related to the last app the user clicked (its ``RELATED_APPS`` nearest
  apps, weighted by closeness and, less, popularity), so co-engagement follows the latent
  neighbourhood, not only the cluster;
- **long-tail popularity**: Zipf-like with exponent ``POPULARITY_EXPONENT`` (heavier than the demo's);
- **partner-specific exposure**: the other impressions come from the user's partner (the publisher
  whose apps the user uses), whose inventory covers a few categories and picks by popularity:
  co-exposure that has nothing to do with similarity.

Clicks depend on the user's current taste (``sigmoid(CLICK_BIAS + CLICK_SLOPE * cos(taste, app))``),
conversions likewise. ``expected_coengagement`` is the reference the bench calls the engagement
oracle: for a user whose taste and last click are app q, the chance that an impression of j is shown
and clicked. It reads the hidden truth, so it is a ceiling reference, not a method.

Self-contained on purpose (the simulators are to be reorganised): it shares with the demo only the
catalog maker and the Firehose writer, the one definition of the store's layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from models import layout, storage
from models.events import SCHEMA_VERSION
from models.progress import Progress
from pipelines.simulators.marketplace import (CATEGORIES, GENRES_PER_CATEGORY, LATENT_DIM, DIURNAL, SimulationParameters,
                                _clear_outputs, _FirehoseWriter, _iso, _json_line, _PendingLine, _write_parquet,
                                make_catalog, nearest_neighbors)

NICHES = GENRES_PER_CATEGORY  # niches per category (the catalog describes an app by its niche's keywords)
NICHE_SPREAD = 0.7          # niche centre offset from its category centre (category centres have norm 1)
APP_SPREAD = 0.8            # app offset from its niche centre
TASTE_SPREAD = 0.3          # a new user's taste offset from the app it starts on
TASTE_STEP = 0.15           # a click moves the taste this far towards the clicked app
POPULARITY_EXPONENT = 1.1   # weight ~ 1 / (rank + 3) ** exponent
FOLLOW_FRACTION = 0.6       # impressions of apps related to the user's last click
RELATED_APPS = 30           # how many nearest apps count as related
RELATED_SHARPNESS = 8.0     # related apps weighted by exp(sharpness * cos) ...
RELATED_POPULARITY = 0.3    # ... times popularity ** this
PARTNERS = 12
PARTNER_CATEGORIES = 4      # categories in one partner's inventory
PARTNER_POPULARITY = 0.8    # a partner picks from its inventory by popularity ** this
CLICK_BIAS, CLICK_SLOPE = -4.0, 5.0
CONVERSION_BIAS, CONVERSION_SLOPE = -3.0, 2.5


@dataclass(frozen=True)
class TaxonomyWorld:
    """The hidden truth. ``cluster`` / ``genre`` / ``positions`` / ``app_ids`` are what the demo's catalog maker reads."""

    app_ids: np.ndarray
    positions: np.ndarray          # float32 (apps, LATENT_DIM), unit rows
    cluster: np.ndarray            # category of each app
    genre: np.ndarray              # niche within the category
    popularity: np.ndarray         # sums to 1
    related: np.ndarray            # (apps, RELATED_APPS) nearest apps
    related_weight: np.ndarray     # (apps, RELATED_APPS) P(related impression shows that app), rows sum to 1
    user_ids: np.ndarray
    start_app: np.ndarray          # the app each user's taste starts near
    start_taste: np.ndarray        # float32 (users, LATENT_DIM)
    user_partner: np.ndarray
    user_activity_cdf: np.ndarray
    partner_ids: np.ndarray
    partner_exposure: np.ndarray   # (partners, apps) P(partner shows app), rows sum to 1
    partner_share: np.ndarray      # share of users per partner


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def make_world(apps: int, users: int, seed: int) -> TaxonomyWorld:
    rng = np.random.default_rng([seed, 10])
    n_categories = len(CATEGORIES)
    categories = _unit(rng.standard_normal((n_categories, LATENT_DIM)))
    niches = categories[:, None, :] + NICHE_SPREAD * rng.standard_normal((n_categories, NICHES, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    cluster = rng.choice(n_categories, size=apps, p=rng.dirichlet(np.full(n_categories, 3.0)))
    genre = rng.integers(0, NICHES, apps)
    positions = _unit(niches[cluster, genre] + APP_SPREAD * rng.standard_normal((apps, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    popularity = 1.0 / (rng.permutation(apps) + 3.0) ** POPULARITY_EXPONENT
    popularity /= popularity.sum()

    related, similarity = nearest_neighbors(positions.astype(np.float32), RELATED_APPS)
    weight = np.exp(RELATED_SHARPNESS * (similarity - similarity.max(axis=1, keepdims=True))) \
        * popularity[related] ** RELATED_POPULARITY
    weight /= weight.sum(axis=1, keepdims=True)

    exposure = np.zeros((PARTNERS, apps))
    for partner in range(PARTNERS):
        inventory = np.isin(cluster, rng.choice(n_categories, PARTNER_CATEGORIES, replace=False))
        exposure[partner] = np.where(inventory, popularity ** PARTNER_POPULARITY, 0.0)
    exposure /= exposure.sum(axis=1, keepdims=True)
    partner_share = rng.dirichlet(np.full(PARTNERS, 2.0))

    start_app = np.minimum(np.searchsorted(np.cumsum(popularity), rng.random(users)), apps - 1)
    taste = _unit(positions[start_app] + TASTE_SPREAD * rng.standard_normal((users, LATENT_DIM)) / np.sqrt(LATENT_DIM))
    return TaxonomyWorld(
        app_ids=np.array([f"app-{i:0{max(6, len(str(apps)))}d}" for i in range(apps)]),
        positions=positions.astype(np.float32), cluster=cluster, genre=genre, popularity=popularity,
        related=related, related_weight=weight,
        user_ids=np.array([f"user-{i:0{max(7, len(str(users)))}d}" for i in range(users)]),
        start_app=start_app, start_taste=taste.astype(np.float32),
        user_partner=rng.choice(PARTNERS, size=users, p=partner_share),
        user_activity_cdf=np.cumsum(rng.lognormal(0.0, 1.0, users)),
        partner_ids=np.array([f"partner-{i:03d}" for i in range(PARTNERS)]),
        partner_exposure=exposure, partner_share=partner_share,
    )


def expected_coengagement(world: TaxonomyWorld, rows: np.ndarray) -> np.ndarray:
    """(len(rows), apps): for a user whose last click and taste are app q (a row), P(next impression is j and clicked).

    exposure = FOLLOW_FRACTION * related(q, j) + (1 - FOLLOW_FRACTION) * sum_p share(p) exposure(p, j)
    (the partner is unknown from q alone), times sigmoid(CLICK_BIAS + CLICK_SLOPE * cos(q, j)).
    """
    exposure = np.tile((1.0 - FOLLOW_FRACTION) * (world.partner_share @ world.partner_exposure), (len(rows), 1))
    np.add.at(exposure, (np.repeat(np.arange(len(rows)), RELATED_APPS), world.related[rows].ravel()),
              FOLLOW_FRACTION * world.related_weight[rows].ravel())
    return exposure * _sigmoid(CLICK_BIAS + CLICK_SLOPE * (world.positions[rows] @ world.positions.T))


def _hour(world: TaxonomyWorld, taste: np.ndarray, last_app: np.ndarray, start_us: int, n: int,
          rng: np.random.Generator, tag: str, end_us: int) -> list[_PendingLine]:
    """One hour of impressions (click events) and conversions; updates ``taste`` and ``last_app`` in place."""
    hour_us = 3_600_000_000
    apps = len(world.app_ids)
    users = np.minimum(np.searchsorted(world.user_activity_cdf, rng.random(n) * world.user_activity_cdf[-1]),
                       len(world.user_ids) - 1)
    follow = rng.random(n) < FOLLOW_FRACTION
    cumulative = np.cumsum(world.related_weight[last_app[users]], axis=1)
    slot = np.minimum((cumulative < rng.random(n)[:, None]).sum(axis=1), RELATED_APPS - 1)
    related = world.related[last_app[users], slot]
    partner = world.user_partner[users]
    draws = rng.random(n)
    from_partner = np.empty(n, dtype=np.int64)
    for p in range(PARTNERS):
        mine = partner == p
        from_partner[mine] = np.searchsorted(np.cumsum(world.partner_exposure[p]), draws[mine])
    from_partner = np.minimum(from_partner, apps - 1)
    shown = np.where(follow, related, from_partner)
    affinity = np.einsum("ij,ij->i", taste[users], world.positions[shown]).astype(np.float64)
    clicked = rng.random(n) < _sigmoid(CLICK_BIAS + CLICK_SLOPE * affinity)
    converted = clicked & (rng.random(n) < _sigmoid(CONVERSION_BIAS + CONVERSION_SLOPE * affinity))
    ts = start_us + np.sort(rng.integers(0, hour_us, n))
    conv_ts = ts + rng.integers(60, 3_600, n) * 1_000_000
    converted &= conv_ts < end_us
    for i in np.flatnonzero(clicked):  # in time order: the last click of the hour is where the user is now
        user, app = users[i], shown[i]
        taste[user] = _unit((1.0 - TASTE_STEP) * taste[user] + TASTE_STEP * world.positions[app])
        last_app[user] = app

    lines = []
    ts_text, conv_text = _iso(ts), _iso(conv_ts)
    for i in range(n):
        common = {"schema_version": SCHEMA_VERSION, "app_id": str(world.app_ids[shown[i]]),
                  "campaign_id": f"cmp-{shown[i]}-{partner[i]}", "partner_id": str(world.partner_ids[partner[i]]),
                  "user_id": str(world.user_ids[users[i]]), "request_id": None}
        lines.append(_PendingLine(int(ts[i]), _json_line({"event_id": f"clk-{tag}-{i:06d}", "ts": ts_text[i],
                                                          "event_type": "click", **common, "clicked": bool(clicked[i])}), None))
        if converted[i]:
            lines.append(_PendingLine(int(conv_ts[i]), _json_line({
                "event_id": f"cnv-{tag}-{i:06d}", "ts": conv_text[i], "event_type": "conversion", **common,
                "converted": True, "revenue": 1.0}), None))
    return lines


def simulate_world(store_uri: str, *, apps: int, users: int, days: int, events_per_day: int, seed: int,
                   end: datetime, progress: Progress | None = None, overwrite: bool = False) -> dict:
    """Catalog, feedback and ground truth of the taxonomy world into ``store_uri`` (prepare with window_end=end)."""
    params = SimulationParameters(apps, users, days, events_per_day, seed, 0.0, end)
    params.validate()
    store_uri = storage.normalize(store_uri)
    progress = progress or Progress.quiet("simulate world", days)
    _clear_outputs(store_uri, overwrite)
    world = make_world(apps, users, seed)
    _write_parquet(make_catalog(world, seed), layout.catalog_uri(store_uri))
    _write_parquet(pd.DataFrame({"app_id": world.app_ids, "cluster": world.cluster, "genre": world.genre,
                                 "popularity": world.popularity, "latent": list(world.positions)}),
                   storage.join(layout.ground_truth_uri(store_uri), "apps.parquet"))
    writer = _FirehoseWriter(store_uri, params)
    taste, last_app = world.start_taste.copy(), world.start_app.copy()
    end_us = int(end.timestamp() * 1_000_000)
    for day in range(days):
        hourly = np.random.default_rng([seed, 12, day]).multinomial(events_per_day, DIURNAL / DIURNAL.sum())
        for hour_of_day in range(24):
            hour = day * 24 + hour_of_day
            hour_start = params.start + timedelta(hours=hour)
            writer.add(_hour(world, taste, last_app, int(hour_start.timestamp() * 1_000_000), int(hourly[hour_of_day]),
                             np.random.default_rng([seed, 13, hour]), f"{hour_start:%Y%m%d%H}", end_us))
            writer.flush_hour(hour)
        progress.update(1)
    for hour in sorted(writer.pending):  # conversions that arrive after their impression's hour
        writer.flush_hour(hour)
    progress.finish(f"{writer.lines_written:,} lines in {writer.files_written:,} files")
    return {"apps": apps, "users": users, "days": days, "lines": writer.lines_written}
