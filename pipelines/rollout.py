"""The staged rollout: one daily decision (`appsim ab decide`) walks every gate winner to production.

Each run, as of ``now`` (the seed's daily Lambda, section 3.4; 8.3 steps 4-5):

1. **Start**: with no active experiment and ``rollout.auto_start`` on, the newest gate winner
   (a ``PendingManualApproval`` version newer than the champion that has never been in an
   experiment) gets an experiment at ``rollout.start_weight`` (10%).
2. **Guardrails**: serving's per-arm counters (``appsim_requests_total{arm,status}`` and the
   ``appsim_request_duration_seconds`` histogram, ``serving/metrics.py``) since the previous
   decision, judged by ``evaluation.ab_decision.check_guardrails``: a challenger failing more or
   answering slower than the champion is rolled back (Rejected) at once. The figures come from
   ``rollout.guardrails.source``: ``prometheus`` reads serving's exposition at ``serving_metrics``
   and diffs it against the previous decision's snapshot; ``cloudwatch`` (AWS) asks CloudWatch
   (GetMetricData) for each arm's request and 5xx sums and p99 since the previous decision, from the
   series the CloudWatch agent publishes (``pipelines/monitoring.py``'s conventions).
3. **A/B rules**: otherwise today's decision from the feedback (``pipelines.ab_analysis.analyse``: wait, hold, ramp,
   promote after the stable days, stop on a regression, end) is carried out.
4. **Archive**: Approved versions replaced by a newer champion ``archive_after_days`` ago are
   archived (the seed's "deprecate v2 after 30 days"): marked Rejected with an ``archived:``
   reason so they are no longer a fallback champion, their artifacts kept. A version the champion
   or the active experiment references is never touched, and nothing is deleted.

Every change and every rollback is published (``models/notifications.py``) with its numbers, and
each run leaves a record under ``<store>/experiments/<id>/decisions/<time>.json``, which also
holds the serving counters the next run diffs against. Counters that went down (a restarted
server) are taken as they are: the new process's counts are the change.
"""

from __future__ import annotations

import logging
import math
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from evaluation.ab_decision import Decision, DecisionRules, GuardrailRules, ServingArmMetrics, check_guardrails
from models import storage
from models.experiments import CHALLENGER_ARM, CHAMPION_ARM, Experiment, ExperimentStore
from models.notifications import Notification, NotificationError, publish, topic_arn
from models.registry import ModelVersion, Registry
from pipelines.ab_analysis import analyse, json_numbers
from pipelines.config import CloudWatchGuardrailSource, PipelineConfig, RolloutSettings
from serving import metric_names

log = logging.getLogger(__name__)
ARCHIVED = "archived:"         # the status reason prefix of an archived version
SCRAPE_TIMEOUT_SECONDS = 10.0


class GuardrailMetricsError(RuntimeError):
    """Serving's metrics could not be read or do not hold per-arm figures."""


def decision_rules(rollout: RolloutSettings) -> DecisionRules:
    return DecisionRules(min_days=rollout.min_days, min_requests=rollout.min_requests, min_lift=rollout.min_lift,
                         ramp_step=rollout.ramp_step, final_weight=rollout.final_weight,
                         stable_days=rollout.stable_days)


def guardrail_rules(rollout: RolloutSettings) -> GuardrailRules:
    g = rollout.guardrails
    return GuardrailRules(max_error_rate_increase=g.max_error_rate_increase, max_p99_increase=g.max_p99_increase,
                          min_requests=g.min_requests)


# --- acting -------------------------------------------------------------------------------------
def apply_decision(experiments: ExperimentStore, registry: Registry, experiment: Experiment, decision: Decision,
                   now: datetime) -> Experiment:
    """Carry out a decision: promote approves the challenger (it becomes the champion); a
    regression stop or a guardrail rollback rejects it."""
    updated = experiments.update(experiment.record(decision.action, decision.challenger_weight, decision.reason,
                                                   json_numbers(decision.numbers), at=now))
    if decision.action == "promote":
        registry.set_status(experiment.challenger_version, "Approved",
                            f"A/B experiment {experiment.experiment_id}: {decision.reason}")
    elif decision.action in ("stop", "rollback"):
        registry.set_status(experiment.challenger_version, "Rejected",
                            f"A/B experiment {experiment.experiment_id}: {decision.reason}")
    return updated


def decision_notification(experiment: Experiment, decision: Decision) -> Notification:
    kind = "rollback" if decision.action == "rollback" else "ab_decision"
    return Notification(
        kind=kind,
        subject=f"appsim A/B {experiment.experiment_id}: {decision.action} v{experiment.challenger_version} "
                f"({experiment.challenger_weight:.0%} -> {decision.challenger_weight:.0%})",
        summary=decision.reason,
        numbers={"experiment_id": experiment.experiment_id, "champion_version": experiment.champion_version,
                 "challenger_version": experiment.challenger_version, "action": decision.action,
                 "challenger_weight_before": experiment.challenger_weight,
                 "challenger_weight_after": decision.challenger_weight, **json_numbers(decision.numbers)},
    )


