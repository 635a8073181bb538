"""A/B analysis of an experiment: per-arm figures from the feedback, posteriors, today's decision, the report.

The one place every caller gets them from: `appsim ab report` (pipelines/cli/ab.py), the daily
decision (``pipelines.rollout.DailyDecision``) and the notebooks. ``analyse`` has no side
effects; ``write_report`` writes ``report.json``, ``report.html`` (evaluation/report.py renders
it) and, when there is data enough to draw them, ``posteriors.png``.

A rate's lift is shown only once both arms have ``MIN_SUCCESSES`` successes (clicks for CTR,
conversions for CVR): below that, the posterior of the smaller arm is mostly the prior and the
lift's interval spans orders of magnitude (0 clicks against 3 reads as "+706% [-95%, +1881%]").
The decision has its own, larger floor (``rollout.min_requests`` requests per arm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from evaluation.ab import ArmStats, LiftComparison, SampleRatioCheck, arm_stats, compare_arms, sample_ratio_check
from evaluation.ab_decision import Decision, DecisionRules, decide
from models import layout, storage
from models.experiments import CHALLENGER_ARM, CHAMPION_ARM, Experiment
from pipelines.config import PipelineConfig
from pipelines.feedback_events import FeedbackEvents, read_events

MIN_SUCCESSES = 10
# rate -> (successes, trials) per arm, and their names in messages
RATE_COUNTS = {"ctr": ("clicks", "impressions"), "cvr": ("conversions", "clicks")}


def json_numbers(numbers: dict[str, Any]) -> dict[str, Any]:
    """Numbers as JSON holds them (datetimes as strings, tuples as lists)."""
    return json.loads(json.dumps(numbers, default=str))


@dataclass(frozen=True)
class Analysis:
    experiment: Experiment
    now: datetime
    arms: dict[str, ArmStats]
    comparisons: dict[str, LiftComparison]
    srm: SampleRatioCheck
    decision: Decision
    feedback: dict[str, Any]  # what was read: events, invalid lines, unreadable files
    rules: DecisionRules

    def shortfall(self, rate: str) -> str | None:
        """Why ``rate``'s lift is not shown yet (None when both arms have data enough)."""
        successes, trials = RATE_COUNTS[rate]
        counts = {arm: getattr(s, successes) for arm, s in self.arms.items()}
        if min(counts.values()) >= MIN_SUCCESSES:
            return None
        have = ", ".join(f"{arm} {n:,} {successes} in {getattr(self.arms[arm], trials):,} {trials}"
                         for arm, n in counts.items())
        return (f"not enough data: each arm needs at least {MIN_SUCCESSES} {successes} ({have}); the decision "
                f"also waits for {self.rules.min_requests:,} requests per arm")

    def shown(self) -> dict[str, LiftComparison]:
        """The comparisons with data enough to read."""
        return {name: c for name, c in self.comparisons.items() if self.shortfall(name) is None}

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment.model_dump(mode="json"),
            "at": self.now.isoformat(),
            "arms": {arm: s.to_dict() for arm, s in self.arms.items()},
            "comparisons": {name: c.to_dict() for name, c in self.comparisons.items()},
            "not_enough_data": {name: why for name in self.comparisons if (why := self.shortfall(name))},
            "sample_ratio": self.srm.to_dict(),
            "decision": json_numbers(self.decision.to_dict()),
            "feedback": self.feedback,
        }

    def summary(self) -> str:
        """The text a person reads: per-arm table, each rate's lift (or why not yet), SRM, decision."""
        experiment = self.experiment
        lines = [f"experiment {experiment.experiment_id} ({experiment.status}): champion v{experiment.champion_version} "
                 f"vs challenger v{experiment.challenger_version} at {experiment.challenger_weight:.0%}",
                 "",
                 f"{'arm':<11}{'requests':>10}{'units':>8}{'impr.':>10}{'clicks':>8}{'CTR':>9}{'CVR':>8}"
                 f"{'rev/req':>9}{'p99 ms':>8}"]
        for arm, s in self.arms.items():
            p99 = f"{s.latency_ms['p99']:.1f}" if s.latency_ms else "-"
            lines.append(f"{arm:<11}{s.requests:>10,}{s.units:>8,}{s.impressions:>10,}{s.clicks:>8,}{s.ctr:>9.3%}"
                         f"{s.cvr:>8.2%}{s.revenue_per_request:>9.4f}{p99:>8}")
        lines.append("")
        for name, c in self.comparisons.items():
            why = self.shortfall(name)
            if why:
                lines.append(f"{name.upper()}: {why}")
                continue
            low, high = c.lift_interval
            lines.append(f"{name.upper()}: lift {c.lift_mean:+.2%} [95% CI {low:+.2%}, {high:+.2%}], P(better) "
                         f"{c.prob_challenger_better:.1%}, P(lift > {c.min_lift:.0%}) {c.prob_lift_above_min:.1%}, "
                         f"expected loss {c.expected_loss_challenger:.2g}")
        lines.append(self.srm.describe())
        if self.feedback["invalid_lines"] or self.feedback["unreadable_files"]:
            lines.append(f"skipped: {self.feedback['invalid_lines']:,} invalid line(s), "
                         f"{len(self.feedback['unreadable_files'])} unreadable file(s) (prepare quarantines them "
                         "with their reasons)")
        lines += ["", f"decision: {self.decision.action} (challenger weight -> {self.decision.challenger_weight:.0%})",
                  f"why: {self.decision.reason}"]
        return "\n".join(lines)


