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


def _words(text: Any) -> list[str]:
    """A description's distinct words, sorted, without the stop words."""
    if not isinstance(text, str):
        return []
    return sorted(set(WORD_PATTERN.findall(text.lower())) - STOPWORDS)


def _word_tokens(text: Any) -> list[str]:
    return [f"word={w}" for w in _words(text)]


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


@dataclass(frozen=True)
class TokenTable:
    """Every app's tokens as columns: occurrence i is token ``names[codes[i]]`` of app ``apps[i]``. An app's tokens
    are consecutive and in ``tokenize``'s order, so the encoder reads the same values in the same order either way."""

    names: list[str]
    apps: np.ndarray   # int64, non-decreasing
    codes: np.ndarray  # int64 positions in names
    n_apps: int

    @classmethod
    def from_lists(cls, app_token_lists: Sequence[Sequence[str]]) -> "TokenTable":
        position: dict[str, int] = {}
        codes = [position.setdefault(token, len(position)) for tokens in app_token_lists for token in tokens]
        apps = np.repeat(np.arange(len(app_token_lists), dtype=np.int64), [len(tokens) for tokens in app_token_lists])
        return cls(list(position), apps, np.array(codes, dtype=np.int64), len(app_token_lists))

    def lists(self) -> list[list[str]]:
        """``tokenize``'s form: each app's token strings."""
        tokens = np.array(self.names, dtype=object)[self.codes] if self.names else np.empty(0, dtype=object)
        bounds = np.cumsum(np.bincount(self.apps, minlength=self.n_apps))[:-1]
        return [list(part) for part in np.split(tokens, bounds)] if self.n_apps else []


def tokenize_table(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> TokenTable:
    """``tokenize`` for a whole catalog, column by column: each distinct category, region, pricing model, rating and
    feature tag is converted once, the descriptions' words are found by pyarrow string kernels, and no per-app token
    list is built (``tokenize`` took 11.7 CPU-s for 200K apps, and the vocabulary and features as much again on its
    lists). ``tokenize`` stays the definition: tests/models/test_features.py holds the two equal."""
    n = len(rows)

    def column(field: str) -> pd.Series:
        if isinstance(rows, pd.DataFrame):
            return rows[field] if field in rows.columns else pd.Series([None] * n, dtype=object)
        return pd.Series([row.get(field) for row in rows], dtype=object)

    parts = [
        _single_column(column("category"), lambda v: _single_token("category", v)),
        _single_column(column("region"), lambda v: _single_token("region", v)),
        _single_column(column("pricing_model"), lambda v: _single_token("pricing", v)),
        _feature_column(column("features")),
        _word_column(column("description")),
        _single_column(column("avg_rating"), _rating_tokens),
    ]
    names: list[str] = []
    apps, codes = [], []
    for part_apps, part_codes, part_names in parts:
        apps.append(part_apps)
        codes.append(part_codes + len(names))
        names.extend(part_names)
    all_apps = np.concatenate(apps)
    order = np.argsort(all_apps, kind="stable")  # by app; within an app the fields' order, each field's own order
    return TokenTable(names, all_apps[order], np.concatenate(codes)[order], n)


Column = tuple[np.ndarray, np.ndarray, list[str]]  # (apps, codes, names) of one field, by app then token


def _bag(apps: np.ndarray, value_codes: np.ndarray, values: Sequence[str], prefix: str,
         dropped: frozenset[str] = frozenset({""})) -> Column:
    """Occurrences (app, index into ``values``) -> each app's distinct ``prefix + value`` tokens in sorted order
    (``tokenize``'s order for a bag of words or tags), ``dropped`` values left out."""
    ranks, distinct = pd.factorize(np.array(list(values), dtype=object), sort=True)  # Python's string order
    kept = np.array([value not in dropped for value in distinct], dtype=bool)
    codes = ranks[value_codes] if len(values) else np.empty(0, dtype=np.int64)
    keep = kept[codes] if len(distinct) else np.zeros(len(codes), dtype=bool)
    width = max(len(distinct), 1)
    keys = np.sort(apps[keep].astype(np.int64) * width + codes[keep])
    keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])] if len(keys) else keys  # np.unique hashes: 6x slower
    return keys // width, keys % width, [prefix + value for value in distinct]