# --- guardrail metrics --------------------------------------------------------------------------
Snapshot = dict[str, dict[str, Any]]  # arm -> {"requests", "errors", "buckets": {le: count}}


def read_serving_metrics(uri: str) -> str:
    """Serving's Prometheus exposition: scraped over HTTP, or read from a file/S3 URI."""
    try:
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri, timeout=SCRAPE_TIMEOUT_SECONDS) as response:  # noqa: S310 (configured URL)
                return response.read().decode()
        return storage.read_bytes(uri).decode()
    except (OSError, storage.StorageError) as error:
        raise GuardrailMetricsError(f"cannot read serving metrics from {uri}: {error}; fix "
                                    "rollout.guardrails.serving_metrics (serving's /metrics URL) or empty it "
                                    "to decide without guardrails") from None


def parse_snapshot(exposition: str) -> Snapshot:
    """Per-arm totals over every endpoint: requests, 5xx answers, latency buckets (cumulative)."""
    snapshot: Snapshot = {}
    try:
        families = list(text_string_to_metric_families(exposition))
    except ValueError as error:
        raise GuardrailMetricsError(f"serving metrics are not a Prometheus exposition: {error}") from None

    def arm_entry(arm: str) -> dict[str, Any]:
        return snapshot.setdefault(arm, {"requests": 0.0, "errors": 0.0, "buckets": {}})

    for family in families:
        for sample in family.samples:
            arm = sample.labels.get("arm")
            if arm not in (CHAMPION_ARM, CHALLENGER_ARM):
                continue
            if family.name == metric_names.REQUESTS and sample.name == metric_names.total(metric_names.REQUESTS):
                entry = arm_entry(arm)
                entry["requests"] += sample.value
                if sample.labels.get("status", "").startswith("5"):
                    entry["errors"] += sample.value
            elif family.name == metric_names.REQUEST_DURATION and sample.name == metric_names.bucket(metric_names.REQUEST_DURATION):
                buckets = arm_entry(arm)["buckets"]
                buckets[sample.labels["le"]] = buckets.get(sample.labels["le"], 0.0) + sample.value
    return snapshot


def snapshot_delta(current: Snapshot, previous: Snapshot | None) -> Snapshot:
    """What changed since ``previous``; an arm whose counters went down restarted: its counts are the change."""
    delta: Snapshot = {}
    for arm, now_entry in current.items():
        before = (previous or {}).get(arm)
        restarted = before is None or now_entry["requests"] < before["requests"] or any(
            now_entry["buckets"].get(le, 0.0) < count for le, count in before["buckets"].items())
        if restarted:
            delta[arm] = now_entry
            continue
        delta[arm] = {"requests": now_entry["requests"] - before["requests"],
                      "errors": max(now_entry["errors"] - before["errors"], 0.0),
                      "buckets": {le: c - before["buckets"].get(le, 0.0) for le, c in now_entry["buckets"].items()}}
    return delta


def cloudwatch_arm_metrics(client: Any, source: CloudWatchGuardrailSource, start: datetime,
                           end: datetime) -> dict[str, ServingArmMetrics]:
    """Each arm's requests, 5xx answers and p99 latency over ``[start, end)`` from CloudWatch: one
    GetMetricData period spanning the window, so the p99 is the window's, not an average of p99s."""
    from botocore.exceptions import BotoCoreError, ClientError  # the `aws` extra

    period = max(60, math.ceil((end - start).total_seconds() / 60) * 60)

    def query(query_id: str, metric: str, stat: str, **dimensions: str) -> dict[str, Any]:
        dims = {**source.dimensions, **dimensions}
        return {"Id": query_id, "ReturnData": True, "MetricStat": {
            "Metric": {"Namespace": source.namespace, "MetricName": metric,
                       "Dimensions": [{"Name": k, "Value": v} for k, v in sorted(dims.items())]},
            "Period": period, "Stat": stat}}

    queries = [q for arm in (CHAMPION_ARM, CHALLENGER_ARM) for q in (
        query(f"{arm}_requests", metric_names.total(metric_names.REQUESTS), "Sum", arm=arm),
        query(f"{arm}_errors", metric_names.total(metric_names.REQUESTS), "Sum", arm=arm, status_class="5xx"),
        query(f"{arm}_p99", metric_names.REQUEST_DURATION, "p99", arm=arm))]
    values: dict[str, list[float]] = {}
    try:
        for page in client.get_paginator("get_metric_data").paginate(
                MetricDataQueries=queries, StartTime=start, EndTime=end):
            for result in page["MetricDataResults"]:
                values.setdefault(result["Id"], []).extend(v for v in result.get("Values", []) if v is not None)
    except (BotoCoreError, ClientError) as error:
        raise GuardrailMetricsError(
            f"cannot read serving metrics from CloudWatch namespace {source.namespace!r}: {error}; the role needs "
            "cloudwatch:GetMetricData, or set rollout.guardrails.source: prometheus") from None
    return {arm: ServingArmMetrics(arm, requests=sum(values.get(f"{arm}_requests", [])),
                                   errors=sum(values.get(f"{arm}_errors", [])),
                                   p99_seconds=max(values[f"{arm}_p99"]) if values.get(f"{arm}_p99") else None)
            for arm in (CHAMPION_ARM, CHALLENGER_ARM)}


