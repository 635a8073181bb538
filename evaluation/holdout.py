"""Evaluation queries from the prepared holdout (the last part of the data window).

Protocol (the same for the candidate, the champion and the popularity baseline):

- For each holdout user u, H_u is the set of apps u positively engaged with (clicked or
  converted on) in the holdout. Users with fewer than ``MIN_APPS_PER_USER`` (2) such apps say
  nothing about similarity and are left out.
- Each q in H_u is a query whose relevant set is H_u minus q: a good model ranks the other apps
  the user engaged with among q's nearest neighbours. A model's ranking for q is its top-k
  neighbours of q, q itself excluded.
- Per query: recall@k = hits / min(|relevant|, k); precision@k = hits / k; nDCG@k with binary
  gains; MAP@k = average precision normalised by min(|relevant|, k) (``evaluation/metrics.py``).
- A user's score is the mean over its queries; a headline metric is the mean over users, so
  heavy users do not dominate. The comparison (``evaluation/compare.py``) bootstraps users.
- To keep evaluation fast at any scale, at most ``MAX_USERS`` users are evaluated (a seeded,
  deterministic sample) and at most ``MAX_QUERIES_PER_USER`` of a heavy user's apps are used as
  queries (their relevant sets still hold all of the user's other apps). The cost is one
  nearest-neighbour search per distinct query app and model: with an exact index over 100K apps
  that is the bulk of the step's time, which is why the caps exist.
- Catalog coverage = distinct apps in any of the evaluated top-10 lists / catalog size.
- CTR MAE: for holdout apps with at least ``MIN_IMPRESSIONS_FOR_CTR`` impressions (at most
  ``MAX_CTR_APPS`` of them, a seeded sample), |predicted CTR - raw holdout CTR (clicks /
  impressions)|, averaged over apps. An app the model does not know is predicted at the model's
  artifact-wide CTR; the popularity baseline predicts the global train CTR for every app.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.metrics import PADDING, RelevantSets, distinct_integers
from models import dataset

MIN_APPS_PER_USER = 2
MAX_USERS = 20_000
MAX_QUERIES_PER_USER = 10
MIN_IMPRESSIONS_FOR_CTR = 30
MAX_CTR_APPS = 5_000


class EmptyHoldout(ValueError):
    """A holdout with nothing to evaluate on."""


@dataclass(frozen=True)
class HoldoutQueries:
    """Queries over the holdout's app vocabulary: item ``i`` is ``app_ids[i]``."""

    app_ids: list[str]
    query_items: np.ndarray   # (n_queries,) the query app of each query
    query_users: np.ndarray   # (n_queries,) which evaluated user (0..n_users-1) the query belongs to
    relevant: RelevantSets    # per query: the user's other apps
    n_users: int

    @property
    def n_queries(self) -> int:
        return len(self.query_items)

    @property
    def query_app_ids(self) -> list[str]:
        return [self.app_ids[i] for i in self.query_items]

    @property
    def n_query_apps(self) -> int:
        return int(distinct_integers(self.query_items).size)

    def to_holdout_items(self, rankings: np.ndarray, ranker_app_ids: Sequence[str]) -> np.ndarray:
        """A ranker's positions into ``ranker_app_ids`` (-1 = padding) as holdout item ids; apps the holdout
        does not know become padding (they can never be hits)."""
        item_of = {app_id: i for i, app_id in enumerate(self.app_ids)}
        to_holdout = np.array([item_of.get(a, PADDING) for a in ranker_app_ids] + [PADDING], dtype=np.int64)
        # Padding (-1) indexes the appended PADDING entry, so it stays padding.
        return to_holdout[rankings]


def build_queries(
    interactions: pd.DataFrame,
    *,
    seed: int,
    max_users: int = MAX_USERS,
    max_queries_per_user: int = MAX_QUERIES_PER_USER,
) -> HoldoutQueries:
    """Queries from holdout interactions (``models.dataset.INTERACTION_COLUMNS``).

    Users and apps are integer codes in their ids' sorted order, so that the engaged pairs, the users with enough of
    them and the sample are integer work after one hash of each id column (with pandas' drop_duplicates, groupby and
    isin on the ids it took 5.9 CPU-s for TrainEmbeddings' 1.9M validation pairs at 200K apps). Rows without an id
    are left out.
    """
    positive = interactions[(interactions["clicks"] > 0) | (interactions["conversions"] > 0)]
    user_codes, user_ids = pd.factorize(positive["user_id"], sort=True)
    app_codes, app_values = pd.factorize(positive["app_id"], sort=True)
    known = (user_codes >= 0) & (app_codes >= 0)
    width = max(len(app_values), 1)
    pair_users, pair_apps = np.divmod(distinct_integers(user_codes[known].astype(np.int64) * width + app_codes[known]), width)
    users = np.flatnonzero(np.bincount(pair_users, minlength=len(user_ids)) >= MIN_APPS_PER_USER)
    if users.size == 0:
        raise EmptyHoldout(
            f"the holdout has no user with {MIN_APPS_PER_USER} or more engaged apps ({len(interactions)} interaction rows); "
            "widen window_days or raise holdout_fraction"
        )
    rng = np.random.default_rng(seed)
    if users.size > max_users:
        users = np.sort(rng.choice(users, size=max_users, replace=False))
    kept = np.isin(pair_users, users)
    pair_users, pair_apps = pair_users[kept], pair_apps[kept]  # by user, then app
    kept_apps = distinct_integers(pair_apps)
    app_ids = pd.Index(app_values).take(kept_apps).tolist()
    items = np.searchsorted(kept_apps, pair_apps).astype(np.int64)
    user_rows = np.searchsorted(users, pair_users).astype(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(users)))])

    query_items, query_users, sizes, relevant_items = [], [], [], []
    for user in range(len(users)):
        engaged = items[bounds[user] : bounds[user + 1]]
        queries = engaged if engaged.size <= max_queries_per_user else np.sort(
            rng.choice(engaged, size=max_queries_per_user, replace=False)
        )
        for query in queries:
            others = engaged[engaged != query]
            query_items.append(query)
            query_users.append(user)
            sizes.append(others.size)
            relevant_items.append(others)
    relevant = RelevantSets(
        offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        items=np.concatenate(relevant_items).astype(np.int64),
    )
    return HoldoutQueries(
        app_ids=app_ids,
        query_items=np.asarray(query_items, dtype=np.int64),
        query_users=np.asarray(query_users, dtype=np.int64),
        relevant=relevant,
        n_users=len(users),
    )


def load_queries(prepared_uri: str, *, seed: int, max_users: int = MAX_USERS) -> HoldoutQueries:
    return build_queries(dataset.read_table(prepared_uri, dataset.HOLDOUT_INTERACTIONS), seed=seed, max_users=max_users)


def observed_ctr(holdout_app_stats: pd.DataFrame, *, seed: int, min_impressions: int = MIN_IMPRESSIONS_FOR_CTR,
                 max_apps: int = MAX_CTR_APPS) -> pd.Series:
    """Raw holdout CTR (clicks / impressions) per app id, for apps with enough impressions to mean something."""
    enough = holdout_app_stats[holdout_app_stats["impressions"] >= min_impressions].sort_values("app_id")
    if len(enough) > max_apps:
        enough = enough.sample(n=max_apps, random_state=seed).sort_values("app_id")
    return pd.Series(
        (enough["clicks"] / enough["impressions"]).to_numpy(np.float64),
        index=enough["app_id"].to_numpy(),
        name="ctr",
    )
