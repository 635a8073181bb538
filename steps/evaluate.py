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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from evaluation import baselines, report
from evaluation import compare as cmp
from evaluation.baselines import Ranking
from evaluation.holdout import HoldoutQueries, load_queries, observed_ctr
from evaluation.metrics import distinct_integers
from models import dataset, layout, storage
from models.artifact import ModelArtifact
from models.catalog import read_catalog
from models.embedding import single_threaded
from models.index import EXACT_MAX_APPS
from models.notifications import Notification, NotificationError, publish, topic_arn
from models.predictor import Predictor
from models.registry import ModelVersion
from models.registry_backends import open_registry
from models.storage import StorageError



def model_rankings(queries: HoldoutQueries, predictor: Predictor, k: int) -> np.ndarray:
    """A model's top-k neighbours for every query (positions into its app ids)."""
    # Many users share query apps: search each distinct app once.
    distinct = distinct_integers(queries.query_items)
    neighbours, _ = predictor.similar_many([queries.app_ids[i] for i in distinct], k)
    return neighbours[np.searchsorted(distinct, queries.query_items)]


def score_model(queries: HoldoutQueries, predictor: Predictor, observed: pd.Series, *, catalog_size: int,
                rankings: np.ndarray | None = None) -> cmp.RankerScores:
    """A model's top-10 neighbours for every query (the first 10 columns of ``rankings`` when given) and its
    CTR predictions for the observed holdout apps."""
    artifact = predictor.artifact
    rankings = model_rankings(queries, predictor, cmp.K) if rankings is None else rankings[:, : cmp.K]
    known = [app_id for app_id in observed.index if app_id in artifact.positions]
    predicted = pd.Series(predictor.global_ctr, index=observed.index)  # an unknown app gets the model's average
    predicted[known] = [p.ctr for p in predictor.predict_many(known, cmp.K)]
    return cmp.score_rankings(
        queries, rankings, artifact.app_ids, catalog_size=catalog_size,
        ctr_predicted=predicted.to_numpy(), ctr_observed=observed.to_numpy(),
    )


@dataclass(frozen=True)
class ReportBaselines:
    """What report.html shows besides the gate's rankings: item-kNN, content-only (from the catalog), and why a
    part is missing."""

    rankings: list[Ranking]
    catalog: pd.DataFrame | None
    notes: list[str]


def report_baselines(prepared_uri: str, queries: HoldoutQueries, train_interactions: pd.DataFrame, dim: int, seed: int,
                     exact_max_apps: int = EXACT_MAX_APPS) -> ReportBaselines:
    """The item-kNN and content-only baselines of report.html (the catalog is the one PrepareFeedback read)."""
    notes = []
    catalog = None
    manifest_uri = storage.join(prepared_uri, dataset.MANIFEST)
    manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else {}
    catalog_uri = (manifest.get("inputs") or {}).get("catalog_uri")
    try:
        if not catalog_uri:
            raise FileNotFoundError(f"{manifest_uri} names no catalog")
        catalog = read_catalog(catalog_uri)
    except (FileNotFoundError, StorageError) as error:
        notes.append(f"the catalog could not be read ({error}): no content-only baseline, no category/region segments")
    query_apps = queries.query_app_ids
    rankings = [baselines.item_knn(train_interactions, query_apps, report.CURVE_K)]
    if catalog is not None:
        rankings.append(baselines.content_only(catalog, query_apps, report.CURVE_K, dim=dim, seed=seed,
                                               exact_max_apps=exact_max_apps))
    return ReportBaselines(rankings, catalog, notes)


def write_html_report(output_uri: str, evaluation: dict[str, Any], queries: HoldoutQueries, scored: list[Ranking],
                      train_interactions: pd.DataFrame, extra: ReportBaselines) -> str:
    """``report.html`` beside evaluation.json: recall curves and segments of the rankings the gate ``scored`` (the
    models', the popularity baseline's) and of the ``extra`` baselines."""
    page = report.build(evaluation, queries, [*scored, *extra.rankings],
                        report.query_segments(queries, train_interactions, extra.catalog), extra.notes)
    uri = storage.join(output_uri, layout.EVALUATION_PAGE)
    storage.write_bytes(uri, page.encode("utf-8"))
    return uri


def _single_threaded_call(function: Callable[..., Any], *args: Any) -> Any:
    with single_threaded():  # OpenMP's thread count is per thread: a worker thread sets its own
        return function(*args)