def arm_metrics(arm: str, entry: dict[str, Any] | None) -> ServingArmMetrics:
    if entry is None:
        return ServingArmMetrics(arm)
    buckets = tuple((float(le), count) for le, count in entry["buckets"].items())
    return ServingArmMetrics(arm, requests=entry["requests"], errors=entry["errors"], latency_buckets=buckets)


# --- the daily run ------------------------------------------------------------------------------
@dataclass
class DailyResult:
    at: datetime
    started: Experiment | None = None
    experiment: Experiment | None = None
    decision: Decision | None = None
    applied: Experiment | None = None
    guardrails: dict[str, Any] | None = None
    archived: list[int] = field(default_factory=list)
    notifications: list[str] = field(default_factory=list)
    notification_errors: list[str] = field(default_factory=list)
    record_uri: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def dump(experiment: Experiment | None) -> Any:
            return experiment.model_dump(mode="json") if experiment else None

        return {"at": self.at.isoformat(), "started": dump(self.started), "experiment": dump(self.experiment),
                "decision": json_numbers(self.decision.to_dict()) if self.decision else None,
                "applied": dump(self.applied), "guardrails": self.guardrails, "archived": self.archived,
                "notifications": self.notifications, "notification_errors": self.notification_errors,
                "record_uri": self.record_uri}


