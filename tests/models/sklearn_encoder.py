"""The metadata encoder's fit and transform written with scikit-learn: the oracle for ``models/features.py``.

``bench/encoder.py`` times these against the hand-written encoder, which stays (the README's scikit-learn
section has the figures): ``MetadataEncoder.fit_vocabulary`` and ``MetadataEncoder.features`` must give
what these give from the same token lists.

- ``exact_vocabulary``: ``OneHotEncoder`` / ``CountVectorizer`` count the documents, the encoder's own
  bound picks the vocabulary (most frequent first, ties broken by the token), ``TfidfTransformer`` gives
  the IDF.
- ``native_vocabulary``: the estimators' own bounds (``OneHotEncoder(max_categories=bound + 1)`` without
  its infrequent column; ``TfidfVectorizer(min_df, max_df, max_features)``). Equal to the encoder's where
  no run of equally frequent tokens straddles a bound; where one does, scikit-learn keeps an unspecified
  subset of it (``max_features`` ranks by an unstable argsort; ``max_categories`` keeps the last tokens).
- ``description_vocabulary``: the description words straight from the raw text, with ``TfidfVectorizer``'s
  own tokeniser given the encoder's word pattern and stop words.
- ``features``: per-group ``TfidfVectorizer`` given the encoder's vocabulary and weights (``idf_``), each
  block L2-normalised, after the bias column: what serving would rebuild from an artifact.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer, TfidfVectorizer
from sklearn.preprocessing import OneHotEncoder

from models.features import BIAS_TOKEN, GROUPS, RATING_EDGES, STOPWORDS, WORD_PATTERN, EncoderSettings, MetadataEncoder

ONE_HOT_GROUPS = ("category", "region", "pricing", "rating")
BAG_GROUPS = ("feature", "word")
Vocabulary = tuple[list[str], np.ndarray]  # tokens (bias first) and their weights, as encoder.json holds them


def _tokens_as_given(tokens: list[str]) -> list[str]:
    """The analyzer for token lists that are already tokenised (the vectorizers must not split them again)."""
    return tokens


def group_columns(token_lists: list[list[str]]) -> dict[str, list[list[str]]]:
    """Each group's tokens per app: the column layout the scikit-learn estimators take."""
    columns: dict[str, list[list[str]]] = {group: [[] for _ in token_lists] for group in GROUPS}
    for app, tokens in enumerate(token_lists):
        for token in tokens:
            columns[token.split("=", 1)[0]][app].append(token)
    return columns


def _bound(group: str, settings: EncoderSettings) -> int:
    return {"feature": settings.max_features, "word": settings.max_words,
            "rating": len(RATING_EDGES) + 1}.get(group, settings.max_one_hot)


def _single_values(column: list[list[str]]) -> np.ndarray:
    """A one-hot group's column as OneHotEncoder takes it: one value (or None) per app, shape (apps, 1)."""
    return np.array([tokens[0] if tokens else None for tokens in column], dtype=object).reshape(-1, 1)


def _one_hot_counts(column: list[list[str]], **options) -> tuple[sparse.csc_matrix, np.ndarray]:
    """(app x value indicator matrix, values) from OneHotEncoder, the missing value's column left out."""
    encoder = OneHotEncoder(handle_unknown="ignore", **options)
    counts = encoder.fit_transform(_single_values(column)).tocsc()
    names = encoder.get_feature_names_out()
    present = np.flatnonzero(names != "x0_None")
    return counts[:, present], np.array([name.removeprefix("x0_") for name in names[present]], dtype=object)


