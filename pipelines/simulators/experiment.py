"""Simulated A/B experiments: daily traffic through the real router, decided by the real rules.

A scenario is a population of ``partners x apps`` routing keys, each with its own base CTR
(Beta-distributed around ``base_ctr``), and a challenger whose true CTR is the champion's times
``1 + true_lift``. Every day ``requests_per_day`` requests pick keys uniformly; the arm of a key
is ``models.routing.pick_arm(partner, app, experiment.weights())`` (computed once per key and
weight: the function is deterministic, so this is the same as calling it per request); each
request shows ``impressions_per_request`` ads, clicked with the key's CTR under its arm, and a
click converts with ``conversion_rate``. At the end of each day
``evaluation.ab_decision.decide`` runs on the cumulative figures and the experiment records
what it decided (ramp / promote / stop / end), exactly as ``appsim ab report --apply`` does.

``run_experiment`` aggregates counts directly (fast enough for 20-seed statistical tests);
``feedback_events`` turns a day's traffic into prediction/click/conversion events and
``write_experiment_feedback`` writes them to a store, for ``appsim ab report``.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from functools import lru_cache

import numpy as np
import orjson

from evaluation.ab import ArmStats, sample_ratio_check
from evaluation.ab_decision import Decision, DecisionRules, decide
from models import layout, storage
from models.events import format_ts
from models.experiments import CHALLENGER_ARM, CHAMPION_ARM, Experiment
from models.routing import pick_arm

DEFAULT_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
ARMS = (CHAMPION_ARM, CHALLENGER_ARM)


@dataclass(frozen=True)
class ExperimentScenario:
    true_lift: float = 0.0
    base_ctr: float = 0.05
    ctr_concentration: float = 200.0  # Beta(mean * c, (1 - mean) * c) per key: CTR varies between apps
    conversion_rate: float = 0.1      # conversions per click
    revenue_per_conversion: float = 2.0
    requests_per_day: int = 20_000
    impressions_per_request: int = 4  # ads shown per recommendation request
    partners: int = 20
    apps: int = 2_500
    start_weight: float = 0.1
    max_days: int = 60
    seed: int = 0
    champion_version: int = 1
    challenger_version: int = 2


def routing_key(index: int, apps: int) -> tuple[str, str]:
    return f"partner-{index // apps:03d}", f"app-{index % apps:05d}"


@lru_cache(maxsize=32)
def _challenger_keys(partners: int, apps: int, challenger_weight: float) -> np.ndarray:
    """Which keys the real router sends to the challenger at this weight (cached: it is deterministic)."""
    weights = {CHAMPION_ARM: round(1.0 - challenger_weight, 6), CHALLENGER_ARM: challenger_weight}
    mask = np.array([pick_arm(*routing_key(i, apps), weights) == CHALLENGER_ARM for i in range(partners * apps)])
    mask.setflags(write=False)
    return mask


@dataclass(frozen=True)
class DayTraffic:
    """One day's requests: the key each asked about, its arm, and its outcomes."""

    day: int
    start: datetime
    keys: np.ndarray          # key index per request
    challenger: np.ndarray    # bool per request
    impressions: np.ndarray
    clicks: np.ndarray
    conversions: np.ndarray


class TrafficGenerator:
    def __init__(self, scenario: ExperimentScenario):
        self.scenario = scenario
        self.rng = np.random.default_rng(scenario.seed)
        c = scenario.ctr_concentration
        self.key_ctr = self.rng.beta(scenario.base_ctr * c, (1 - scenario.base_ctr) * c,
                                     size=scenario.partners * scenario.apps)

    def day(self, day: int, start: datetime, challenger_weight: float) -> DayTraffic:
        s, rng = self.scenario, self.rng
        keys = rng.integers(0, s.partners * s.apps, size=s.requests_per_day)
        challenger = _challenger_keys(s.partners, s.apps, challenger_weight)[keys]
        ctr = np.minimum(self.key_ctr[keys] * np.where(challenger, 1.0 + s.true_lift, 1.0), 1.0)
        impressions = np.full(keys.size, s.impressions_per_request)
        clicks = rng.binomial(impressions, ctr)
        conversions = rng.binomial(clicks, s.conversion_rate)
        return DayTraffic(day, start + timedelta(days=day), keys, challenger, impressions, clicks, conversions)


@dataclass
class _Totals:
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0

    def add(self, traffic: DayTraffic, mask: np.ndarray) -> None:
        self.requests += int(mask.sum())
        self.impressions += int(traffic.impressions[mask].sum())
        self.clicks += int(traffic.clicks[mask].sum())
        self.conversions += int(traffic.conversions[mask].sum())


@dataclass(frozen=True)
class DayDecision:
    day: int
    challenger_weight: float
    decision: Decision


@dataclass
class ExperimentRun:
    scenario: ExperimentScenario
    experiment: Experiment
    days: list[DayDecision] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        """promoted | stopped | ended | running (still undecided after max_days)."""
        return {"completed": "promoted" if self.experiment.challenger_weight == 1.0 else "ended",
                "stopped": "stopped"}.get(self.experiment.status, "running")

    @property
    def weights(self) -> list[float]:
        """The challenger's weight after each ramp step, start included."""
        return [step.challenger_weight for step in self.experiment.history]