def analyse(config: PipelineConfig, experiment: Experiment, now: datetime,
            rules: DecisionRules = DecisionRules()) -> Analysis:
    """Figures, comparisons and today's decision for an experiment (no side effects)."""
    read: FeedbackEvents = read_events(layout.feedback_uri(config.store), experiment.start_date, now)
    cumulative = arm_stats(read.events, since=experiment.start_date, until=now)
    current_step = arm_stats(read.events, since=experiment.weight_changed_at, until=now)
    champion = cumulative.get(CHAMPION_ARM, ArmStats(CHAMPION_ARM))
    challenger = cumulative.get(CHALLENGER_ARM, ArmStats(CHALLENGER_ARM))
    srm = sample_ratio_check({arm: s.units for arm, s in current_step.items()}, experiment.weights())
    decision = decide(now=now, started_at=experiment.start_date, weight_changed_at=experiment.weight_changed_at,
                      challenger_weight=experiment.challenger_weight, champion=champion, challenger=challenger,
                      srm=srm, rules=rules, end_at=experiment.end_date)
    comparisons = compare_arms(champion, challenger, min_lift=rules.min_lift, regression_lift=rules.regression_lift,
                               draws=rules.draws, seed=rules.seed)
    return Analysis(experiment, now, {CHAMPION_ARM: champion, CHALLENGER_ARM: challenger}, comparisons, srm,
                    decision, read.to_dict(), rules)


def report_folder(store: str, experiment_id: str, now: datetime) -> str:
    return storage.join(store, "experiments", experiment_id, "reports", now.strftime("%Y%m%dT%H%M%SZ"))


def write_report(analysis: Analysis, folder: str) -> str:
    """Write report.json, report.html and (with data enough to draw) posteriors.png; return the HTML's URI."""
    from evaluation.report import ab_posterior_png, render_ab

    report = analysis.to_dict()
    shown = analysis.shown()
    png = ab_posterior_png(shown) if shown else None
    storage.write_json(storage.join(folder, "report.json"), report)
    if png is not None:
        storage.write_bytes(storage.join(folder, "posteriors.png"), png)
    uri = storage.join(folder, "report.html")
    storage.write_bytes(uri, render_ab(f"A/B report {analysis.experiment.experiment_id}", analysis.summary(), png,
                                       report).encode())
    return uri