def exact_vocabulary(columns: dict[str, list[list[str]]], groups: tuple[str, ...], settings: EncoderSettings) -> Vocabulary:
    """Document counts from scikit-learn; the encoder's bound and tie-break; IDF from TfidfTransformer."""
    n_apps = len(columns[groups[0]])
    vocabulary, weights = [BIAS_TOKEN], [np.ones(1)]
    for group in (group for group in groups if any(columns[group])):  # the vectorizers refuse a group without tokens
        if group in ONE_HOT_GROUPS:
            counts, terms = _one_hot_counts(columns[group])
        else:
            vectorizer = CountVectorizer(analyzer=_tokens_as_given, binary=True, lowercase=False)
            counts = vectorizer.fit_transform(columns[group]).tocsc()
            terms = vectorizer.get_feature_names_out()
        document_frequency = np.diff(counts.indptr)
        candidates = np.arange(len(terms))
        if group in BAG_GROUPS:
            candidates = candidates[(document_frequency >= settings.min_document_frequency)
                                    & (document_frequency <= settings.max_document_fraction * n_apps)]
        # terms are sorted, so a stable sort by descending frequency breaks ties by the token.
        kept = np.sort(candidates[np.argsort(-document_frequency[candidates], kind="stable")[: _bound(group, settings)]])
        if kept.size:
            vocabulary.extend(terms[kept].tolist())
            weights.append(TfidfTransformer(smooth_idf=True).fit(counts[:, kept]).idf_)
    return vocabulary, np.concatenate(weights)


def native_vocabulary(columns: dict[str, list[list[str]]], groups: tuple[str, ...], settings: EncoderSettings) -> Vocabulary:
    """The estimators' own bounds: OneHotEncoder's max_categories, TfidfVectorizer's min_df / max_df / max_features."""
    vocabulary, weights = [BIAS_TOKEN], [np.ones(1)]
    for group in (group for group in groups if any(columns[group])):
        if group in ONE_HOT_GROUPS:
            counts, terms = _one_hot_counts(columns[group], max_categories=_bound(group, settings) + 1)
            frequent = np.flatnonzero(terms != "infrequent_sklearn")
            if frequent.size:
                vocabulary.extend(terms[frequent].tolist())
                weights.append(TfidfTransformer(smooth_idf=True).fit(counts[:, frequent]).idf_)
        else:
            vectorizer = TfidfVectorizer(analyzer=_tokens_as_given, binary=True, lowercase=False,
                                         min_df=settings.min_document_frequency,
                                         max_df=settings.max_document_fraction, max_features=_bound(group, settings))
            vectorizer.fit(columns[group])
            vocabulary.extend(vectorizer.get_feature_names_out().tolist())
            weights.append(vectorizer.idf_)
    return vocabulary, np.concatenate(weights)


def description_vocabulary(descriptions: list[str], settings: EncoderSettings) -> Vocabulary:
    """The word block fitted on the raw descriptions (TfidfVectorizer tokenises them, native bounds)."""
    vectorizer = TfidfVectorizer(token_pattern=WORD_PATTERN.pattern, stop_words=sorted(STOPWORDS), binary=True,
                                 min_df=settings.min_document_frequency, max_df=settings.max_document_fraction,
                                 max_features=settings.max_words)
    vectorizer.fit([text if isinstance(text, str) else "" for text in descriptions])
    return [BIAS_TOKEN] + [f"word={word}" for word in vectorizer.get_feature_names_out()], np.concatenate([[1.0], vectorizer.idf_])


def features(encoder: MetadataEncoder) -> Callable[[list[list[str]]], sparse.csr_matrix]:
    """The encoder's features rebuilt with TfidfVectorizer from its vocabulary and weights (no fit)."""
    vectorizers = []
    for group in GROUPS:
        positions = [i for i, token in enumerate(encoder.vocabulary) if token.startswith(f"{group}=")]
        if positions:
            vectorizer = TfidfVectorizer(analyzer=_tokens_as_given, binary=True, lowercase=False, norm="l2",
                                         vocabulary=[encoder.vocabulary[i] for i in positions])
            vectorizer.idf_ = encoder.token_weights[positions]
            vectorizers.append((group, vectorizer))

    def transform(token_lists: list[list[str]]) -> sparse.csr_matrix:
        columns = group_columns(token_lists)
        blocks = [sparse.csr_matrix(np.ones((len(token_lists), 1)))]
        blocks += [vectorizer.transform(columns[group]) for group, vectorizer in vectorizers]
        return sparse.hstack(blocks, format="csr")

    return transform
