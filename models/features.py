"""App metadata as sparse token vectors, and the encoder that maps them into the embedding space.

Every app in the catalog has metadata; only some have co-engagement. The encoder turns metadata
into tokens (one-hot category, region and pricing model, feature tags, description words from a
bounded vocabulary, a binned rating), weights them (IDF within each group, each group's block
L2-normalised so that a long description cannot drown the category), and projects them into the
embedding space with a ridge regression fitted on apps whose co-engagement embedding is known.
That projection is what embeds a cold-start app from its metadata alone.

The fitted encoder is data: ``to_json()`` (vocabulary, token weights, settings) plus a float32
weight matrix, stored in the artifact as ``encoder.json`` + ``encoder_weights.npy``.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from models.artifact import ModelArtifact

ENCODER_FORMAT = 1
# The metadata fields the encoder reads; an app must give at least one of them.
METADATA_FIELDS = ("category", "region", "pricing_model", "features", "description", "avg_rating")
# Token groups, in the order their blocks appear in the vocabulary.
GROUPS = ("category", "region", "pricing", "feature", "word", "rating")
BIAS_TOKEN = "bias"
RATING_EDGES = (2.0, 3.0, 3.5, 4.0, 4.5)
WORD_PATTERN = re.compile(r"[a-z][a-z0-9]{2,}")
# Words that say nothing about what an app is; the document-frequency cap removes the rest.
STOPWORDS = frozenset(
    "the and for with your you our are from that this its app apps all can into more one new get "
    "has have not but any was will out now just than then them they their what when who how".split()
)


class MetadataError(ValueError):
    """Metadata that cannot be embedded (e.g. none of the fields the encoder reads)."""


@dataclass(frozen=True)
class EncoderSettings:
    max_words: int = 2000          # description vocabulary bound (most frequent words)
    max_features: int = 2000       # feature-tag vocabulary bound
    max_one_hot: int = 1000        # bound on distinct categories / regions / pricing models kept
    min_document_frequency: int = 2
    max_document_fraction: float = 0.5  # words in more than this share of apps carry no signal
    ridge_lambda: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_words": self.max_words,
            "max_features": self.max_features,
            "max_one_hot": self.max_one_hot,
            "min_document_frequency": self.min_document_frequency,
            "max_document_fraction": self.max_document_fraction,
            "ridge_lambda": self.ridge_lambda,
        }


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _single_token(group: str, value: Any) -> list[str]:
    return [] if _is_missing(value) else [f"{group}={str(value).strip().lower()}"]


def _feature_tokens(value: Any) -> list[str]:
    """Feature tags from a list, a numpy array (parquet round trip) or a single string."""
    if value is None or value is pd.NA or isinstance(value, float):
        return []
    if isinstance(value, str):
        value = [value]
    tags = {str(tag).strip().lower() for tag in value if tag is not None}
    return [f"feature={tag}" for tag in sorted(tags) if tag]


def _word_tokens(text: Any) -> list[str]:
    if not isinstance(text, str):
        return []
    return [f"word={w}" for w in sorted(set(WORD_PATTERN.findall(text.lower())) - STOPWORDS)]


def _rating_tokens(value: Any) -> list[str]:
    if _is_missing(value):
        return []
    try:
        rating = float(value)
    except (TypeError, ValueError):
        return []
    return [] if math.isnan(rating) else [f"rating={bisect.bisect_right(RATING_EDGES, rating)}"]


def _columns(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> tuple[int, dict[str, list[Any]]]:
    """Field -> values, column-wise (a DataFrame column is read in one go); absent fields are None."""
    if isinstance(rows, pd.DataFrame):
        n = len(rows)
        return n, {f: rows[f].tolist() if f in rows.columns else [None] * n for f in METADATA_FIELDS}
    return len(rows), {f: [row.get(f) for row in rows] for f in METADATA_FIELDS}


def tokenize(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[list[str]]:
    """Each app's raw ``group=token`` strings (before the vocabulary filters them)."""
    n, columns = _columns(rows)
    per_field = [
        _once_per_value(lambda v: _single_token("category", v), columns["category"]),
        _once_per_value(lambda v: _single_token("region", v), columns["region"]),
        _once_per_value(lambda v: _single_token("pricing", v), columns["pricing_model"]),
        [_feature_tokens(v) for v in columns["features"]],
        [_word_tokens(v) for v in columns["description"]],
        _once_per_value(_rating_tokens, columns["avg_rating"]),
    ]
    return [[*category, *region, *pricing, *features, *words, *rating]
            for category, region, pricing, features, words, rating in zip(*per_field)]


