"""The seed's winner-selection rules (section 3.4), as one pure daily decision.

Run once a day on the cumulative figures of an active experiment (the seed's daily Lambda):

1. **wait** until the experiment has run ``min_days`` (7) and every arm has ``min_requests``
   (10,000) requests: nothing is decided on less.
2. **hold** when the split of the current ramp step fails the sample ratio check: the
   assignment is broken, so no figure can be trusted (fix routing, then decisions resume).
3. **stop** on a significant regression: ``P(lift < -regression_lift) >= regression_probability``,
   by default P(CTR lift < -1%) >= 95%. The challenger gets no more traffic. Why -1% and not
   "worse at all": the rule is checked every day on growing data, and in simulation (20 seeds,
   60 days) a plain P(worse) >= 95% stopped 4-6 of 20 challengers that were exactly as good as
   the champion; asking for at least a 1% regression stopped none, and still stopped every
   3%-worse challenger (``tests/evaluation/test_ab_decision.py``).
4. A **winner** is ``P(lift > min_lift) >= win_probability`` (the seed's "ctr_improvement > 5%"
   at 95%). A winner below ``final_weight`` is **ramped** by ``ramp_step`` (10%) at most once a
   day; at ``final_weight`` (50/50, the seed's section 8.3: "gradually shift to 50/50, eventually
   100%") it is **promoted** to 100% once it has stayed a winner there for ``stable_days`` (3).
   A winner not yet due for its next step **continues**.
5. Otherwise **continue** (or **end**, keeping the champion, when the experiment's end date has
   passed without a winner).

Before those rules, **guardrails** (``check_guardrails``) read what serving measured for each arm
since the last decision: a challenger whose 5xx rate is above the champion's by more than
``max_error_rate_increase`` (absolute), or whose p99 latency is above the champion's by more than
``max_p99_increase`` (relative), is **rolled back** at once, whatever its CTR and even before
``min_days``: a broken version must not wait a week. Neither needs statistics beyond a minimum
number of requests per arm: they are operational failures, not lifts.

The decision metric is CTR (the seed's criterion; CVR is reported beside it). The figures are
cumulative over the whole experiment; "stable" means the winner condition still holds on the
day the next step is due. Every decision carries its reason as a sentence and the numbers
behind it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from evaluation.ab import DEFAULT_DRAWS, ArmStats, LiftComparison, SampleRatioCheck, compare_rates, ctr_posterior

Action = Literal["wait", "hold", "continue", "ramp", "promote", "stop", "end", "rollback"]
DAY_SECONDS = 86_400.0


@dataclass(frozen=True)
class DecisionRules:
    min_days: float = 7.0
    min_requests: int = 10_000
    min_lift: float = 0.05
    win_probability: float = 0.95
    regression_lift: float = 0.01
    regression_probability: float = 0.95
    ramp_step: float = 0.1
    ramp_interval_days: float = 1.0
    final_weight: float = 0.5
    stable_days: float = 3.0
    draws: int = DEFAULT_DRAWS
    seed: int = 0


@dataclass(frozen=True)
class Decision:
    action: Action
    challenger_weight: float  # the challenger's share after acting on the decision
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def changes_experiment(self) -> bool:
        return self.action in ("ramp", "promote", "stop", "end", "rollback")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _days(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() / DAY_SECONDS


def decide(*, now: datetime, started_at: datetime, weight_changed_at: datetime, challenger_weight: float,
           champion: ArmStats, challenger: ArmStats, srm: SampleRatioCheck, rules: DecisionRules = DecisionRules(),
           end_at: datetime | None = None) -> Decision:
    """Today's decision for an active experiment (see the module docstring for the rules)."""
    days = _days(now, started_at)
    days_at_weight = _days(now, weight_changed_at)
    numbers: dict[str, Any] = {
        "days_running": round(days, 2),
        "days_at_weight": round(days_at_weight, 2),
        "challenger_weight": challenger_weight,
        "requests": {"champion": champion.requests, "challenger": challenger.requests},
        "ctr": {"champion": champion.ctr, "challenger": challenger.ctr},
        "sample_ratio": srm.to_dict(),
    }
    fewest = min(champion.requests, challenger.requests)
    if days < rules.min_days or fewest < rules.min_requests:
        return Decision("wait", challenger_weight,
                        f"too early to decide: {days:.1f} of {rules.min_days:g} days, {fewest:,} of "
                        f"{rules.min_requests:,} requests in the smaller arm", numbers)
    if srm.mismatch:
        return Decision("hold", challenger_weight,
                        f"not deciding: {srm.describe()}; fix the assignment before trusting these figures", numbers)

    ctr = compare_rates("ctr", ctr_posterior(champion), ctr_posterior(challenger), min_lift=rules.min_lift,
                        regression_lift=rules.regression_lift, draws=rules.draws, seed=rules.seed)
    numbers["ctr_comparison"] = ctr.to_dict()
    evidence = _evidence(ctr)

    if ctr.prob_regression >= rules.regression_probability:
        return Decision("stop", 0.0,
                        f"significant regression: P(CTR lift < {-rules.regression_lift:+.0%}) = {_pct(ctr.prob_regression)} "
                        f">= {_pct(rules.regression_probability)}; {evidence}", numbers)
    if ctr.prob_lift_above_min >= rules.win_probability:
        win = f"P(CTR lift > {rules.min_lift:.0%}) = {_pct(ctr.prob_lift_above_min)} >= {_pct(rules.win_probability)}"
        if challenger_weight < rules.final_weight - 1e-9:
            if days_at_weight < rules.ramp_interval_days:
                return Decision("continue", challenger_weight,
                                f"winning ({win}) but the weight changed {days_at_weight:.1f} days ago; next step "
                                f"after {rules.ramp_interval_days:g} day(s); {evidence}", numbers)
            weight = round(min(challenger_weight + rules.ramp_step, rules.final_weight), 4)
            return Decision("ramp", weight, f"winner: {win}; ramping the challenger {challenger_weight:.0%} -> "
                                            f"{weight:.0%}; {evidence}", numbers)
        if days_at_weight >= rules.stable_days:
            return Decision("promote", 1.0, f"winner, stable for {days_at_weight:.1f} days at {challenger_weight:.0%}: "
                                            f"{win}; promoting to 100%; {evidence}", numbers)
        return Decision("continue", challenger_weight,
                        f"winning at the final step ({win}): day {days_at_weight:.1f} of {rules.stable_days:g} "
                        f"stable days before promotion; {evidence}", numbers)
    undecided = (f"no winner yet: P(CTR lift > {rules.min_lift:.0%}) = {_pct(ctr.prob_lift_above_min)} < "
                 f"{_pct(rules.win_probability)}, P(regression) = {_pct(ctr.prob_regression)}; {evidence}")
    if end_at is not None and now >= end_at:
        return Decision("end", 0.0, f"end date {end_at:%Y-%m-%d} reached with {undecided}; the champion stays", numbers)
    return Decision("continue", challenger_weight, undecided, numbers)


