import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models.artifact import ModelArtifact
from models.dataset import APP_STATS_COLUMNS
from models.predictor import PRIOR_STRENGTH_CAP, Neighbor, Predictor, UnknownApp
from tests.evaluation import builders


@pytest.fixture(scope="module")
def clustered() -> Predictor:
    ids = builders.app_ids()
    return Predictor(builders.make_artifact(ids, builders.clustered_embeddings(ids)))


def test_similar_returns_k_neighbours_best_first_never_the_query(clustered):
    neighbours = clustered.similar("app-2-3", k=7)
    assert len(neighbours) == 7
    assert all(isinstance(n, Neighbor) for n in neighbours)
    assert "app-2-3" not in [n.app_id for n in neighbours]
    assert all(builders.cluster_of(n.app_id) == 2 for n in neighbours)  # its 7 cluster mates
    scores = [n.score for n in neighbours]
    assert scores == sorted(scores, reverse=True)


def test_similar_many_agrees_with_similar_and_pads_unknown_apps(clustered):
    ids = ["app-0-0", "not-an-app", "app-4-7"]
    positions, scores = clustered.similar_many(ids, k=5)
    assert positions.shape == scores.shape == (3, 5)
    for row, app_id in ((0, "app-0-0"), (2, "app-4-7")):
        expected = clustered.similar(app_id, k=5)
        assert [clustered.artifact.app_ids[p] for p in positions[row]] == [n.app_id for n in expected]
        assert scores[row] == pytest.approx([n.score for n in expected])
    assert (positions[1] == -1).all() and np.isneginf(scores[1]).all()


def test_k_larger_than_the_catalog_is_padded():
    ids = ["app-0-0", "app-0-1", "app-1-0"]
    predictor = Predictor(builders.make_artifact(ids, builders.random_embeddings(ids)))
    positions, _ = predictor.similar_many(["app-0-0"], k=5)
    assert sorted(positions[0][:2].tolist()) == [1, 2] and (positions[0][2:] == -1).all()
    assert {n.app_id for n in predictor.similar("app-0-0", k=5)} == {"app-0-1", "app-1-0"}


@pytest.mark.parametrize("k", [0, 101, -3, True, 2.5])
def test_k_outside_1_to_100_is_refused(clustered, k):
    with pytest.raises(ValueError, match="from 1 to 100"):
        clustered.similar("app-0-0", k=k)


def test_unknown_app_names_the_id_and_the_way_out(clustered):
    with pytest.raises(UnknownApp) as caught:
        clustered.similar("no-such-app")
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "'no-such-app'" in message and "POST /v1/similar" in message and "40 apps" in message
    with pytest.raises(UnknownApp):
        clustered.predict("no-such-app")


# -- predictions: a small case computed by hand -------------------------------------------
def hand_artifact(with_own_stats: bool = True, neighbour_impressions: tuple[int, int] = (200, 100)) -> ModelArtifact:
    ids = ["a", "b", "c"]
    # from a: b has similarity 0.8, c has -0.6 (a negative similarity carries no weight)
    embeddings = np.array([[1.0, 0.0], [0.8, 0.6], [-0.6, 0.8]], dtype=np.float32)
    rows = [
        ("b", neighbour_impressions[0], 20 if neighbour_impressions[0] else 0, 5 if neighbour_impressions[0] else 0),
        ("c", neighbour_impressions[1], 50 if neighbour_impressions[1] else 0, 10 if neighbour_impressions[1] else 0),
    ]
    if with_own_stats:
        rows.insert(0, ("a", 50, 1, 0))
    stats_table = pd.DataFrame(
        [{"app_id": a, "impressions": i, "clicks": c, "conversions": v, "revenue": 0.0, "ctr": 0.0, "cvr": 0.0}
         for a, i, c, v in rows],
        columns=list(APP_STATS_COLUMNS),
    )
    return builders.make_artifact(ids, embeddings, stats_table)


def test_prediction_is_the_neighbour_prior_updated_with_the_apps_own_clicks():
    prediction = Predictor(hand_artifact()).predict("a", k=2)
    # CTR prior: weighted pooled rate (0.8*20)/(0.8*200) = 0.1, strength min(0.8*200, 100) = 100
    alpha, beta = 0.1 * 100 + 1, 0.9 * 100 + 49
    assert prediction.ctr == pytest.approx(alpha / (alpha + beta))
    assert prediction.ctr_low == pytest.approx(stats.beta.ppf(0.025, alpha, beta))
    assert prediction.ctr_high == pytest.approx(stats.beta.ppf(0.975, alpha, beta))
    # CVR (conversions per click) prior: (0.8*5)/(0.8*20) = 0.25 with strength 16; own: 0 of 1 click
    alpha, beta = 0.25 * 16 + 0, 0.75 * 16 + 1
    assert prediction.cvr == pytest.approx(alpha / (alpha + beta))
    assert prediction.cvr_low < prediction.cvr < prediction.cvr_high
    assert [n.app_id for n in prediction.neighbors] == ["b", "c"]
    assert prediction.support_impressions == 50 + 200 + 100


