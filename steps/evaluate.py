"""EvaluateCandidate: score the candidate, the champion and a popularity baseline on the holdout; gate.

``run`` is the pure core (URIs in, ``evaluation.json`` out); ``main`` is the SageMaker
Processing entry point (``python -m steps.evaluate``), which reads the champion from the
registry URI it is given. The protocol is in ``evaluation/holdout.py``; the comparison and the
gate in ``evaluation/compare.py``. The candidate is compared with the champion when there is
one, else with the popularity baseline, always on exactly the same queries.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any

import numpy as np
import pandas as pd

from evaluation import compare as cmp
from evaluation.holdout import HoldoutQueries, load_queries, observed_ctr
from models import dataset, storage
from models.artifact import TARBALL, ModelArtifact
from models.predictor import Predictor
from models.registry import ModelVersion, open_registry

REPORT = "evaluation.json"


def score_model(queries: HoldoutQueries, artifact: ModelArtifact, observed: pd.Series, *, catalog_size: int) -> cmp.RankerScores:
    """A model's top-10 neighbours for every query and its CTR predictions for the observed holdout apps."""
    predictor = Predictor(artifact)
    # Many users share query apps: search each distinct app once.
    distinct, inverse = np.unique(queries.query_items, return_inverse=True)
    neighbours, _ = predictor.similar_many([queries.app_ids[i] for i in distinct], cmp.K)
    known = [app_id for app_id in observed.index if app_id in artifact.positions]
    predicted = pd.Series(predictor.global_ctr, index=observed.index)  # an unknown app gets the model's average
    predicted[known] = [p.ctr for p in predictor.predict_many(known, cmp.K)]
    return cmp.score_rankings(
        queries, neighbours[inverse], artifact.app_ids, catalog_size=catalog_size,
        ctr_predicted=predicted.to_numpy(), ctr_observed=observed.to_numpy(),
    )


def score_popularity(queries: HoldoutQueries, train_interactions: pd.DataFrame, train_app_stats: pd.DataFrame,
                     observed: pd.Series, *, catalog_size: int) -> cmp.RankerScores:
    """The popularity baseline; its CTR prediction for every app is the global train CTR."""
    rankings, app_ids = cmp.popularity_rankings(train_interactions, queries.query_app_ids, cmp.K)
    impressions = float(train_app_stats["impressions"].sum())
    global_ctr = float(train_app_stats["clicks"].sum()) / impressions if impressions > 0 else 0.0
    return cmp.score_rankings(queries, rankings, app_ids, catalog_size=catalog_size,
                              ctr_predicted=np.full(len(observed), global_ctr), ctr_observed=observed.to_numpy())


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined metric (e.g. no app with enough impressions for CTR MAE) is null."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def _metrics(scores: cmp.RankerScores) -> dict[str, float | None]:
    values = scores.metrics()
    return {name: _finite(values[name]) for name in cmp.METRIC_KEYS}


def run(
    prepared_uri: str,
    candidate_uri: str,
    output_uri: str,
    *,
    champion: ModelVersion | None,
    min_relative_improvement: float,
    bootstrap_samples: int,
    seed: int,
    approval_status: str,
) -> dict[str, Any]:
    queries = load_queries(prepared_uri, seed=seed)
    observed = observed_ctr(dataset.read_table(prepared_uri, dataset.HOLDOUT_APP_STATS), seed=seed)
    candidate_artifact = ModelArtifact.load_uri(candidate_uri)
    # One catalog size for every ranker, so coverage figures are comparable.
    catalog_size = len(candidate_artifact.app_ids)
    candidate = score_model(queries, candidate_artifact, observed, catalog_size=catalog_size)
    baseline = score_popularity(
        queries,
        dataset.read_table(prepared_uri, dataset.TRAIN_INTERACTIONS),
        dataset.read_table(prepared_uri, dataset.TRAIN_APP_STATS),
        observed,
        catalog_size=catalog_size,
    )
    champion_scores = None
    if champion is not None:
        champion_scores = score_model(queries, ModelArtifact.load_uri(champion.artifact_uri), observed, catalog_size=catalog_size)

    reference, against, label = (
        (champion_scores, "champion", f"champion v{champion.version}")
        if champion is not None and champion_scores is not None
        else (baseline, "popularity", "popularity baseline")
    )
    comparison = cmp.compare(candidate, reference, samples=bootstrap_samples, seed=seed)
    improved = cmp.is_improved(comparison, min_relative_improvement)
    summary = cmp.summarize(candidate, samples=bootstrap_samples, seed=seed)
    report = {
        "candidate": _metrics(candidate),
        "champion": _metrics(champion_scores) if champion_scores is not None else None,
        "baseline": {"name": "popularity", **_metrics(baseline)},
        "comparison": {
            "against": against,
            "metric": comparison.metric,
            "relative_improvement": _finite(comparison.relative_improvement),
            "ci_low": _finite(comparison.ci_low),
            "ci_high": _finite(comparison.ci_high),
            "confidence": comparison.confidence,
            "bootstrap_samples": comparison.bootstrap_samples,
            "resampled": "users",
        },
        "threshold": {"min_relative_improvement": min_relative_improvement},
        "improved": bool(improved),
        "decision": cmp.decide(improved, approval_status),
        "decision_reason": cmp.decision_reason(comparison, label, min_relative_improvement),
        "champion_version": champion.version if champion is not None else None,
        "holdout": {"users": queries.n_users, "queries": queries.n_queries, "apps": queries.n_query_apps},
        "similarity_metrics": {
            name: {"value": _finite(entry["value"]), "standard_deviation": _finite(entry["standard_deviation"])}
            for name, entry in summary.items()
        },
    }
    storage.write_json(storage.join(output_uri, REPORT), report)
    return report


def _model_uri(path: str) -> str:
    """--model names a folder holding model.tar.gz (SageMaker's input channel) or the tarball itself."""
    return storage.normalize(path) if path.endswith(".tar.gz") else storage.join(path, TARBALL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steps.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", default="/opt/ml/processing/input/prepared", help="PrepareFeedback's output (folder or URI)")
    parser.add_argument("--model", default="/opt/ml/processing/input/model", help="folder holding the candidate's model.tar.gz")
    parser.add_argument("--output", default="/opt/ml/processing/output/evaluation", help="where evaluation.json is written")
    parser.add_argument("--registry", default="", help="registry URI (sqlite:///path or sagemaker://group); empty = no champion")
    parser.add_argument("--min-relative-improvement", type=float, default=0.03)
    parser.add_argument("--bootstrap-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--approval-status", default="Approved", choices=("Approved", "PendingManualApproval"))
    args = parser.parse_args(argv)
    champion = open_registry(args.registry).champion() if args.registry else None
    report = run(
        storage.normalize(args.prepared), _model_uri(args.model), storage.normalize(args.output),
        champion=champion, min_relative_improvement=args.min_relative_improvement,
        bootstrap_samples=args.bootstrap_samples, seed=args.seed, approval_status=args.approval_status,
    )
    print(f"EvaluateCandidate: {report['decision']}: {report['decision_reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