def _evidence(ctr: LiftComparison) -> str:
    low, high = ctr.lift_interval
    return (f"CTR champion {ctr.champion.mean:.3%} vs challenger {ctr.challenger.mean:.3%}, lift {ctr.lift_mean:+.1%} "
            f"[{ctr.credible:.0%} CI {low:+.1%}, {high:+.1%}], P(better) = {_pct(ctr.prob_challenger_better)}, "
            f"expected loss {ctr.expected_loss_challenger:.2g}")


@dataclass(frozen=True)
class GuardrailRules:
    max_error_rate_increase: float = 0.01
    max_p99_increase: float = 0.25
    min_requests: int = 500


@dataclass(frozen=True)
class ServingArmMetrics:
    """What serving measured for one arm over a window: requests, 5xx answers and the latency
    histogram (cumulative ``(upper bound in seconds, count)`` pairs, Prometheus' ``le`` buckets), or
    the p99 itself where the metrics store computes it (CloudWatch, from the distribution)."""

    arm: str
    requests: float = 0.0
    errors: float = 0.0
    latency_buckets: tuple[tuple[float, float], ...] = ()
    p99_seconds: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_quantile(self, q: float) -> float | None:
        """The q-quantile in seconds, interpolated within its bucket as PromQL's histogram_quantile does."""
        buckets = sorted(self.latency_buckets)
        if not buckets or buckets[-1][1] <= 0:
            return None
        rank = q * buckets[-1][1]
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    return lower_bound  # the highest finite bound: all PromQL can say too
                width = count - lower_count
                return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1.0)
            lower_bound, lower_count = bound, count
        return lower_bound

    def p99(self) -> float | None:
        """The p99 in seconds: as measured, else from the histogram; None without either."""
        return self.p99_seconds if self.p99_seconds is not None else self.latency_quantile(0.99)

    def to_dict(self) -> dict[str, Any]:
        p99 = self.p99()
        return {"requests": self.requests, "errors": self.errors, "error_rate": round(self.error_rate, 6),
                "p99_ms": None if p99 is None else round(p99 * 1000, 3)}


def check_guardrails(champion: ServingArmMetrics, challenger: ServingArmMetrics,
                     rules: GuardrailRules = GuardrailRules()) -> tuple[Decision | None, dict[str, Any]]:
    """A rollback decision when a guardrail breaks, else None; and the numbers either way."""
    numbers: dict[str, Any] = {"champion": champion.to_dict(), "challenger": challenger.to_dict(),
                               "rules": asdict(rules)}
    fewest = min(champion.requests, challenger.requests)
    if fewest < rules.min_requests:
        numbers["verdict"] = f"not judged: {fewest:,.0f} of {rules.min_requests:,} requests in the smaller arm"
        return None, numbers
    broken = []
    error_limit = champion.error_rate + rules.max_error_rate_increase
    if challenger.error_rate > error_limit:
        broken.append(f"challenger 5xx rate {challenger.error_rate:.2%} > champion {champion.error_rate:.2%} "
                      f"+ {rules.max_error_rate_increase:.2%}")
    champion_p99, challenger_p99 = champion.p99(), challenger.p99()
    if champion_p99 is not None and challenger_p99 is not None:
        latency_limit = champion_p99 * (1 + rules.max_p99_increase)
        if challenger_p99 > latency_limit:
            broken.append(f"challenger p99 {challenger_p99 * 1000:.1f} ms > champion {champion_p99 * 1000:.1f} ms "
                          f"x {1 + rules.max_p99_increase:g}")
    numbers["verdict"] = "; ".join(broken) or "ok"
    if not broken:
        return None, numbers
    return Decision("rollback", 0.0, "guardrail broken: " + "; ".join(broken) + "; all traffic back to the champion",
                    {"guardrails": numbers}), numbers