def test_an_app_without_own_statistics_gets_the_neighbour_prior():
    prediction = Predictor(hand_artifact(with_own_stats=False)).predict("a", k=2)
    assert prediction.ctr == pytest.approx(0.1)
    assert prediction.ctr_low == pytest.approx(stats.beta.ppf(0.025, 10, 90))
    assert prediction.support_impressions == 300


def test_neighbours_without_impressions_fall_back_to_the_artifact_wide_rate():
    artifact = hand_artifact(neighbour_impressions=(0, 0))
    predictor = Predictor(artifact)
    prediction = predictor.predict("a", k=2)
    assert predictor.global_ctr == pytest.approx(1 / 50)
    alpha, beta = 1 / 50 * 2 + 1, 49 / 50 * 2 + 49
    assert prediction.ctr == pytest.approx(alpha / (alpha + beta))


def test_much_own_data_outweighs_the_capped_prior(clustered):
    # every app has 1,000 impressions at its cluster's CTR; its 7 neighbours are its cluster mates
    prediction = clustered.predict("app-3-1", k=7)
    assert prediction.ctr == pytest.approx(builders.cluster_ctr(3), abs=1e-9)
    # the interval is the posterior of 80 clicks in 1,000 impressions plus at most 100 pseudo-impressions
    alpha = builders.cluster_ctr(3) * PRIOR_STRENGTH_CAP + 80
    beta = (1 - builders.cluster_ctr(3)) * PRIOR_STRENGTH_CAP + 920
    assert prediction.ctr_low == pytest.approx(stats.beta.ppf(0.025, alpha, beta))
    # with 3 neighbours from other clusters in the prior, its own data still dominates
    assert clustered.predict("app-3-1", k=10).ctr == pytest.approx(builders.cluster_ctr(3), abs=0.01)


def test_predict_many_matches_predict(clustered):
    many = clustered.predict_many(["app-0-1", "app-4-2"], k=5)
    assert many == [clustered.predict("app-0-1", k=5), clustered.predict("app-4-2", k=5)]


def test_predict_needs_exactly_one_of_app_id_and_metadata(clustered):
    with pytest.raises(ValueError, match="exactly one"):
        clustered.predict()
    with pytest.raises(ValueError, match="exactly one"):
        clustered.predict("app-0-0", metadata={"category": "games"})


# -- cold start through the metadata encoder --------------------------------------------------
@pytest.fixture(scope="module")
def with_encoder(tmp_path_factory) -> Predictor:
    """A model trained by the real trainer on clustered co-engagement, the category naming the cluster."""
    from models.embedding import EmbeddingParams, train_embeddings

    ids = builders.app_ids()
    catalog = pd.DataFrame({
        "app_id": ids,
        "category": [f"cat{builders.cluster_of(a)}" for a in ids],
        "features": [["ads"] for _ in ids],
        "description": ["" for _ in ids],
    })
    trained = train_embeddings(catalog, builders.interactions(ids, 200, 3, seed=0, user_prefix="u"),
                               EmbeddingParams(embedding_dim=8, seed=0))
    artifact = builders.make_artifact(trained.app_ids, trained.embeddings)
    artifact.encoder, artifact.encoder_weights = trained.encoder.to_json(), trained.encoder.weights_array()
    # through the real format: what serving loads
    uri = artifact.save_tarball(str(tmp_path_factory.mktemp("model") / "model.tar.gz"))
    return Predictor(ModelArtifact.load_uri(uri))


def test_similar_to_metadata_finds_the_apps_of_the_same_kind(with_encoder):
    neighbours = with_encoder.similar_to_metadata({"category": "cat1", "features": ["ads"]}, k=5)
    assert len(neighbours) == 5
    assert all(builders.cluster_of(n.app_id) == 1 for n in neighbours)


def test_predict_for_a_new_app_uses_its_metadata_neighbours(with_encoder):
    prediction = with_encoder.predict(metadata={"category": "cat4"}, k=5)
    assert prediction.ctr == pytest.approx(builders.cluster_ctr(4))  # the neighbours' pooled rate, no own data
    assert prediction.ctr_low < prediction.ctr < prediction.ctr_high
    assert prediction.support_impressions == 5 * 1000
