"""TrainEmbeddings: the run() core on a prepared folder, and the SageMaker Training entry point."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.baselines import embedding_rankings
from models import dataset, storage
from models.artifact import EMBEDDINGS, ModelArtifact
from models.catalog import read_catalog
from models.embedding import TRAINER_NAME, TrainingDataError, asymmetric_vectors, popularity_weights
from models.features import MetadataEncoder
from models.progress import Progress
from steps import train
from tests.models.coengagement_world import write_world

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"))


def _run(world, output: Path, **overrides):
    prepared_uri, catalog_uri = world
    kwargs = {"embedding_dim": 16, "seed": 11, "progress": Progress.quiet()} | overrides
    return train.run(prepared_uri, catalog_uri, storage.normalize(output), **kwargs)


def test_run_writes_an_artifact_covering_every_catalog_app(world, tmp_path):
    manifest = _run(world, tmp_path / "model")
    artifact = ModelArtifact.load_uri(storage.normalize(tmp_path / "model" / "model.tar.gz"))
    assert len(artifact.app_ids) == 140 and artifact.app_ids == sorted(artifact.app_ids)
    # embedding_dim is the base dimension; validation may pick a multiple of it (steps.train.candidate_dimensions)
    assert artifact.dim == manifest["parameters"]["embedding_dim"] in (16, *train.candidate_dimensions(16, 140))
    assert artifact.index.ntotal == 140
    assert manifest["trainer"] == TRAINER_NAME and manifest["seed"] == 11
    assert manifest["warm_apps"] == 120 and manifest["cold_apps"] == 20
    assert manifest["training_window"]["start"].startswith("2026-01-01")
    assert manifest["event_counts"]["events_by_type"]["click"] > 0
    assert manifest["parameters"]["index_type"] == "auto"
    assert manifest["index"]["type"] == "flat" and manifest["index"]["recall_at_10_vs_exact"] == 1.0
    assert manifest["code_version"].startswith("0.1.0+")
    # Stats are kept for catalog apps that had some; cold apps have none.
    assert set(artifact.app_stats["app_id"]) <= set(artifact.app_ids)
    assert len(artifact.app_stats) == 120
    # The stored encoder embeds a cold app exactly as training did.
    encoder = MetadataEncoder.from_artifact(artifact)
    assert encoder.embed([{"category": "travel", "description": "flights hotels"}]).shape == (1, artifact.dim)


def test_same_inputs_and_seed_give_byte_identical_embeddings(world, tmp_path):
    digests = []
    for name in ("first", "second"):
        _run(world, tmp_path / name)
        with tarfile.open(tmp_path / name / "model.tar.gz") as tar:
            digests.append(hashlib.sha256(tar.extractfile(EMBEDDINGS).read()).hexdigest())
    assert digests[0] == digests[1]


def test_forced_approximate_index_is_measured(world, tmp_path):
    manifest = _run(world, tmp_path / "model", index_type="ivf")
    assert manifest["index"]["type"] == "ivf"
    assert manifest["index"]["recall_at_10_vs_exact"] >= 0.9
    assert manifest["index"]["recall_queries"] == 140


def test_missing_inputs_name_the_fix(world, tmp_path):
    prepared_uri, catalog_uri = world
    with pytest.raises(FileNotFoundError, match="run PrepareFeedback first"):
        train.run(storage.normalize(tmp_path / "nothing"), catalog_uri, storage.normalize(tmp_path / "out"),
                  embedding_dim=8, seed=1)
    with pytest.raises(FileNotFoundError, match="catalog"):
        train.run(prepared_uri, storage.normalize(tmp_path / "no-catalog"), storage.normalize(tmp_path / "out"),
                  embedding_dim=8, seed=1)
    broken = storage.normalize(tmp_path / "broken")
    for name in (dataset.TRAIN_APP_STATS, dataset.MANIFEST):
        storage.write_bytes(storage.join(broken, name), storage.read_bytes(storage.join(prepared_uri, name)))
    interactions = dataset.read_table(prepared_uri, dataset.TRAIN_INTERACTIONS).drop(columns=["conversions"])
    dataset.write_table(interactions, broken, dataset.TRAIN_INTERACTIONS)
    with pytest.raises(TrainingDataError, match="conversions"):
        train.run(broken, catalog_uri, storage.normalize(tmp_path / "out"), embedding_dim=8, seed=1)
    storage.write_json(storage.join(broken, dataset.MANIFEST), {"status": "failed", "error": "TooManyBadEvents: 9%"})
    with pytest.raises(TrainingDataError, match="failed PrepareFeedback run .*TooManyBadEvents"):
        train.run(broken, catalog_uri, storage.normalize(tmp_path / "out"), embedding_dim=8, seed=1)


def test_hyperparameters_arrive_as_strings_and_are_coerced():
    values = train.parse_hyperparameters({"embedding_dim": "32", "seed": "7", "index_type": '"hnsw"',
                                          "sagemaker_program": "x"})
    assert values == {"embedding_dim": 32, "seed": 7, "index_type": "hnsw", "exact_index_max_apps": 100_000}
    with pytest.raises(ValueError, match="unknown hyper-parameter.*learning_rate"):
        train.parse_hyperparameters({"learning_rate": "0.1"})
    with pytest.raises(ValueError, match="embedding_dim='big' is not a valid int"):
        train.parse_hyperparameters({"embedding_dim": "big"})


def test_sagemaker_entry_point_writes_a_loadable_model_folder(world, tmp_path):
    prepared_uri, catalog_uri = world
    model_dir = tmp_path / "opt-ml-model"
    env = os.environ | {
        "SM_CHANNEL_PREPARED": str(storage.local_path(prepared_uri)),
        "SM_CHANNEL_CATALOG": str(storage.local_path(catalog_uri)),
        "SM_MODEL_DIR": str(model_dir),
        "SM_HPS": json.dumps({"embedding_dim": "8", "seed": "5", "index_type": "auto",
                              "exact_index_max_apps": "100000"}),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run([sys.executable, "-m", "steps.train"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "truncated SVD" in done.stderr and "index build" in done.stderr  # progress lines
    assert "index build (flat): 140 vectors, exact search" in done.stderr  # no recall "measured" on 0 queries
    artifact = ModelArtifact.load(model_dir)  # verifies every checksum
    assert artifact.dim == 8 and len(artifact.app_ids) == 140
    assert np.allclose(np.linalg.norm(artifact.embeddings, axis=1), 1.0, atol=1e-5)

    env["SM_HPS"] = json.dumps({"embedding_dim": "8", "colour": "blue"})
    failed = subprocess.run([sys.executable, "-m", "steps.train"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    assert failed.returncode == 1 and "unknown hyper-parameter(s) colour" in failed.stderr


def test_validation_split_is_carved_in_time_from_the_train_part():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    frame = pd.DataFrame({"user_id": ["a", "b", "c"], "app_id": ["x", "y", "z"], "clicks": 1, "conversions": 0,
                          "first_ts": [start, start + pd.Timedelta(days=9), start + pd.Timedelta(days=1)],
                          "last_ts": [start + pd.Timedelta(days=1), start + pd.Timedelta(days=10),
                                      start + pd.Timedelta(days=9)]})
    fit, validation = train.validation_split(frame, 0.2)  # cut at day 8
    assert fit["user_id"].tolist() == ["a", "c"] and validation["user_id"].tolist() == ["b", "c"]


def test_family_and_knobs_are_chosen_by_validation_recall_and_recorded(world, tmp_path):
    manifest = _run(world, tmp_path / "model", embedding_dim=64)
    selection = manifest["selection"]
    candidates = selection["candidates"]
    assert {c["family"] for c in candidates} == {"cooccurrence-svd", "rp3beta-svd"}
    larger = train.candidate_dimensions(64, 140)
    assert larger == [128]
    first_stage = len(train.FAMILIES) * len(train.POPULARITY_EXPONENTS) * len(train.RANK_FRACTIONS)
    engagement = len(train.ENGAGEMENT_EXPONENTS) * len(train.POPULARITY_EXPONENTS)
    recent = len(train.POPULARITY_RECENCIES) * len(train.RECENT_POPULARITY_EXPONENTS)
    assert len(candidates) == first_stage + len(larger) + engagement + recent

    def leader_of(stage: list[dict]) -> dict:
        return next(c for c in stage if c["recall_at_10"] == max(b["recall_at_10"] for b in stage))

    # the larger dimensions are tried, at full rank, for the first stage's best; one is kept if it gains enough
    leader = leader_of(candidates[:first_stage])
    assert all(c["popularity_recency"] == 0 and c["engagement_exponent"] == 1 for c in candidates[:first_stage])
    dims = candidates[first_stage:first_stage + len(larger)]
    assert [(c["embedding_dim"], c["factor_rank"], c["family"], c["popularity_exponent"]) for c in dims] == \
        [(dim, dim - 1, leader["family"], leader["popularity_exponent"]) for dim in larger]
    for candidate in dims:
        if candidate["recall_at_10"] >= leader["recall_at_10"] * (1 + train.DIMENSION_MIN_GAIN):
            leader = candidate
    # then, at that dimension and rank, flatter engagement ...
    stage = candidates[first_stage + len(larger):first_stage + len(larger) + engagement]
    assert {(c["family"], c["embedding_dim"], c["factor_rank"], c["engagement_exponent"], c["popularity_exponent"])
            for c in stage} == \
        {(leader["family"], leader["embedding_dim"], leader["factor_rank"], exponent, popularity)
         for exponent in train.ENGAGEMENT_EXPONENTS for popularity in train.POPULARITY_EXPONENTS}
    # ... and recent popularity for the best so far at that dimension
    at_dim = [c for c in candidates[:first_stage + len(larger) + engagement] if c["embedding_dim"] == leader["embedding_dim"]]
    leader = leader_of(at_dim)
    stage = candidates[first_stage + len(larger) + engagement:]
    assert {(c["embedding_dim"], c["factor_rank"], c["engagement_exponent"], c["popularity_recency"],
             c["popularity_exponent"]) for c in stage} == \
        {(leader["embedding_dim"], leader["factor_rank"], leader["engagement_exponent"], recency, exponent)
         for recency in train.POPULARITY_RECENCIES for exponent in train.RECENT_POPULARITY_EXPONENTS}
    # the chosen one is the first with the best score at that dimension, and the manifest's parameters say so
    first_best = leader_of([c for c in candidates if c["embedding_dim"] == leader["embedding_dim"]])
    assert selection["chosen"] == first_best and 0 < first_best["recall_at_10"] <= 1
    for knob in ("popularity_exponent", "embedding_dim", "popularity_recency", "engagement_exponent",
                 "degree_regularization"):
        assert manifest["parameters"][knob] == first_best[knob]
    assert selection["validation_users"] > 0 and selection["fit_pairs"] > 0
    assert selection["base_embedding_dim"] == 64 and selection["dimensions_tried"] == [64, 128]


def test_a_large_catalog_scores_the_full_rank_and_binary_engagement_alone(world, monkeypatch):
    prepared_uri, catalog_uri = world
    catalog = read_catalog(catalog_uri)
    interactions = dataset.read_table(prepared_uri, dataset.TRAIN_INTERACTIONS)
    base = train.EmbeddingParams(embedding_dim=16, seed=11)
    _, small = train.select_params(catalog, interactions, base)
    monkeypatch.setattr(train, "LARGE_CATALOG_APPS", len(catalog))  # this world's 140 apps stand for a large catalog
    _, large = train.select_params(catalog, interactions, base)
    assert {c["factor_rank"] for c in small["candidates"]} == {15, 8}
    assert {c["factor_rank"] for c in large["candidates"]} == {15}
    assert sorted({c["engagement_exponent"] for c in small["candidates"]}) == [0.0, 0.5, 1.0]
    assert sorted({c["engagement_exponent"] for c in large["candidates"]}) == [0.0, 1.0]
    first_stage = len(train.FAMILIES) * len(train.POPULARITY_EXPONENTS)
    recent = len(train.POPULARITY_RECENCIES) * len(train.RECENT_POPULARITY_EXPONENTS)
    assert len(large["candidates"]) == first_stage + len(train.POPULARITY_EXPONENTS) + recent
    # the same validation queries score both: the full-rank candidates of the first stage score the same
    assert large["validation_queries"] == small["validation_queries"] > 0
    assert all(candidate in small["candidates"] for candidate in large["candidates"][:first_stage])


def test_larger_dimensions_are_tried_only_while_the_catalog_is_small():
    assert train.candidate_dimensions(64, 5_000) == [128, 256, 512]
    assert train.candidate_dimensions(64, 20_000) == [128]
    assert train.candidate_dimensions(64, 200_000) == []
    assert train.candidate_dimensions(64, 300) == [128, 256]  # never more dimensions than apps
    assert train.candidate_dimensions(16, 5_000) == []  # a small model asked for is kept small


def test_weighted_rankings_rank_as_the_served_vectors_do():
    rng = np.random.default_rng(5)
    apps = [f"app{i:04d}" for i in range(3_000)]
    factors = rng.standard_normal((len(apps), 12))
    factors[7] = 0.0  # an app the fit part never saw: scores 0 against every query
    degrees = rng.integers(0, 50, len(apps)).astype(float)
    queries = [apps[i] for i in rng.integers(8, len(apps), 500)] + ["not-in-the-catalog"]
    exponents = (0.0, 0.5, 1.0)
    rankings = train.weighted_rankings(apps, queries, factors, [popularity_weights(degrees, t) for t in exponents])
    for exponent, ranking in zip(exponents, rankings):
        query_side, item_side = asymmetric_vectors(factors * popularity_weights(degrees, exponent)[:, None])
        served = embedding_rankings("served", apps, query_side, queries, train.K, item_side)
        assert ranking.shape == served.rankings.shape == (len(queries), train.K)
        assert (ranking[:, 0] == served.rankings[:, 0]).all()
        assert (np.sort(ranking, axis=1) == np.sort(served.rankings, axis=1)).all()
        assert (ranking[-1] == -1).all()  # an unknown query app is never ranked
    assert not (rankings[0] == rankings[2]).all()  # the weighting changes the neighbours


def test_without_validation_queries_the_defaults_are_kept_and_the_reason_recorded():
    start = pd.Timestamp("2026-01-01", tz="UTC")
    catalog = pd.DataFrame({"app_id": ["x", "y", "z"], "category": "c", "region": "r", "pricing_model": "free",
                            "features": [["f"]] * 3, "description": "d", "avg_rating": 4.0})
    # one app per user in the validation part: nothing to evaluate similarity on
    frame = pd.DataFrame({"user_id": ["a", "a", "b"], "app_id": ["x", "y", "z"], "clicks": 1, "conversions": 0,
                          "first_ts": [start, start, start + pd.Timedelta(days=9)],
                          "last_ts": [start, start, start + pd.Timedelta(days=10)]})
    base = train.EmbeddingParams(embedding_dim=4, seed=1)
    chosen, selection = train.select_params(catalog, frame, base)
    assert chosen == base and selection["chosen"] == "default" and "no validation queries" in selection["reason"]
