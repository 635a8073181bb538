"""MetadataEncoder: tokens, vocabulary bounds, the ridge projection, cold-start embedding and persistence.

scikit-learn is the oracle for the vocabulary, the IDF weights and the features (tests/models/sklearn_encoder.py;
the hand-written encoder stays because it is faster, bench/encoder.py).
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from models.features import GROUPS, EncoderSettings, MetadataEncoder, MetadataError, tokenize, tokenize_table
from pipelines.simulators.marketplace import make_catalog, make_world as make_demo_world
from tests.models import sklearn_encoder
from tests.models.coengagement_world import CATEGORIES, make_world

# Bounds that cut through runs of equally frequent tokens in the demo catalog below (words: three at 389 apps
# for the 12th place; feature tags: two at 389 for the 2nd).
TIGHT_BOUNDS = EncoderSettings(max_words=12, max_features=2, max_one_hot=3)


@pytest.fixture(scope="module")
def demo_tokens() -> list[list[str]]:
    """The demo world's catalog (the simulator `appsim simulate` runs), 2,000 apps, as tokens."""
    return tokenize(make_catalog(make_demo_world(2_000, 200, seed=3), seed=3))


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


@pytest.mark.parametrize("settings", [EncoderSettings(), TIGHT_BOUNDS], ids=["default bounds", "tight bounds"])
def test_vocabulary_and_idf_equal_scikit_learn_on_the_demo_world(demo_tokens, settings):
    encoder = MetadataEncoder.fit_vocabulary(demo_tokens, settings)
    columns = sklearn_encoder.group_columns(demo_tokens)
    vocabulary, weights = sklearn_encoder.exact_vocabulary(columns, GROUPS, settings)
    assert encoder.vocabulary == vocabulary
    # numpy's vectorised log may differ from math.log in the last bit on some CPUs (identical on this one).
    np.testing.assert_array_max_ulp(encoder.token_weights, weights, maxulp=1)
    if settings == TIGHT_BOUNDS:
        frequency = Counter(token for tokens in demo_tokens for token in tokens)
        for group, bound in (("word", settings.max_words), ("feature", settings.max_features)):
            kept = [t for t in encoder.vocabulary if t.startswith(f"{group}=")]
            cut = min(frequency[t] for t in kept)
            assert len(kept) == bound
            # The bound falls inside a run of equally frequent tokens: the tie-break is exercised.
            assert any(frequency[t] == cut for t in frequency if t.startswith(f"{group}=") and t not in kept)
    else:
        # Where no bound is reached, scikit-learn's own bounds (min_df, max_df, max_categories) agree too.
        assert sklearn_encoder.native_vocabulary(columns, GROUPS, settings)[0] == encoder.vocabulary


def test_description_words_equal_scikit_learn_tokenising_the_raw_text():
    catalog = make_catalog(make_demo_world(500, 50, seed=4), seed=4)
    catalog.loc[:2, "description"] = ["The 3D racer's NEW turbo-mode, re-imagined: x1 racer2000 ...", None, ""]
    settings = EncoderSettings(min_document_frequency=1)
    encoder = MetadataEncoder.fit_vocabulary(tokenize(catalog[["description"]]), settings)
    vocabulary, weights = sklearn_encoder.description_vocabulary(catalog["description"].tolist(), settings)
    assert "word=racer2000" in encoder.vocabulary and "word=turbo" in encoder.vocabulary
    assert encoder.vocabulary == vocabulary
    np.testing.assert_array_max_ulp(encoder.token_weights, weights, maxulp=1)


def test_bounds_break_ties_by_token_whatever_the_order_of_the_apps():
    descriptions = ["omega zeta beta", "omega alpha delta", "omega zeta beta", "alpha delta gamma", "gamma"]
    settings = EncoderSettings(max_words=3, max_document_fraction=1.0)
    encoders = [MetadataEncoder.fit_vocabulary(tokenize([{"description": d} for d in order]), settings)
                for order in (descriptions, descriptions[::-1], sorted(descriptions))]
    # omega (3 apps) first, then the first two by token of the five words in 2 apps.
    assert encoders[0].vocabulary == ["bias", "word=alpha", "word=beta", "word=omega"]
    assert all(e.vocabulary == encoders[0].vocabulary and np.array_equal(e.token_weights, encoders[0].token_weights)
               for e in encoders)


