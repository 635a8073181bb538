"""Metadata encoder: the hand-written vocabulary / IDF / one-hot fit against scikit-learn, in the same run.

    .venv/bin/python bench/encoder.py --apps 200000

Two catalogs of ``--apps`` apps: ``demo``, the demo world's catalog (``pipelines/simulators/marketplace.py``,
a vocabulary well inside the encoder's bounds), and ``wide``, the catalog ``bench/train_scale.py`` trains on
(20,000 description words and 3,000 feature tags, so the ``max_words`` / ``max_features`` bounds cut through
runs of tokens with the same document frequency); ``--catalogs`` also takes a store's ``catalog/apps.parquet``
(e.g. the quality bench's world-5k and movielens). ``models/features.py``'s ``tokenize`` runs once per catalog
(timed, for scale); every fit then starts from the same token lists.

For each block of the encoder (one-hot: category, region, pricing model, rating bin; bag of tokens: feature
tags, description words) and for the whole vocabulary, three fits of the vocabulary and its IDF weights (the
scikit-learn ones are ``tests/models/sklearn_encoder.py``, the tests' oracle for the hand-written encoder):

- hand-written: ``MetadataEncoder.fit_vocabulary`` (what the trainer runs);
- scikit-learn, exact: ``OneHotEncoder`` / ``CountVectorizer`` count the documents, the encoder's own bound
  (most frequent first, ties broken by the token) picks the vocabulary, ``TfidfTransformer`` gives the IDF;
- scikit-learn, native: the estimators' own bounds (``OneHotEncoder(max_categories=bound + 1)`` without its
  infrequent column, ``TfidfVectorizer(min_df, max_df, max_features)``).

The word block also from the raw descriptions: the encoder's word tokens plus the hand-written fit against ``TfidfVectorizer``
with its own tokeniser (the encoder's word pattern and stop words), which needs no tokens of ours.
Each prints CPU seconds (best of ``--repeat``), its ratio to the hand-written fit of the same block measured in
this run, and whether vocabulary and weights are the same bytes in ``encoder.json`` (else how many tokens
differ). Then the transform, rebuilt from the fitted vocabulary and weights as serving rebuilds it from the
artifact: the hand-written ``MetadataEncoder.features`` against per-group ``TfidfVectorizer``s given that
vocabulary and ``idf_`` (each block L2-normalised, as the encoder does), on every app of the catalog and per
request (one app: tokens, features and projection, CPU microseconds per request over ``--requests``).
Splitting the token lists into per-group columns, which only the scikit-learn variants need, is counted in
their transform time and printed on its own for the fit. Nothing here is asserted in tests; rerun it on the
target machine and quote the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from models.features import GROUPS, EncoderSettings, MetadataEncoder, _word_tokens, tokenize  # noqa: E402
from tests.models import sklearn_encoder  # noqa: E402  (the scikit-learn formulations, the tests' oracle)

BLOCKS = {"one-hot": sklearn_encoder.ONE_HOT_GROUPS, "bag": sklearn_encoder.BAG_GROUPS}


def demo_catalog(apps: int, seed: int) -> pd.DataFrame:
    from pipelines.simulators.marketplace import make_catalog, make_world

    return make_catalog(make_world(apps, 1_000, seed), seed)


def wide_catalog(apps: int, seed: int) -> pd.DataFrame:
    from train_scale import synthetic

    return synthetic(apps, rows=0, users=1, clusters=2_000, seed=seed)[0]


def best_of(repeat: int, work: Callable[[], object]) -> tuple[object, float, float]:
    """(result, CPU seconds, wall seconds) of the run with the least CPU."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        runs.append((time.process_time() - cpu, time.perf_counter() - wall, result))
    cpu, wall, result = min(runs, key=lambda run: run[0])
    return result, cpu, wall


def same_bytes(left: sklearn_encoder.Vocabulary, right: sklearn_encoder.Vocabulary) -> str:
    """As encoder.json stores them: the same vocabulary and weights, or how many tokens differ."""
    if json.dumps([left[0], [float(w) for w in left[1]]]) == json.dumps([right[0], [float(w) for w in right[1]]]):
        return "same bytes"
    differ = len(set(left[0]) ^ set(right[0]))
    return f"{differ} tokens differ" if differ else "same tokens, weights differ"


def row(label: str, variant: str, cpu: float, wall: float, reference: float, verdict: str) -> None:
    print(f"  {label:<24} {variant:<22} CPU {cpu:8.3f} s  wall {wall:8.3f} s  {cpu / reference:6.2f}x  {verdict}",
          flush=True)