def _single_column(values: pd.Series, convert: Callable[[Any], list[str]]) -> Column:
    """A field of one token at most per app: ``convert`` of each distinct value. Hashing merges 1, 1.0 and True,
    which ``convert`` tells apart, so a column of mixed Python objects takes ``tokenize``'s path."""
    if values.dtype != object and (pd.api.types.is_string_dtype(values.dtype) or values.dtype.kind in "biuf"):
        codes, distinct = pd.factorize(values)  # missing values: -1, no token (as convert gives them)
        tokens = [(convert(value) or [""])[0] for value in pd.Index(distinct).tolist()]
        present = codes >= 0
        return _bag(np.flatnonzero(present), codes[present], tokens, "")
    per_app = _once_per_value(convert, values.tolist())
    apps = np.flatnonzero([bool(tokens) for tokens in per_app])
    return _bag(apps, np.arange(len(apps)), [per_app[app][0] for app in apps], "")


def _feature_column(values: pd.Series) -> Column:
    """Feature tags: ``_feature_tokens`` with each distinct tag normalised once. A column of lists of strings is
    flattened by pyarrow; anything else (a lone string, a NaN, a tag that is not a string) app by app."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        lists = pa.array(values, from_pandas=False)  # a NaN, a lone string or a non-string tag: not list<string>
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        lists = None
    if lists is not None and pa.types.is_list(lists.type) and _is_arrow_string(lists.type.value_type):
        tags = pc.list_flatten(lists)
        present = pc.is_valid(tags)  # a None tag is no tag
        owners = pc.list_parent_indices(lists).to_numpy(zero_copy_only=False).astype(np.int64)
        encoded = tags.filter(present).dictionary_encode()
        return _bag(owners[present.to_numpy(zero_copy_only=False)], _indices(encoded),
                    [tag.strip().lower() for tag in encoded.dictionary.to_pylist()], "feature=")
    counts, found_tags = np.zeros(len(values), dtype=np.int64), []
    for app, value in enumerate(values.tolist()):
        if value is None or value is pd.NA or isinstance(value, float):
            continue
        found = [tag for tag in ([value] if isinstance(value, str) else value) if tag is not None]
        counts[app] = len(found)
        found_tags.extend(found)
    owners = np.repeat(np.arange(len(values), dtype=np.int64), counts)
    return _bag(owners, np.arange(len(found_tags)), [str(tag).strip().lower() for tag in found_tags], "feature=")


# ASCII bytes -> what WORD_PATTERN sees after str.lower(): a-z and 0-9 as they are, A-Z lowered, anything else a space
_WORD_BYTES = np.full(256, ord(" "), dtype=np.uint8)
_WORD_BYTES[np.frombuffer(b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)] = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyz0123456789", np.uint8)
_WORD_BYTES[np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", np.uint8)] = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)


def _word_column(values: pd.Series) -> Column:
    """Description words. In an ASCII text, ``WORD_PATTERN.findall`` finds, in each maximal run of ``[a-z0-9]`` of the
    lower-cased text, the run from its first letter on when that is 3 characters or more. So each byte is mapped
    (lowered, or a space if it is not a letter or digit), pyarrow splits on the spaces, trims leading digits and keeps
    the long pieces: a tenth of a regular expression's time. Other texts (Python's ``lower`` maps some non-ASCII
    letters to ASCII ones) go through ``_words``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        texts = pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # not all strings: every text by _words
        texts = None
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if texts is None or not _is_arrow_string(texts.type) or len(texts) == 0:
        ascii_rows = np.zeros(len(values), dtype=bool)
        owners, words = np.empty(0, dtype=np.int64), pa.array([], pa.large_string())
    else:
        ascii_rows = pc.fill_null(pc.string_is_ascii(texts), False).to_numpy(zero_copy_only=False)
        validity, offsets, data = texts.buffers()
        mapped = _WORD_BYTES[np.frombuffer(data, np.uint8)] if data is not None else np.empty(0, np.uint8)
        spaced = pa.Array.from_buffers(texts.type, len(texts), [validity, offsets, pa.py_buffer(mapped)],
                                       offset=texts.offset)
        pieces = pc.ascii_split_whitespace(pc.if_else(pa.array(ascii_rows), spaced, pa.nulls(len(texts), texts.type)))
        owners = pc.list_parent_indices(pieces).to_numpy(zero_copy_only=False).astype(np.int64)
        words = pc.ascii_ltrim(pc.list_flatten(pieces), characters="0123456789")
        long_enough = pc.greater_equal(pc.utf8_length(words), 3)
        owners, words = owners[long_enough.to_numpy(zero_copy_only=False)], words.filter(long_enough)
    others = np.flatnonzero(~ascii_rows)
    other_words = [_words(text) for text in values.iloc[others].tolist()] if len(others) else []
    owners = np.concatenate([owners, np.repeat(others.astype(np.int64), [len(found) for found in other_words])])
    words = pa.concat_arrays([words.cast(pa.large_string()),
                              pa.array([word for found in other_words for word in found], pa.large_string())])
    encoded = words.dictionary_encode()
    return _bag(owners, _indices(encoded), encoded.dictionary.to_pylist(), "word=", STOPWORDS | {""})