def test_features_equal_scikit_learn_tfidf_rebuilt_from_the_vocabulary(demo_tokens):
    # Fitted on part of the catalog and applied to all of it plus apps with unknown or missing metadata.
    encoder = MetadataEncoder.fit_vocabulary(demo_tokens[:1_500], TIGHT_BOUNDS)
    apps = demo_tokens + tokenize([{"category": "no-such-category", "description": "unheardof words"}, {},
                                   {"features": ["never-seen-tag"], "avg_rating": 4.9}])
    ours = encoder.features(apps)
    theirs = sklearn_encoder.features(encoder)(apps)
    assert ours.shape == theirs.shape == (len(apps), len(encoder.vocabulary))
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), rtol=1e-12, atol=0)
    assert ours[-3:, 1:].nnz == 1  # only the known rating bin of the last app


def test_repeated_values_are_tokenised_once_yet_each_app_gets_its_own_tokens():
    rows = [{"category": "Games", "region": "EU", "avg_rating": 4.2}, {"category": 1, "avg_rating": float("nan")},
            {"category": 1.0, "region": "EU", "avg_rating": 4.2}, {"category": ["odd", "list"], "avg_rating": 1}]
    tokens = tokenize(rows)
    assert tokens[0] == ["category=games", "region=eu", "rating=4"]
    assert tokens[1] == ["category=1"] and tokens[2] == ["category=1.0", "region=eu", "rating=4"]
    assert tokens[3] == ["category=['odd', 'list']", "rating=0"]
    tokens[0].append("changed")  # each app's list is its own
    assert tokenize(rows)[2] == ["category=1.0", "region=eu", "rating=4"] and tokens[2][-1] == "rating=4"


# -- the column-wise tokeniser against tokenize, its definition ---------------------------------------------------
def test_the_column_wise_tokens_are_tokenize_s_on_the_demo_catalog_as_built_and_as_stored(tmp_path):
    catalog = make_catalog(make_demo_world(2_000, 200, seed=3), seed=3)
    catalog.to_parquet(tmp_path / "apps.parquet")
    stored = pd.read_parquet(tmp_path / "apps.parquet")  # string columns, tags as numpy arrays
    for frame in (catalog, stored):
        table = tokenize_table(frame)
        assert table.lists() == tokenize(frame)
        from_lists = MetadataEncoder.fit_vocabulary(tokenize(frame))
        encoder = MetadataEncoder.fit_vocabulary(table)
        assert encoder.to_json() == from_lists.to_json()
        ours, reference = encoder.features(table), from_lists.features(tokenize(frame))
        assert (ours.indptr == reference.indptr).all() and (ours.indices == reference.indices).all()
        assert (ours.data == reference.data).all()  # the same values summed in the same order: the same bits


ODD_ROWS = [
    {"category": "Games", "region": " EU ", "pricing_model": "", "features": ["Chat", " chat", None, "", "Zed"],
     "description": "The 3D-game's 12abc BEST_app, x1 ab  2ab abc1 İstanbul", "avg_rating": 4.2},
    {"category": 1, "features": "Lone Tag", "description": "ǅungla Kelvin \u212aelvin straße ÉCOLE naïve", "avg_rating": float("nan")},
    {"category": 1.0, "region": None, "features": [1, 1.0, True, "x"], "description": None, "avg_rating": "4.6"},
    {"category": ["odd", "list"], "features": float("nan"), "description": 42, "avg_rating": 1},
    {"features": (), "description": "", "avg_rating": None},
    {},
]


@pytest.mark.parametrize("as_frame", [False, True])
def test_the_column_wise_tokens_are_tokenize_s_for_odd_values(as_frame):
    rows = pd.DataFrame(ODD_ROWS) if as_frame else ODD_ROWS
    assert tokenize_table(rows).lists() == tokenize(rows)
    assert tokenize_table(rows[:0]).lists() == [] and tokenize_table([{"region": "us"}]).lists() == [["region=us"]]
    tags = pd.DataFrame({"features": [["Chat", " chat", None, "", "Zed"], None, [], np.array(["zed", "ÉCOLE "])]})
    assert tokenize_table(tags).lists() == tokenize(tags) == [["feature=chat", "feature=zed"], [], [],
                                                              ["feature=zed", "feature=école"]]


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.lists(st.one_of(st.none(), st.text(alphabet=st.sampled_from(list("aZz09_ .,'-\t\nİKßé\u212a")), max_size=40)),
                min_size=1, max_size=8))
def test_the_column_wise_description_words_are_the_regular_expression_s(descriptions):
    for column in (pd.Series(descriptions, dtype=object), pd.Series(descriptions, dtype="str")):
        frame = pd.DataFrame({"description": column})
        assert tokenize_table(frame).lists() == tokenize(frame)
