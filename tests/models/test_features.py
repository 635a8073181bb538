"""MetadataEncoder: tokens, vocabulary bounds, the ridge projection, cold-start embedding and persistence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.features import EncoderSettings, MetadataEncoder, MetadataError, tokenize
from tests.models.coengagement_world import CATEGORIES, make_world


def _fitted_encoder(catalog: pd.DataFrame, settings: EncoderSettings | None = None) -> MetadataEncoder:
    """An encoder fitted to map each app to a one-hot of its category (a target the metadata explains)."""
    tokens = tokenize(catalog)
    encoder = MetadataEncoder.fit_vocabulary(tokens, settings)
    targets = np.zeros((len(catalog), 8))
    targets[np.arange(len(catalog)), catalog["category"].map(CATEGORIES.index).to_numpy()] = 1.0
    return encoder.fit(encoder.features(tokens), targets, np.ones(len(catalog)))


def test_tokens_cover_every_metadata_field_and_tolerate_missing_values():
    rows = [
        {"category": "Puzzle ", "region": "us", "pricing_model": "free", "features": np.array(["Levels", "hints"]),
         "description": "The best relaxing puzzle, puzzle again!", "avg_rating": 4.2},
        {"category": None, "features": float("nan"), "description": None, "avg_rating": float("nan")},
    ]
    full, empty = tokenize(rows)
    assert full == ["category=puzzle", "region=us", "pricing=free", "feature=hints", "feature=levels",
                    "word=again", "word=best", "word=puzzle", "word=relaxing", "rating=4"]
    assert empty == []
    # A DataFrame (column-wise path) gives the same tokens as dicts.
    assert tokenize(pd.DataFrame(rows[:1])) == [full]


def test_vocabulary_is_bounded_and_drops_rare_and_ubiquitous_words():
    catalog = pd.DataFrame({
        "app_id": [f"a{i}" for i in range(10)],
        "category": ["games"] * 10,
        "description": [f"everywhere common{i % 3} unique{i}" for i in range(10)],
    })
    encoder = MetadataEncoder.fit_vocabulary(tokenize(catalog), EncoderSettings(max_words=2))
    words = [t for t in encoder.vocabulary if t.startswith("word=")]
    assert len(words) == 2                      # bounded
    assert "word=everywhere" not in words       # in every app: no signal
    assert not any("unique" in w for w in words)  # in one app only
    assert "category=games" in encoder.vocabulary  # one-hot tokens are kept however common


def test_one_hot_groups_keep_their_most_frequent_values_up_to_the_bound():
    catalog = pd.DataFrame({"category": ["games"] * 3 + ["finance"] * 2 + ["travel"]})
    encoder = MetadataEncoder.fit_vocabulary(tokenize(catalog), EncoderSettings(max_one_hot=2))
    assert [t for t in encoder.vocabulary if t.startswith("category=")] == ["category=finance", "category=games"]


def test_features_normalise_each_group_so_long_descriptions_do_not_drown_the_category():
    catalog = pd.DataFrame({
        "category": ["games", "games", "finance"],
        "description": ["alpha beta gamma delta", "alpha beta gamma delta", "alpha beta"],
    })
    encoder = MetadataEncoder.fit_vocabulary(tokenize(catalog), EncoderSettings(min_document_frequency=1,
                                                                                 max_document_fraction=1.0))
    features = encoder.features(tokenize(catalog)).toarray()
    words = [i for i, t in enumerate(encoder.vocabulary) if t.startswith("word=")]
    categories = [i for i, t in enumerate(encoder.vocabulary) if t.startswith("category=")]
    assert np.allclose(np.linalg.norm(features[:, words], axis=1), 1.0)
    assert np.allclose(np.linalg.norm(features[:, categories], axis=1), 1.0)
    assert np.all(features[:, 0] == 1.0)  # bias


def test_embed_maps_metadata_to_its_category_and_ignores_unknown_tokens():
    catalog, _, _ = make_world(warm_per_cluster=10, cold_per_cluster=0, users=10)
    encoder = _fitted_encoder(catalog)
    vectors = encoder.embed([
        {"category": "finance", "features": ["budgeting", "never-seen-tag"], "description": "money unheardofword"},
        {"category": "no-such-category", "features": ["workouts", "coaching"], "description": "training cardio"},
        {"description": "trip flights hotels"},   # other fields missing
    ])
    assert vectors.dtype == np.float32 and vectors.shape == (3, 8)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert list(vectors[:, :4].argmax(axis=1)) == [CATEGORIES.index(c) for c in ("finance", "fitness", "travel")]


def test_embed_refuses_metadata_without_any_known_field():
    catalog, _, _ = make_world(warm_per_cluster=5, cold_per_cluster=0, users=5)
    encoder = _fitted_encoder(catalog)
    with pytest.raises(MetadataError, match="category, region, pricing_model, features, description, avg_rating"):
        encoder.embed([{"category": "puzzle"}, {"name": "only a name", "features": []}])
    assert issubclass(MetadataError, ValueError)


def test_json_round_trip_gives_identical_embeddings():
    catalog, _, _ = make_world(warm_per_cluster=8, cold_per_cluster=2, users=5)
    encoder = _fitted_encoder(catalog)
    data = json.loads(json.dumps(encoder.to_json()))
    restored = MetadataEncoder.from_json(data, encoder.weights_array())
    assert np.array_equal(restored.embed(catalog), encoder.embed(catalog))
    with pytest.raises(MetadataError, match="rows"):
        MetadataEncoder.from_json(data, encoder.weights_array()[:-1])