def hand_written(token_lists: list[list[str]], settings: EncoderSettings) -> sklearn_encoder.Vocabulary:
    encoder = MetadataEncoder.fit_vocabulary(token_lists, settings)
    return encoder.vocabulary, encoder.token_weights


def bench_catalog(name: str, catalog: pd.DataFrame, settings: EncoderSettings, repeat: int, requests: int) -> None:
    print(f"\n[{name}] {len(catalog):,} apps; load average {os.getloadavg()[0]:.1f}", flush=True)
    token_lists, cpu, wall = best_of(1, lambda: tokenize(catalog))
    print(f"  tokenize (shared by every variant): CPU {cpu:.2f} s, wall {wall:.2f} s, "
          f"{sum(map(len, token_lists)):,} tokens", flush=True)
    columns, cpu, wall = best_of(1, lambda: sklearn_encoder.group_columns(token_lists))
    print(f"  split into per-group columns (scikit-learn only): CPU {cpu:.2f} s, wall {wall:.2f} s", flush=True)

    for label, groups in [*BLOCKS.items(), ("whole vocabulary", GROUPS)]:
        block_tokens = [[t for t in tokens if t.split("=", 1)[0] in groups] for tokens in token_lists]
        reference, reference_cpu, reference_wall = best_of(repeat, lambda: hand_written(block_tokens, settings))
        row(label, "hand-written", reference_cpu, reference_wall, reference_cpu,
            f"{len(reference[0]) - 1:,} tokens")
        for variant, fit in (("scikit-learn, exact", sklearn_encoder.exact_vocabulary),
                             ("scikit-learn, native", sklearn_encoder.native_vocabulary)):
            fitted, cpu, wall = best_of(repeat, lambda: fit(columns, groups, settings))
            row(label, variant, cpu, wall, reference_cpu, same_bytes(reference, fitted))

    descriptions = catalog["description"].tolist()
    # tokenize's own word tokeniser, without the code path of the fields this fit does not read
    reference, reference_cpu, reference_wall = best_of(
        repeat, lambda: hand_written([_word_tokens(text) for text in descriptions], settings))
    row("words from raw text", "hand-written", reference_cpu, reference_wall, reference_cpu,
        f"{len(reference[0]) - 1:,} tokens, word tokens included")
    fitted, cpu, wall = best_of(repeat, lambda: sklearn_encoder.description_vocabulary(descriptions, settings))
    row("words from raw text", "scikit-learn, native", cpu, wall, reference_cpu, same_bytes(reference, fitted))

    encoder = MetadataEncoder.fit_vocabulary(token_lists, settings)
    encoder.weights = np.random.default_rng(0).standard_normal((len(encoder.vocabulary), 64))
    rebuilt = sklearn_encoder.features(encoder)
    ours, reference_cpu, reference_wall = best_of(repeat, lambda: encoder.features(token_lists))
    row("transform, every app", "hand-written", reference_cpu, reference_wall, reference_cpu, "")
    theirs, cpu, wall = best_of(repeat, lambda: rebuilt(token_lists))
    row("transform, every app", "scikit-learn", cpu, wall, reference_cpu,
        f"max |difference| {abs(ours - theirs).max():.1e}")

    rows = catalog.head(min(requests, len(catalog))).to_dict("records")
    per_request = {}
    for variant, features in (("hand-written", encoder.features), ("scikit-learn", rebuilt)):
        def serve() -> None:
            for i in range(requests):
                encoder.project(features(tokenize([rows[i % len(rows)]])))
        _, cpu, wall = best_of(repeat, serve)
        per_request[variant] = (cpu / requests * 1e6, wall / requests * 1e6)
    reference_us = per_request["hand-written"][0]
    for variant, (cpu_us, wall_us) in per_request.items():
        print(f"  {'embed one app':<24} {variant:<22} CPU {cpu_us:8.1f} us wall {wall_us:8.1f} us  "
              f"{cpu_us / reference_us:6.2f}x  (tokens + features + projection, {requests:,} requests)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=200_000)
    parser.add_argument("--catalogs", default="demo,wide",
                        help="comma-separated: demo, wide (--apps apps each) or a catalog's apps.parquet")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each fit; the one with the least CPU counts")
    parser.add_argument("--requests", type=int, default=2_000, help="single-app embeddings timed per variant")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    makers = {"demo": demo_catalog, "wide": wide_catalog}
    settings = EncoderSettings()
    print(f"EncoderSettings {settings.to_dict()}; CPU seconds are the best of {args.repeat} runs")
    for name in args.catalogs.split(","):
        catalog = pd.read_parquet(name) if name.endswith(".parquet") else makers[name](args.apps, args.seed)
        bench_catalog(name, catalog, settings, args.repeat, args.requests)


if __name__ == "__main__":
    main()