def _is_arrow_string(arrow_type: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def _indices(encoded: Any) -> np.ndarray:
    """A pyarrow dictionary array's indices as int64."""
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)


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
    def fit_vocabulary(cls, app_token_lists: "TokenTable | list[list[str]]", settings: EncoderSettings | None = None) -> "MetadataEncoder":
        """Vocabulary and IDF token weights from every catalog app's tokens (warm or cold).

        Not scikit-learn's ``TfidfVectorizer`` / ``OneHotEncoder`` (they are this fit's test oracle,
        tests/models/sklearn_encoder.py): for the same bytes they took 2.0-4.4x the CPU at 200K apps,
        before the per-group split of the tokens they need (bench/encoder.py), and their own bounds keep
        another subset of equally frequent tokens (``max_features`` ranks by an unstable argsort;
        ``max_categories`` keeps the last ones and counts a missing value as a category).
        """
        settings = settings or EncoderSettings()
        table = _as_table(app_token_lists)
        n_apps = max(table.n_apps, 1)
        counts = np.bincount(table.codes, minlength=len(table.names)).tolist()
        document_frequency = {token: df for token, df in zip(table.names, counts) if df}
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
    def features(self, app_token_lists: "TokenTable | list[list[str]]") -> sparse.csr_matrix:
        """Sparse (apps, vocabulary): IDF-weighted known tokens, each group's block L2-normalised, plus a bias.

        Not ``TfidfVectorizer``s rebuilt from the vocabulary: same values, 4-9x the CPU at 200K apps and
        17-28x for a one-app request (bench/encoder.py).
        """
        table = _as_table(app_token_lists)
        position = np.array([self._positions.get(token, -1) for token in table.names], dtype=np.int64)
        columns_all = position[table.codes]
        known = columns_all >= 0
        rows_array, columns_array = table.apps[known], columns_all[known]
        values = self.token_weights[columns_array]
        block = rows_array * len(GROUPS) + self._group_of[columns_array]
        block_norms = np.sqrt(np.bincount(block, weights=values**2, minlength=table.n_apps * len(GROUPS)))
        values = values / block_norms[block]
        n_apps = table.n_apps
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


def _as_table(tokens: "TokenTable | Sequence[Sequence[str]]") -> TokenTable:
    return tokens if isinstance(tokens, TokenTable) else TokenTable.from_lists(tokens)


def _is_empty_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and len(value) == 0


def l2_normalize(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