def _once_per_value(convert: Callable[[Any], list[str]], values: list[Any]) -> list[list[str]]:
    """``convert`` of each value, computed once per distinct value (of one type: 1 and 1.0 are different tokens): a
    catalog repeats a few categories, regions, pricing models and ratings (tokenising 200K apps took 8.1 CPU-s, 2.6
    of them in these four fields). The lists are shared between apps: read them, never change them."""
    known: dict[tuple[type, Any], list[str]] = {}
    converted = []
    for value in values:
        try:
            tokens = known.get((type(value), value))
            if tokens is None:
                tokens = known[(type(value), value)] = convert(value)
        except TypeError:  # unhashable (e.g. a list given as a category)
            tokens = convert(value)
        converted.append(tokens)
    return converted


class MetadataEncoder:
    """Metadata -> L2-normalised embedding: ``fit_vocabulary`` on the catalog's tokens, ``fit`` on target embeddings."""

    def __init__(self, vocabulary: list[str], token_weights: np.ndarray, settings: EncoderSettings,
                 weights: np.ndarray | None = None):
        self.vocabulary = vocabulary
        self.token_weights = np.asarray(token_weights, dtype=np.float64)
        self.settings = settings
        self.weights = weights  # (len(vocabulary), dim) once fitted
        self._positions = {token: i for i, token in enumerate(vocabulary)}
        # Group of each token (the bias has none: it is never inside a normalised block).
        self._group_of = np.array([GROUPS.index(t.split("=", 1)[0]) if t != BIAS_TOKEN else 0 for t in vocabulary],
                                  dtype=np.int64)

    # -- vocabulary ----------------------------------------------------------------------
    @classmethod
    def fit_vocabulary(cls, app_token_lists: list[list[str]], settings: EncoderSettings | None = None) -> "MetadataEncoder":
        """Vocabulary and IDF token weights from every catalog app's tokens (warm or cold).

        Not scikit-learn's ``TfidfVectorizer`` / ``OneHotEncoder`` (they are this fit's test oracle,
        tests/models/sklearn_encoder.py): for the same bytes they took 2.0-4.4x the CPU at 200K apps,
        before the per-group split of the tokens they need (bench/encoder.py), and their own bounds keep
        another subset of equally frequent tokens (``max_features`` ranks by an unstable argsort;
        ``max_categories`` keeps the last ones and counts a missing value as a category).
        """
        settings = settings or EncoderSettings()
        n_apps = max(len(app_token_lists), 1)
        document_frequency = Counter(token for tokens in app_token_lists for token in tokens)
        # Bounded groups keep their most frequent tokens; bag-of-words groups also drop rare and ubiquitous ones.
        limits = {group: settings.max_one_hot for group in ("category", "region", "pricing")}
        limits |= {"feature": settings.max_features, "word": settings.max_words, "rating": len(RATING_EDGES) + 1}
        by_group: dict[str, list[tuple[str, int]]] = {group: [] for group in GROUPS}
        for token, df in document_frequency.items():
            by_group[token.split("=", 1)[0]].append((token, df))
        vocabulary = [BIAS_TOKEN]
        weights = [1.0]
        for group in GROUPS:
            kept = by_group[group]
            if group in ("feature", "word"):
                kept = [
                    (token, df) for token, df in kept
                    if settings.min_document_frequency <= df <= settings.max_document_fraction * n_apps
                ]
            # Most frequent first, ties broken by the token, so the vocabulary is deterministic.
            kept = sorted(kept, key=lambda item: (-item[1], item[0]))[: limits[group]]
            for token, df in sorted(kept):
                vocabulary.append(token)
                weights.append(math.log((1.0 + n_apps) / (1.0 + df)) + 1.0)
        return cls(vocabulary, np.array(weights), settings)

    # -- features ------------------------------------------------------------------------
    def features(self, app_token_lists: list[list[str]]) -> sparse.csr_matrix:
        """Sparse (apps, vocabulary): IDF-weighted known tokens, each group's block L2-normalised, plus a bias.

        Not ``TfidfVectorizer``s rebuilt from the vocabulary: same values, 4-9x the CPU at 200K apps and
        17-28x for a one-app request (bench/encoder.py).
        """
        row_ids: list[int] = []
        columns: list[int] = []
        for row, tokens in enumerate(app_token_lists):
            known = [self._positions[t] for t in tokens if t in self._positions]
            row_ids.extend([row] * len(known))
            columns.extend(known)
        rows_array = np.array(row_ids, dtype=np.int64)
        columns_array = np.array(columns, dtype=np.int64)
        values = self.token_weights[columns_array]
        block = rows_array * len(GROUPS) + self._group_of[columns_array]
        block_norms = np.sqrt(np.bincount(block, weights=values**2, minlength=len(app_token_lists) * len(GROUPS)))
        values = values / block_norms[block]
        n_apps = len(app_token_lists)
        return sparse.csr_matrix(
            (np.concatenate([np.ones(n_apps), values]),
             (np.concatenate([np.arange(n_apps), rows_array]), np.concatenate([np.zeros(n_apps, dtype=np.int64), columns_array]))),
            shape=(n_apps, len(self.vocabulary)),
        )

    # -- projection ----------------------------------------------------------------------
    def fit(self, features: sparse.csr_matrix, targets: np.ndarray, sample_weights: np.ndarray) -> "MetadataEncoder":
        """Weighted ridge regression from features to target embeddings (rows of warm apps).

        Solved through the (vocabulary x vocabulary) normal equations, which stay small because
        the vocabulary is bounded, whatever the number of apps. Not scikit-learn's ``Ridge``: with
        sparse features and an unpenalised intercept it only offers iterative solvers (sparse_cg),
        measured at 89x the CPU on the world-5k catalog for predictions within 4e-4 of these.
        """
        weighted = sparse.diags(sample_weights) @ features
        gram = (features.T @ weighted).toarray()
        penalty = np.full(len(self.vocabulary), self.settings.ridge_lambda)
        # The bias is not shrunk: an app with no known token maps to the (weighted) mean embedding.
        penalty[0] = 0.0
        gram[np.diag_indices_from(gram)] += penalty
        rhs = np.asarray(weighted.T @ targets)
        # Rounded to float32 here, as stored, so that training and a loaded artifact project identically.
        self.weights = np.linalg.solve(gram, rhs).astype(np.float32).astype(np.float64)
        return self

    def project(self, features: sparse.csr_matrix) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("MetadataEncoder.fit must run before project/embed")
        return l2_normalize(np.asarray(features @ self.weights))

    def embed(self, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> np.ndarray:
        """float32 (n, dim) L2-normalised embeddings for apps given only by their metadata.

        Unknown categories, tags or words are ignored; missing fields are allowed; an app that
        gives none of the metadata fields raises ``MetadataError``.
        """
        n, columns = _columns(rows)
        for i in range(n):
            if all(_is_missing(columns[f][i]) or _is_empty_list(columns[f][i]) for f in METADATA_FIELDS):
                raise MetadataError(
                    f"app metadata #{i} has none of the fields needed to embed it; give at least one of "
                    f"{', '.join(METADATA_FIELDS)} (e.g. {{\"category\": \"games\", \"features\": [\"multiplayer\"]}})"
                )
        return self.project(self.features(tokenize(rows))).astype(np.float32)

    # -- persistence ---------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": ENCODER_FORMAT,
            "vocabulary": self.vocabulary,
            "token_weights": [float(w) for w in self.token_weights],
            "settings": self.settings.to_dict(),
            "rating_edges": list(RATING_EDGES),
        }

    def weights_array(self) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("MetadataEncoder.fit must run before its weights are saved")
        return self.weights.astype(np.float32)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], weights: np.ndarray) -> "MetadataEncoder":
        if data.get("format") != ENCODER_FORMAT:
            raise MetadataError(f"encoder format {data.get('format')!r} is not supported (this code reads {ENCODER_FORMAT})")
        if weights.shape[0] != len(data["vocabulary"]):
            raise MetadataError(f"encoder weights have {weights.shape[0]} rows for {len(data['vocabulary'])} tokens")
        return cls(list(data["vocabulary"]), np.array(data["token_weights"]), EncoderSettings(**data["settings"]),
                   weights.astype(np.float64))

    @classmethod
    def from_artifact(cls, artifact: "ModelArtifact") -> "MetadataEncoder":
        return cls.from_json(artifact.encoder, artifact.encoder_weights)


def _is_empty_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
