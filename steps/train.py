"""TrainEmbeddings: prepared co-engagement + the catalog -> a model artifact covering every catalog app.

``run`` is the pure core the local runner calls (URIs in, ``<output_uri>/model.tar.gz`` out).
``python -m steps.train`` is the SageMaker Training entry point: channels from
``SM_CHANNEL_PREPARED`` / ``SM_CHANNEL_CATALOG`` (folders), the artifact folder written into
``SM_MODEL_DIR`` (SageMaker tars it), hyper-parameters from ``SM_HPS`` or
``/opt/ml/input/config/hyperparameters.json`` (values may arrive as strings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from evaluation.compare import K, score_rankings
from evaluation.holdout import EmptyHoldout, build_queries
from evaluation.topk import query_top_k
from models import dataset, layout, storage
from models.catalog import read_catalog
from models.artifact import ModelArtifact
from models.embedding import (TRAINER_NAME, EmbeddingParams, TrainingDataError, collaborative_factors,
                              interaction_matrix, popularity_degrees, popularity_weights, spectral_factors,
                              single_threaded, train_embeddings)
from models.index import EXACT_MAX_APPS, INDEX_TYPES, build_index
from models.progress import Progress

HYPERPARAMETERS_FILE = "/opt/ml/input/config/hyperparameters.json"
FAILURE_FILE = Path("/opt/ml/output/failure")
# Hyper-parameter name -> type; `catalog_uri` locates the catalog when there is no catalog channel.
HYPERPARAMETERS: dict[str, type] = {
    "embedding_dim": int,
    "seed": int,
    "index_type": str,
    "exact_index_max_apps": int,
    "catalog_uri": str,
}
DEFAULT_HYPERPARAMETERS: dict[str, Any] = {"embedding_dim": 64, "seed": 42, "index_type": "auto",
                                           "exact_index_max_apps": EXACT_MAX_APPS}


# Model selection on a validation split carved, in time, from the train part (never the holdout): the pairs first
# engaged before the last VALIDATION_FRACTION of the train span fit, the pairs engaged after it validate.
VALIDATION_FRACTION = 0.2
VALIDATION_USERS = 1_000   # a seeded sample; exact top 10 of each distinct query app among all apps
# 1,000 users, not fewer, at 200K apps too, where validation recall@10 is ~0.056: bootstrapped from 4,000 validation
# users (bench data of bench/train_scale.py), the candidate picked on 1,000 of them scored on average 1.3% below the
# 4,000-user pick (95th percentile 8.5%), on 500 users 3.2% (11.6%), on 250 users 4.5% (14.8%).
# Bounds on selection's cost at scale: query x app scores per candidate (5K apps: up to 10 queries per user; from
# 50K apps on: one per sampled user, so 1,000 queries) and fit pairs per factorisation (beyond it, a seeded
# sample of users; the knobs' ranking is read off a smaller but same-shaped graph). At 200K apps (bench/train_scale.py,
# 9.7M pairs, load 6-9) selection + fit cost 1.79x the old fit's wall and CPU (selection 83 CPU-s, fit 94): the issue's
# 2x budget. It was 3.85x: one FAISS search per candidate (61% of selection's wall), now one product per
# factorisation and rank (weighted_rankings), and the narrower grid from LARGE_CATALOG_APPS on. What is left is
# mostly the 3 SVDs of the 1M-pair sample (~14 CPU-s each, apps x rank^2 dense work: a smaller sample barely helps).
VALIDATION_SEARCH_CELLS = 50_000_000
VALIDATION_MAX_FIT_PAIRS = 1_000_000
# Families: one spectral factorisation each (on the fit part), then knobs that need no refit.
#  - "cooccurrence-svd": the regularised degree-normalised co-engagement graph (models/embedding.py's default);
#  - "rp3beta-svd": the same without degree regularisation, i.e. RP3beta's app -> user -> app transition
#    probabilities P(u | i) P(j | u) (Paudel et al. 2016, alpha = 1) factorised: with F = V S the inner product
#    ranks j for i like [X^T D_user^-1 X]_ij deg(j)^(t - 1/2), RP3beta with beta = 1/2 - t (t the popularity
#    exponent), up to the rank truncation.
FAMILIES = (("cooccurrence-svd", {}), ("rp3beta-svd", {"degree_regularization": 0.0}))
POPULARITY_EXPONENTS = (0.0, 0.25, 0.5)
RANK_FRACTIONS = (1.0, 0.5)  # of embedding_dim - 1; a lower rank is zero-padded (same artifact dim)
# Then, for the best family and rank at the chosen dimension (below), flatter engagement (models/embedding.py's
# ``engagement_exponent``: strength^e, 0 = each engaged pair once), one refit each, at the exponents above. Where
# repeat clicks reflect habit rather than similarity (the taxonomy world) binary engagement measured +1.5% holdout
# recall@10 at rank 511 (0.322 -> 0.327); at rank 63 it made no difference, hence after the dimension.
ENGAGEMENT_EXPONENTS = (0.5, 0.0)
# From this many apps on selection narrows its grid (smaller catalogs keep the full one, byte for byte). Each
# factorisation of the fit sample costs about a sixth of the plain fit there (apps x rank^2 dense work: 14 CPU-s at 200K
# apps), so the engagement stage refits for binary engagement alone: of the two flatter exponents, 0.5 never beat 0 by
# more than 0.02% (0.3681 vs 0.3681, world-5k cold; 0 was ahead by 0.02% and 0.8% on MovieLens, 1.1% on world-5k and
# 0.5% at 200K synthetic apps on 4,000 validation users). And only the full rank is scored: half the rank scored 15-21%
# below it on world-5k and 34-46% below at 200K apps; truncation that deep helps only a catalog as small as MovieLens'.
LARGE_CATALOG_APPS = 50_000
LARGE_CATALOG_RANK_FRACTIONS = (1.0,)
LARGE_CATALOG_ENGAGEMENT_EXPONENTS = (0.0,)
# Then, for the best so far, popularity measured on recent engagement (models/embedding.py's
# ``popularity_recency``: decay time constants as fractions of the fit part's span) at these exponents. No refit: only
# the degrees change. Where what is popular moves (MovieLens 100K: new releases) this is the largest single gain
# measured (validation recall@10 0.378 -> 0.393, holdout 0.433 -> 0.443 at recency 0.1, exponent 0.5); in the
# taxonomy world, where tastes drift, recency 0.25 at exponent 0.25 gained 0.9% on validation.
POPULARITY_RECENCIES = (0.1, 0.25)
RECENT_POPULARITY_EXPONENTS = (0.25, 0.5, 0.75)
# Larger dimensions (multiples of the embedding_dim hyper-parameter), tried for the best family and exponent of the
# first stage, before engagement and recency: where similarity is local (a next app among the few nearest to the last
# one) a low rank blurs neighbourhoods, and more rank is what helps (taxonomy world: rank 63 -> 255 -> 511 took
# holdout recall@10 0.287 -> 0.316 -> 0.321; rank 1023 fell back to 0.317). Only while apps x dim stays within
# DIMENSION_CELLS (5K apps: up to 512 dims; from 23.5K apps on, 64 alone), so that the SVD, the index and serving's
# memory at scale do not grow.
DIMENSION_MULTIPLES = (2, 4, 8)
# A larger dimension costs index memory and search time in serving, so it is taken only when validation says it pays:
# recall@10 at least this much (relative) above the best so far. MovieLens 100K (binary engagement, recent popularity):
# 512 dims scored 0.1% above 64, within the split's noise; the taxonomy world: 0.288 -> 0.308 -> 0.321 -> 0.323 at
# 64 -> 512, each step more.
DIMENSION_MIN_GAIN = 0.005
# What each candidate in the manifest's selection record says about itself (besides family, rank and score).
SELECTED_KNOBS = ("degree_regularization", "engagement_exponent", "popularity_exponent", "popularity_recency",
                  "embedding_dim")
DIMENSION_CELLS = 3_000_000


def weighted_rankings(app_ids: list[str], query_app_ids: list[str], factors: np.ndarray,
                      weights: list[np.ndarray]) -> list[np.ndarray]:
    """For each per-app weighting w, every query app's top K (positions in ``app_ids``; padding for an app not among
    them), query i ranking app j by (F_i . F_j) w_j, itself excluded: one product F_q F^T for all weightings.

    That is how served vectors rank variants that differ only in their popularity term: with f = F degree^t
    (collaborative_factors), the asymmetric vectors rank j for i by f_i . f_j = degree_i^t (F_i . F_j) degree_j^t.
    """
    items = np.ascontiguousarray(factors.T, dtype=np.float32)
    weights = [np.asarray(weight, dtype=np.float32) for weight in weights]

    def weighted_scores(rows: np.ndarray):
        product = factors[rows].astype(np.float32) @ items
        weighted = np.empty_like(product)
        for weight in weights:
            yield np.multiply(product, weight, out=weighted)

    return query_top_k(app_ids, query_app_ids, K, weighted_scores, count=len(weights))


def validation_split(train: pd.DataFrame, fraction: float = VALIDATION_FRACTION) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation) inside the train part: the validation pairs are those engaged in its last ``fraction`` of time."""
    start, end = train["first_ts"].min(), train["last_ts"].max()
    cut = end - (end - start) * fraction
    return train[train["first_ts"] < cut], train[train["last_ts"] >= cut]