def run_experiment(scenario: ExperimentScenario, rules: DecisionRules = DecisionRules(),
                   start: datetime = DEFAULT_START) -> ExperimentRun:
    """Simulate day by day until the experiment finishes or ``max_days`` pass."""
    generator = TrafficGenerator(scenario)
    experiment = Experiment.start(scenario.champion_version, scenario.challenger_version, scenario.start_weight,
                                  at=start, experiment_id=f"simulated-{scenario.seed}")
    run = ExperimentRun(scenario, experiment)
    totals = {arm: _Totals() for arm in ARMS}
    units_seen = np.zeros(scenario.partners * scenario.apps, dtype=bool)  # keys seen since the last weight change
    for day in range(scenario.max_days):
        weight = experiment.challenger_weight
        traffic = generator.day(day, start, weight)
        totals[CHAMPION_ARM].add(traffic, ~traffic.challenger)
        totals[CHALLENGER_ARM].add(traffic, traffic.challenger)
        units_seen[traffic.keys] = True
        routed = _challenger_keys(scenario.partners, scenario.apps, weight)
        units = {CHAMPION_ARM: int((units_seen & ~routed).sum()), CHALLENGER_ARM: int((units_seen & routed).sum())}
        now = start + timedelta(days=day + 1)
        stats = {arm: ArmStats(arm, requests=t.requests, impressions=t.impressions, clicks=t.clicks,
                               conversions=t.conversions) for arm, t in totals.items()}
        decision = decide(now=now, started_at=experiment.start_date, weight_changed_at=experiment.weight_changed_at,
                          challenger_weight=weight, champion=stats[CHAMPION_ARM], challenger=stats[CHALLENGER_ARM],
                          srm=sample_ratio_check(units, experiment.weights()), rules=rules, end_at=experiment.end_date)
        run.days.append(DayDecision(day, weight, decision))
        if decision.changes_experiment:
            experiment = experiment.record(decision.action, decision.challenger_weight, decision.reason, at=now)
            run.experiment = experiment
            units_seen[:] = False
            if experiment.status != "active":
                break
    return run


def feedback_events(traffic: DayTraffic, scenario: ExperimentScenario) -> Iterator[dict]:
    """The day's traffic as feedback events (prediction + one click event per impression + conversions)."""
    rng = np.random.default_rng([scenario.seed, traffic.day])
    seconds = np.sort(rng.uniform(0, 86_400 - 120, size=traffic.keys.size))
    for i, key in enumerate(traffic.keys.tolist()):
        partner, app = routing_key(key, scenario.apps)
        arm = CHALLENGER_ARM if traffic.challenger[i] else CHAMPION_ARM
        moment = traffic.start + timedelta(seconds=float(seconds[i]))
        request_id = f"req-{scenario.seed}-{traffic.day}-{i}"
        yield {"event_id": f"{request_id}-p", "event_type": "prediction", "ts": format_ts(moment),
               "request_id": request_id, "partner_id": partner, "app_id": app, "arm": arm,
               "model_version": scenario.challenger_version if traffic.challenger[i] else scenario.champion_version,
               "neighbors": [], "scores": [], "predicted_ctr": None}
        clicks, conversions = int(traffic.clicks[i]), int(traffic.conversions[i])
        for n in range(int(traffic.impressions[i])):
            yield {"event_id": f"{request_id}-i{n}", "event_type": "click", "ts": format_ts(moment + timedelta(seconds=30)),
                   "app_id": f"ad-{n}", "campaign_id": "campaign-1", "partner_id": partner, "user_id": f"user-{i}",
                   "clicked": n < clicks, "request_id": request_id}
        for n in range(conversions):
            yield {"event_id": f"{request_id}-c{n}", "event_type": "conversion",
                   "ts": format_ts(moment + timedelta(seconds=90)), "app_id": f"ad-{n}", "campaign_id": "campaign-1",
                   "partner_id": partner, "user_id": f"user-{i}", "converted": True,
                   "revenue": scenario.revenue_per_conversion, "request_id": request_id}


def write_experiment_feedback(feedback_uri: str, scenario: ExperimentScenario, start: datetime, days: int,
                              challenger_weight: float) -> int:
    """Write ``days`` of experiment traffic at a fixed weight as gzip JSON lines in Firehose's
    layout (one file per hour of arrival); returns the number of events written."""
    generator = TrafficGenerator(scenario)
    written = 0
    for day in range(days):
        by_hour: dict[str, list[bytes]] = {}
        for event in feedback_events(generator.day(day, start, challenger_weight), scenario):
            by_hour.setdefault(event["ts"][:13], []).append(orjson.dumps(event))
        for hour, lines in sorted(by_hour.items()):
            arrival = datetime.strptime(hour, "%Y-%m-%dT%H").replace(tzinfo=timezone.utc)
            uri = layout.feedback_object_uri(feedback_uri, arrival, f"experiment-{scenario.seed}-{hour}.gz")
            storage.write_bytes(uri, gzip.compress(b"\n".join(lines) + b"\n", mtime=0))
            written += len(lines)
    return written