class DailyDecision:
    """``appsim ab decide``: start, guard, decide, archive, notify (see the module docstring)."""

    def __init__(self, config: PipelineConfig, experiments: ExperimentStore, registry: Registry,
                 sns_client: Any = None, cloudwatch_client: Any = None):
        self.config = config
        self.rollout = config.rollout
        self.experiments = experiments
        self.registry = registry
        self.sns_client = sns_client
        self.cloudwatch_client = cloudwatch_client
        self.topic = topic_arn(config.notifications.sns_topic_arn)

    def run(self, now: datetime) -> DailyResult:
        result = DailyResult(at=now)
        experiment = self.experiments.active()
        if experiment is None and self.rollout.auto_start:
            result.started = self._start(now, result)
            result.experiment = result.started  # nothing to judge yet: its first decision is tomorrow's
        elif experiment is not None:
            result.experiment = experiment
            self._decide(experiment, now, result)
        result.archived = self._archive(now, result)
        return result

    def _notify(self, notification: Notification, result: DailyResult) -> None:
        try:
            message_id = publish(notification, self.topic, client=self.sns_client, region=self.config.sagemaker.region)
        except NotificationError as error:  # the decision stands; say that its message did not go out
            log.error("%s", error)
            result.notification_errors.append(str(error))
            return
        if message_id:
            result.notifications.append(notification.kind)

    def next_challenger(self) -> ModelVersion | None:
        """The newest gate winner newer than the champion that has never been in an experiment."""
        champion = self.registry.champion()
        tried = {e.challenger_version for e in self.experiments.list()}
        for version in self.registry.list_versions():
            if champion is not None and version.version <= champion.version:
                return None
            if version.status == "PendingManualApproval" and version.version not in tried:
                return version
        return None

    def _start(self, now: datetime, result: DailyResult) -> Experiment | None:
        champion, challenger = self.registry.champion(), self.next_challenger()
        if champion is None or challenger is None:
            return None
        weight = self.rollout.start_weight
        started = self.experiments.create(Experiment.start(
            champion.version, challenger.version, weight, at=now,
            reason=f"started automatically at {weight:.0%}: v{challenger.version} passed the gate "
                   f"({challenger.status_reason or 'no reason recorded'})"))
        self._notify(Notification(
            kind="ab_start",
            subject=f"appsim A/B {started.experiment_id}: v{challenger.version} starts at {weight:.0%}",
            summary=started.history[0].reason,
            numbers={"experiment_id": started.experiment_id, "champion_version": champion.version,
                     "challenger_version": challenger.version, "challenger_weight": weight,
                     "challenger_metrics": challenger.metrics}), result)
        return started

    def _decide(self, experiment: Experiment, now: datetime, result: DailyResult) -> None:
        folder = storage.join(self.config.store, "experiments", experiment.experiment_id, "decisions")
        record: dict[str, Any] = {"at": now.isoformat(), "experiment_id": experiment.experiment_id}
        decision = None
        guardrails = self.rollout.guardrails
        if guardrails.enabled:
            if guardrails.source == "cloudwatch":
                since = self._previous_decision_at(folder, now) or experiment.weight_changed_at
                arms = cloudwatch_arm_metrics(self._cloudwatch(), guardrails.cloudwatch, since, now)
                record["guardrail_window"] = {"source": "cloudwatch", "start": since.isoformat(), "end": now.isoformat()}
            else:
                snapshot = parse_snapshot(read_serving_metrics(guardrails.serving_metrics))
                delta = snapshot_delta(snapshot, self._previous_snapshot(folder, now))
                arms = {arm: arm_metrics(arm, delta.get(arm)) for arm in (CHAMPION_ARM, CHALLENGER_ARM)}
                record["serving_snapshot"] = snapshot
            decision, result.guardrails = check_guardrails(arms[CHAMPION_ARM], arms[CHALLENGER_ARM],
                                                           guardrail_rules(self.rollout))
            record["guardrails"] = result.guardrails
        if decision is None:
            decision = analyse(self.config, experiment, now, decision_rules(self.rollout)).decision
        if decision is not None:
            result.decision = decision
            record["decision"] = json_numbers(decision.to_dict())
            if decision.changes_experiment:
                result.applied = apply_decision(self.experiments, self.registry, experiment, decision, now)
            if decision.changes_experiment or decision.action == "hold":
                self._notify(decision_notification(experiment, decision), result)
        result.record_uri = storage.join(folder, f"{now:%Y%m%dT%H%M%S%fZ}.json")
        storage.write_json(result.record_uri, record)

    def _cloudwatch(self) -> Any:
        if self.cloudwatch_client is None:
            import boto3  # the `aws` extra: only the cloudwatch guardrail source needs it

            self.cloudwatch_client = boto3.client("cloudwatch", region_name=self.config.sagemaker.region)
        return self.cloudwatch_client

    @staticmethod
    def _previous_decision_at(folder: str, now: datetime) -> datetime | None:
        """When this experiment's previous decision ran (its record's ``at``), if any."""
        current = f"{now:%Y%m%dT%H%M%S%fZ}.json"
        earlier = [uri for uri in storage.list_files(folder, (".json",)) if uri.rsplit("/", 1)[-1] < current]
        return datetime.fromisoformat(storage.read_json(max(earlier))["at"]) if earlier else None

    @staticmethod
    def _previous_snapshot(folder: str, now: datetime) -> Snapshot | None:
        current = f"{now:%Y%m%dT%H%M%S%fZ}.json"
        for uri in sorted(storage.list_files(folder, (".json",)), reverse=True):
            if uri.rsplit("/", 1)[-1] < current:
                snapshot = storage.read_json(uri).get("serving_snapshot")
                if snapshot is not None:
                    return snapshot
        return None

    def approved_at(self, version: ModelVersion) -> datetime:
        """When a version became the champion: its experiment's promotion, else its registration."""
        for experiment in self.experiments.list():
            if experiment.challenger_version == version.version and experiment.status == "completed" \
                    and experiment.challenger_weight == 1.0 and experiment.end_date is not None:
                return experiment.end_date
        return version.created_at

    def _archive(self, now: datetime, result: DailyResult) -> list[int]:
        """Archive Approved versions replaced ``archive_after_days`` ago that nothing references."""
        approved = self.registry.approved()  # newest first: approved[0] is the champion
        if len(approved) < 2:
            return []
        active = self.experiments.active()
        referenced = {approved[0].version} | ({active.champion_version, active.challenger_version} if active else set())
        archived = []
        replaced_at = None  # the earliest a newer Approved version took over
        for newer, version in zip(approved, approved[1:]):
            moment = self.approved_at(newer)
            replaced_at = moment if replaced_at is None else min(replaced_at, moment)
            days = (now - replaced_at).total_seconds() / 86_400
            if version.version in referenced or days < self.rollout.archive_after_days:
                continue
            reason = (f"{ARCHIVED} replaced by a newer champion {days:.0f} days ago (after "
                      f"{self.rollout.archive_after_days:g}); artifact kept at {version.artifact_uri}")
            self.registry.set_status(version.version, "Rejected", reason)
            archived.append(version.version)
        if archived:
            self._notify(Notification(
                kind="archive", subject=f"appsim: archived version(s) {', '.join(f'v{v}' for v in archived)}",
                summary=f"replaced for at least {self.rollout.archive_after_days:g} days; artifacts kept",
                numbers={"archived": archived, "champion_version": approved[0].version}), result)
        return archived