def score_popularity(queries: HoldoutQueries, popularity: Ranking, train_app_stats: pd.DataFrame,
                     observed: pd.Series, *, catalog_size: int) -> cmp.RankerScores:
    """The popularity baseline (the first 10 columns of its ranking, which are its top 10: the same apps for every
    query, the query itself left out); its CTR prediction for every app is the global train CTR."""
    impressions = float(train_app_stats["impressions"].sum())
    global_ctr = float(train_app_stats["clicks"].sum()) / impressions if impressions > 0 else 0.0
    return cmp.score_rankings(queries, popularity.rankings[:, : cmp.K], popularity.app_ids, catalog_size=catalog_size,
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
    """Score and gate, write evaluation.json and report.html; returns the evaluation. BLAS and FAISS's OpenMP on one
    thread, like TrainEmbeddings (models/embedding.py's ``single_threaded`` says why); the report's own baselines on
    a second one."""
    with single_threaded(), ThreadPoolExecutor(max_workers=1) as pool:
        queries = load_queries(prepared_uri, seed=seed)
        observed = observed_ctr(dataset.read_table(prepared_uri, dataset.HOLDOUT_APP_STATS), seed=seed)
        candidate_artifact = ModelArtifact.load_uri(candidate_uri)
        # One catalog size for every ranker, so coverage figures are comparable.
        catalog_size = len(candidate_artifact.app_ids)
        # Top-50 lists for the report's recall@k curves; the metrics and the gate use their first 10 columns.
        # One Predictor a model (building one aligns the statistics with the app ids: 0.4 CPU-s at 200K apps)
        candidate_predictor = Predictor(candidate_artifact)
        models = [Ranking("candidate", model_rankings(queries, candidate_predictor, report.CURVE_K), candidate_artifact.app_ids)]
        candidate = score_model(queries, candidate_predictor, observed, catalog_size=catalog_size, rankings=models[0].rankings)
        train_interactions = dataset.read_table(prepared_uri, dataset.TRAIN_INTERACTIONS)
        # The report's own baselines need none of the gate's results: they run on the second core meanwhile (200K
        # apps: ~25 CPU-s, mostly the content-only model). The content-only model is searched by the candidate's own
        # rule (exact up to this many apps, IVF above).
        exact_max_apps = (candidate_artifact.manifest.get("parameters") or {}).get("exact_index_max_apps", EXACT_MAX_APPS)
        extra = pool.submit(_single_threaded_call, report_baselines, prepared_uri, queries, train_interactions,
                            candidate_artifact.dim, seed, exact_max_apps)
        # Top-50 for the report too (one computation: its first 10 columns are the top 10 the gate scores)
        popularity = baselines.popularity(train_interactions, queries.query_app_ids, report.CURVE_K)
        baseline = score_popularity(queries, popularity, dataset.read_table(prepared_uri, dataset.TRAIN_APP_STATS), observed,
                                    catalog_size=catalog_size)
        champion_scores = None
        if champion is not None:
            champion_predictor = Predictor(ModelArtifact.load_uri(champion.artifact_uri))
            models.append(Ranking(f"champion v{champion.version}", model_rankings(queries, champion_predictor, report.CURVE_K),
                                  champion_predictor.artifact.app_ids))
            champion_scores = score_model(queries, champion_predictor, observed, catalog_size=catalog_size,
                                          rankings=models[1].rankings)

        reference, against, label = (
            (champion_scores, "champion", f"champion v{champion.version}")
            if champion is not None and champion_scores is not None
            else (baseline, "popularity", "popularity baseline")
        )
        comparison = cmp.compare(candidate, reference, samples=bootstrap_samples, seed=seed)
        improved = cmp.is_improved(comparison, min_relative_improvement)
        summary = cmp.summarize(candidate, samples=bootstrap_samples, seed=seed)
        evaluation = {
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
            # The candidate's family and knobs as TrainEmbeddings chose them on its validation split (inside train).
            "training_selection": candidate_artifact.manifest.get("selection"),
            "similarity_metrics": {
                name: {"value": _finite(entry["value"]), "standard_deviation": _finite(entry["standard_deviation"])}
                for name, entry in summary.items()
            },
        }
        storage.write_json(storage.join(output_uri, layout.EVALUATION_REPORT), evaluation)
        write_html_report(output_uri, evaluation, queries, [*models, popularity], train_interactions, extra.result())
        return evaluation


def gate_notification(evaluation: dict[str, Any], version: int | None = None) -> Notification:
    """The gate's decision as a notification, with the numbers it was taken on."""
    comparison = evaluation.get("comparison") or {}
    named = f"v{version}" if version is not None else "the candidate"
    return Notification(
        kind="gate",
        subject=f"appsim gate: {named} {evaluation['decision']} "
                f"(recall@10 {_signed(comparison.get('relative_improvement'))} vs {comparison.get('against', '?')})",
        summary=evaluation.get("decision_reason", ""),
        numbers={"version": version, "decision": evaluation["decision"], "improved": evaluation.get("improved"),
                 "champion_version": evaluation.get("champion_version"), "comparison": comparison,
                 "threshold": evaluation.get("threshold"), "holdout": evaluation.get("holdout"),
                 "candidate": evaluation.get("candidate"), "champion": evaluation.get("champion")},
    )


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def _model_uri(path: str) -> str:
    """--model names a folder holding model.tar.gz (SageMaker's input channel) or the tarball itself."""
    return storage.normalize(path) if path.endswith(".tar.gz") else storage.join(path, layout.MODEL_TARBALL)


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
    evaluation = run(
        storage.normalize(args.prepared), _model_uri(args.model), storage.normalize(args.output),
        champion=champion, min_relative_improvement=args.min_relative_improvement,
        bootstrap_samples=args.bootstrap_samples, seed=args.seed, approval_status=args.approval_status,
    )
    print(f"EvaluateCandidate: {evaluation['decision']}: {evaluation['decision_reason']}", file=sys.stderr)
    # On SageMaker the registration is a native model step, so the gate is announced here
    # (the version number is not known yet); $APPSIM_SNS_TOPIC_ARN names the topic.
    try:
        publish(gate_notification(evaluation), topic_arn())
    except NotificationError as error:
        print(f"EvaluateCandidate: {error}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