def candidate_dimensions(base: int, apps: int) -> list[int]:
    """The embedding dimensions selection may try beyond ``base``: its multiples while apps x dim <= DIMENSION_CELLS
    (and no more dimensions than apps: the rank cannot exceed them).

    None below the default dimension: asking for fewer is asking for a small model (cheaper serving, or the
    notebooks' deliberately weak champion), and it is kept as asked.
    """
    if base < DEFAULT_HYPERPARAMETERS["embedding_dim"]:
        return []
    return [base * multiple for multiple in DIMENSION_MULTIPLES
            if apps * base * multiple <= DIMENSION_CELLS and base * multiple <= apps]


def select_params(catalog: pd.DataFrame, interactions: pd.DataFrame, base: EmbeddingParams,
                  progress: Progress | None = None) -> tuple[EmbeddingParams, dict]:
    """The family and knobs with the best validation recall@10 (ties: the earlier candidate, today's default first;
    a larger dimension only when it gains DIMENSION_MIN_GAIN over the best so far).

    A coordinate search, each stage from the best so far: family x rank x popularity exponent (one factorisation per
    family, on the fit part; rank and exponent are read off it), each larger candidate dimension (one refit each),
    then at the chosen dimension flatter engagement x exponent (one refit each) and recent popularity x exponent (no
    refit); from LARGE_CATALOG_APPS on, the full rank and binary engagement alone. Candidates are scored on
    collaborative factors alone (the metadata blend does not change with them), all those of one factorisation and
    rank from one query x app product (``weighted_rankings``).
    Returns the chosen parameters and a record of every candidate's score for the manifest.
    """
    progress = progress or Progress.quiet()
    step = progress.child("validation")
    fit, validation = validation_split(interactions)
    app_ids = sorted(catalog["app_id"].astype(str).unique().tolist())
    max_queries = max(500, VALIDATION_SEARCH_CELLS // max(len(app_ids), 1))
    try:
        queries = build_queries(validation, seed=base.seed, max_users=VALIDATION_USERS,
                                max_queries_per_user=int(np.clip(max_queries // VALIDATION_USERS, 1, 10)))
    except EmptyHoldout as error:
        step.finish("no validation queries: defaults kept")
        return base, {"chosen": "default", "reason": f"no validation queries ({error})", "candidates": []}
    if len(fit) > VALIDATION_MAX_FIT_PAIRS:
        # integer codes of the sorted user ids (one hash pass), not string sets: the sample is the same users
        user_codes, users = pd.factorize(fit["user_id"], sort=True)
        kept = np.zeros(len(users), dtype=bool)
        kept[np.random.default_rng([base.seed, 7]).choice(
            len(users), size=int(len(users) * VALIDATION_MAX_FIT_PAIRS / len(fit)), replace=False)] = True
        fit = fit[kept[user_codes]]
    matrix = interaction_matrix(fit, app_ids, base.conversion_weight).matrix
    degrees_at: dict[float, np.ndarray] = {}  # popularity recency -> the fit part's popularity degrees
    candidates = []

    def score(family: str, spectrum: tuple[np.ndarray, np.ndarray], variants: list[EmbeddingParams]) -> None:
        """Validation recall@10 of variants of one factorisation and rank that differ only in their popularity term."""
        for params in variants:
            if params.popularity_recency not in degrees_at:
                degrees_at[params.popularity_recency] = popularity_degrees(fit, app_ids, matrix, params)
        unscaled = collaborative_factors(*spectrum, np.ones(len(app_ids)), replace(variants[0], popularity_exponent=0.0))
        rankings = weighted_rankings(app_ids, queries.query_app_ids, unscaled, [
            popularity_weights(degrees_at[params.popularity_recency], params.popularity_exponent) for params in variants])
        for params, ranking in zip(variants, rankings):
            recall = score_rankings(queries, ranking, app_ids, catalog_size=len(app_ids),
                                    ctr_predicted=np.zeros(0), ctr_observed=np.zeros(0)).metrics()["recall_at_10"]
            candidates.append({"family": family, **{knob: getattr(params, knob) for knob in SELECTED_KNOBS},
                               "factor_rank": params.factor_rank or params.embedding_dim - 1,
                               "recall_at_10": round(float(recall), 6), "params": params})

    def best(embedding_dim: int) -> dict:
        return max((numbered for numbered in enumerate(candidates) if numbered[1]["embedding_dim"] == embedding_dim),
                   key=lambda numbered: (numbered[1]["recall_at_10"], -numbered[0]))[1]

    spectra: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # one SVD per factorisation, whatever reads it

    def factorised(family: str, variants: list[EmbeddingParams]) -> None:
        key = (variants[0].degree_regularization, variants[0].engagement_exponent, variants[0].embedding_dim)
        if key not in spectra:
            spectra[key] = spectral_factors(matrix, variants[0])
        score(family, spectra[key], variants)

    def exponents(params: EmbeddingParams, values: tuple[float, ...]) -> list[EmbeddingParams]:
        return [replace(params, popularity_exponent=value) for value in values]

    large = len(app_ids) >= LARGE_CATALOG_APPS
    factor_dim = base.embedding_dim - 1
    for family, knobs in FAMILIES:
        for fraction in LARGE_CATALOG_RANK_FRACTIONS if large else RANK_FRACTIONS:
            rank = max(1, round(fraction * factor_dim))
            factorised(family, exponents(replace(base, **knobs, factor_rank=0 if rank == factor_dim else rank),
                                         POPULARITY_EXPONENTS))
    leader = best(base.embedding_dim)
    family = leader["family"]
    for dim in candidate_dimensions(base.embedding_dim, len(app_ids)):
        factorised(family, [replace(leader["params"], embedding_dim=dim, factor_rank=0)])
        if candidates[-1]["recall_at_10"] >= leader["recall_at_10"] * (1 + DIMENSION_MIN_GAIN):
            leader = candidates[-1]
    # the remaining knobs at the chosen dimension: what helps a rank-63 factorisation need not help a rank-511 one
    dim = leader["embedding_dim"]
    for engagement in LARGE_CATALOG_ENGAGEMENT_EXPONENTS if large else ENGAGEMENT_EXPONENTS:
        factorised(family, exponents(replace(leader["params"], engagement_exponent=engagement), POPULARITY_EXPONENTS))
    recent = best(dim)["params"]
    factorised(family, [variant for recency in POPULARITY_RECENCIES
                        for variant in exponents(replace(recent, popularity_recency=recency), RECENT_POPULARITY_EXPONENTS)])
    chosen_candidate = best(dim)
    chosen = chosen_candidate["params"]
    for candidate in candidates:
        candidate.pop("params")
    step.finish(f"{chosen_candidate['family']}, engagement exponent {chosen.engagement_exponent}, popularity exponent "
                f"{chosen.popularity_exponent} (recency {chosen.popularity_recency}), dimension {chosen.embedding_dim}, rank {chosen_candidate['factor_rank']}: "
                f"validation recall@10 {chosen_candidate['recall_at_10']:.4f}")
    return chosen, {"chosen": chosen_candidate, "candidates": candidates, "base_embedding_dim": base.embedding_dim,
                    "dimensions_tried": [base.embedding_dim, *candidate_dimensions(base.embedding_dim, len(app_ids))],
                    "fit_pairs": len(fit),
                    "validation_pairs": len(validation), "validation_users": queries.n_users,
                    "validation_queries": queries.n_queries, "fraction": VALIDATION_FRACTION}


def code_version() -> str:
    """``<package version>+<git sha>``; the sha comes from APPSIM_GIT_SHA (set in images) or git, else 'unknown'."""
    try:
        package = metadata.version("appsim")
    except metadata.PackageNotFoundError:
        package = "unknown"
    sha = os.environ.get("APPSIM_GIT_SHA", "")
    if not sha:
        try:
            found = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                                   capture_output=True, text=True, timeout=5, check=True)
            sha = found.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            sha = "unknown"
    return f"{package}+{sha or 'unknown'}"


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise TrainingDataError(f"{what} lacks column(s) {', '.join(missing)}; re-run PrepareFeedback with this code version")


def train_artifact(prepared_uri: str, catalog_uri: str, *, embedding_dim: int, seed: int, index_type: str = "auto",
                   exact_index_max_apps: int = EXACT_MAX_APPS, progress: Progress | None = None) -> ModelArtifact:
    """Train embeddings, build and check the index, and assemble the (unsaved) artifact (on one thread:
    models/embedding.py's ``single_threaded`` says why)."""
    with single_threaded():
        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type '{index_type}' is not one of {', '.join(INDEX_TYPES)}")
        progress = progress or Progress("train")
        manifest_uri = storage.join(prepared_uri, dataset.MANIFEST)
        if not storage.exists(manifest_uri):
            raise FileNotFoundError(f"{manifest_uri} is missing: run PrepareFeedback first (appsim retrain runs it)")
        prepared_manifest = storage.read_json(manifest_uri)
        if prepared_manifest.get("status", "succeeded") != "succeeded":
            raise TrainingDataError(
                f"the prepared data at {prepared_uri} comes from a failed PrepareFeedback run "
                f"({prepared_manifest.get('error', 'no error recorded')}); fix that run before training"
            )
        interactions = dataset.read_table(prepared_uri, dataset.TRAIN_INTERACTIONS)
        _require_columns(interactions, dataset.INTERACTION_COLUMNS, dataset.TRAIN_INTERACTIONS)
        app_stats = dataset.read_table(prepared_uri, dataset.TRAIN_APP_STATS)
        _require_columns(app_stats, dataset.APP_STATS_COLUMNS, dataset.TRAIN_APP_STATS)
        catalog = read_catalog(catalog_uri)

        params, selection = select_params(catalog, interactions, EmbeddingParams(embedding_dim=embedding_dim, seed=seed),
                                          progress)
        trained = train_embeddings(catalog, interactions, params, progress)
        index, index_info = build_index(trained.embeddings, index_type, exact_index_max_apps, seed, progress=progress,
                                       item_vectors=trained.item_vectors)

        in_catalog = app_stats["app_id"].astype(str).isin(set(trained.app_ids))
        stats = app_stats.loc[in_catalog].assign(app_id=lambda f: f["app_id"].astype(str)).sort_values("app_id")
        manifest = {
            "trainer": TRAINER_NAME,
            "seed": seed,
            "parameters": {**params.to_dict(), "index_type": index_type, "exact_index_max_apps": exact_index_max_apps},
            "code_version": code_version(),
            "training_window": prepared_manifest.get("window"),
            "event_counts": prepared_manifest.get("counts"),
            "prepared_uri": storage.normalize(prepared_uri),
            "index": index_info,
            "warm_apps": trained.summary["warm_apps"],
            "cold_apps": trained.summary["cold_apps"],
            "training": trained.summary,
            "selection": selection,
        }
        return ModelArtifact(
            app_ids=trained.app_ids,
            embeddings=trained.embeddings,
            index=index,
            encoder=trained.encoder.to_json(),
            encoder_weights=trained.encoder.weights_array(),
            app_stats=stats.reset_index(drop=True),
            manifest=manifest,
        )


def run(prepared_uri: str, catalog_uri: str, output_uri: str, *, embedding_dim: int, seed: int,
        index_type: str = "auto", exact_index_max_apps: int = EXACT_MAX_APPS, progress: Progress | None = None) -> dict:
    """Train and write ``<output_uri>/model.tar.gz``; returns the artifact manifest."""
    artifact = train_artifact(prepared_uri, catalog_uri, embedding_dim=embedding_dim, seed=seed, index_type=index_type,
                              exact_index_max_apps=exact_index_max_apps, progress=progress)
    artifact.save_tarball(storage.join(output_uri, layout.MODEL_TARBALL))
    return artifact.manifest


def parse_hyperparameters(raw: dict[str, Any]) -> dict[str, Any]:
    """SageMaker hyper-parameters (often all strings, sometimes JSON-quoted) -> typed values with defaults."""
    # The SageMaker SDK adds its own `sagemaker_*` entries; they are not ours to interpret.
    ours = {name: value for name, value in raw.items() if not name.startswith("sagemaker_")}
    unknown = sorted(set(ours) - set(HYPERPARAMETERS))
    if unknown:
        raise ValueError(f"unknown hyper-parameter(s) {', '.join(unknown)}; known: {', '.join(HYPERPARAMETERS)}")
    values = dict(DEFAULT_HYPERPARAMETERS)
    for name, value in ours.items():
        if isinstance(value, str):
            try:
                value = json.loads(value)  # '"auto"' -> 'auto', '64' -> 64
            except json.JSONDecodeError:
                pass
        try:
            values[name] = HYPERPARAMETERS[name](value)
        except (TypeError, ValueError):
            raise ValueError(f"hyper-parameter {name}={value!r} is not a valid {HYPERPARAMETERS[name].__name__}") from None
    return values


def _read_raw_hyperparameters() -> dict[str, Any]:
    if os.environ.get("SM_HPS"):
        return json.loads(os.environ["SM_HPS"])
    path = Path(HYPERPARAMETERS_FILE)
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> int:
    try:
        hps = parse_hyperparameters(_read_raw_hyperparameters())
        catalog = os.environ.get("SM_CHANNEL_CATALOG") or hps.get("catalog_uri") or "/opt/ml/input/data/catalog"
        artifact = train_artifact(
            os.environ.get("SM_CHANNEL_PREPARED", "/opt/ml/input/data/prepared"),
            catalog,
            embedding_dim=hps["embedding_dim"],
            seed=hps["seed"],
            index_type=hps["index_type"],
            exact_index_max_apps=hps["exact_index_max_apps"],
        )
        model_dir = artifact.save(os.environ.get("SM_MODEL_DIR", "/opt/ml/model"))
    except (ValueError, FileNotFoundError) as error:
        print(f"TrainEmbeddings failed: {error}", file=sys.stderr)
        if FAILURE_FILE.parent.is_dir():  # SageMaker shows this file as the job's failure reason
            FAILURE_FILE.write_text(str(error))
        return 1
    index = artifact.manifest["index"]
    print(f"TrainEmbeddings wrote {len(artifact.app_ids):,} apps to {model_dir} "
          f"(index {index['type']}, recall@10 vs exact {index['recall_at_10_vs_exact']})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
