"""A/B statistics: per-arm figures from feedback, Beta-Binomial posteriors, sample ratio mismatch.

Feedback joins on ``request_id``: a ``prediction`` event says which arm answered a request;
``click`` events carrying that request id are the impressions it produced (``clicked`` says
whether it was clicked) and ``conversion`` events carrying it are its conversions and revenue.
Events are deduplicated by ``event_id`` (producers retry). Definitions, per arm:

- requests: prediction events; impressions: attributed click events; clicks: those clicked;
- units: distinct ``partner_id:app_id`` pairs, the unit the seed's hash routing assigns;
- CTR = clicks / impressions; CVR = conversions / clicks (as in prepare's app statistics);
- revenue per request = attributed revenue / requests;
- latency percentiles when prediction events carry an optional ``latency_ms`` field.

Posteriors: a rate with ``s`` successes in ``n`` trials has the posterior
``Beta(1 + s, 1 + n - s)``: a uniform ``Beta(1, 1)`` prior, which is worth two pseudo-trials and
so is negligible at the 10,000-requests-per-arm decision size. The comparison of two arms
(relative lift ``challenger / champion - 1``) is a Monte Carlo over ``draws`` paired posterior
samples from a seeded generator: deterministic for a given input, with a standard error of at
most 0.11 percentage points on each probability at the default 200,000 draws (~35 ms). Callers
that decide many times (the experiment simulator) may pass fewer draws.

Sample ratio mismatch: a chi-square goodness-of-fit test of observed counts per arm against
the configured shares. The default alpha is 0.001 (the usual SRM threshold: an SRM alarm means
the assignment is broken, so it must almost never fire by chance); a 45/55 split of 10,000 on
a 50/50 experiment gives chi-square 100 and p ~ 1e-23. The decision counts routing *units*
(distinct partner:app pairs), because the hash assigns pairs, not requests: every pair lands
in the challenger independently with probability = its weight, which is what the test assumes,
while requests cluster on popular pairs and would raise false alarms at large volumes. (The
same clustering makes the per-impression posteriors somewhat optimistic when CTR varies a lot
between pairs; with many pairs per arm the effect is small.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
from scipy import stats

from models.events import parse_utc

UNIFORM_PRIOR = (1.0, 1.0)
DEFAULT_DRAWS = 200_000
SRM_ALPHA = 0.001


class ABError(ValueError):
    """A/B figures that cannot be computed as asked."""


# --- per-arm figures --------------------------------------------------------------------------
@dataclass(frozen=True)
class ArmStats:
    arm: str
    requests: int = 0
    units: int = 0
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    model_versions: tuple[int, ...] = ()
    latency_ms: dict[str, float] | None = None  # {"p50", "p95", "p99"} when events carry latency_ms

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def cvr(self) -> float:
        return self.conversions / self.clicks if self.clicks else 0.0

    @property
    def revenue_per_request(self) -> float:
        return self.revenue / self.requests if self.requests else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model_versions"] = list(self.model_versions)
        data.update(ctr=self.ctr, cvr=self.cvr, revenue_per_request=self.revenue_per_request)
        return data


def _parse_ts(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return parse_utc(str(value))


@dataclass
class _Request:
    arm: str
    unit: tuple[str, str]
    model_version: int
    latency_ms: float | None
    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0


def arm_stats(events: Iterable[Mapping[str, Any]], *, since: datetime | None = None,
              until: datetime | None = None) -> dict[str, ArmStats]:
    """Per-arm figures of the requests answered in ``[since, until)`` (prediction ``ts``).

    ``events`` are validated event dicts in any order (outcomes may precede their prediction
    in a file). Outcomes of requests outside the range, or without a request id, are ignored.
    """
    seen: set[str] = set()
    requests: dict[str, _Request] = {}
    outcomes: list[Mapping[str, Any]] = []
    for event in events:
        event_id = event["event_id"]
        if event_id in seen:
            continue
        seen.add(event_id)
        kind = event["event_type"]
        if kind == "prediction":
            ts = _parse_ts(event["ts"])
            if (since is not None and ts < since) or (until is not None and ts >= until):
                continue
            latency = event.get("latency_ms")
            requests.setdefault(event["request_id"], _Request(
                event["arm"], (event["partner_id"], event["app_id"]), int(event["model_version"]),
                None if latency is None else float(latency)))
        elif event.get("request_id"):
            outcomes.append(event)
    for event in outcomes:
        request = requests.get(event["request_id"])
        if request is None:
            continue
        if event["event_type"] == "click":
            request.impressions += 1
            request.clicks += bool(event["clicked"])
        elif event["event_type"] == "conversion" and event["converted"]:
            request.conversions += 1
            request.revenue += float(event.get("revenue") or 0.0)
    by_arm: dict[str, list[_Request]] = {}
    for request in requests.values():
        by_arm.setdefault(request.arm, []).append(request)
    return {arm: _summarise(arm, rows) for arm, rows in sorted(by_arm.items())}


def _summarise(arm: str, rows: list[_Request]) -> ArmStats:
    latencies = np.array([r.latency_ms for r in rows if r.latency_ms is not None], dtype=float)
    latency = None
    if latencies.size:
        p50, p95, p99 = np.percentile(latencies, [50, 95, 99])
        latency = {"p50": float(p50), "p95": float(p95), "p99": float(p99)}
    return ArmStats(
        arm=arm,
        requests=len(rows),
        units=len({r.unit for r in rows}),
        impressions=sum(r.impressions for r in rows),
        clicks=sum(r.clicks for r in rows),
        conversions=sum(r.conversions for r in rows),
        revenue=float(sum(r.revenue for r in rows)),
        model_versions=tuple(sorted({r.model_version for r in rows})),
        latency_ms=latency,
    )


# --- posteriors -------------------------------------------------------------------------------
@dataclass(frozen=True)
class BetaPosterior:
    alpha: float
    beta: float

    @classmethod
    def from_counts(cls, successes: int, trials: int, prior: tuple[float, float] = UNIFORM_PRIOR) -> "BetaPosterior":
        if trials < 0 or successes < 0 or successes > trials:
            raise ABError(f"counts must satisfy 0 <= successes <= trials, got {successes} of {trials}")
        return cls(prior[0] + successes, prior[1] + trials - successes)

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    def interval(self, credible: float = 0.95) -> tuple[float, float]:
        tail = (1 - credible) / 2
        low, high = stats.beta.ppf([tail, 1 - tail], self.alpha, self.beta)
        return float(low), float(high)


@dataclass(frozen=True)
class LiftComparison:
    """Challenger vs champion on one rate; lift = challenger / champion - 1."""

    metric: str
    champion: BetaPosterior
    challenger: BetaPosterior
    prob_challenger_better: float
    min_lift: float
    prob_lift_above_min: float        # P(lift > min_lift)
    regression_lift: float
    prob_regression: float            # P(lift < -regression_lift)
    expected_loss_challenger: float   # E[max(champion - challenger, 0)]: rate lost by choosing the challenger
    expected_loss_champion: float     # E[max(challenger - champion, 0)]: rate lost by keeping the champion
    lift_mean: float
    lift_interval: tuple[float, float]
    credible: float
    draws: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["champion"] = {**asdict(self.champion), "mean": self.champion.mean}
        data["challenger"] = {**asdict(self.challenger), "mean": self.challenger.mean}
        data["lift_interval"] = list(self.lift_interval)
        return data


def posterior_draws(posterior: BetaPosterior, draws: int, rng: np.random.Generator) -> np.ndarray:
    return rng.beta(posterior.alpha, posterior.beta, size=draws)


def compare_rates(metric: str, champion: BetaPosterior, challenger: BetaPosterior, *, min_lift: float = 0.05,
                  regression_lift: float = 0.0, credible: float = 0.95, draws: int = DEFAULT_DRAWS,
                  seed: int = 0) -> LiftComparison:
    """P(challenger better), P(lift > min_lift), P(lift < -regression_lift), expected losses and the
    central ``credible`` interval of the relative lift, from ``draws`` seeded paired samples."""
    if draws < 1000:
        raise ABError(f"draws={draws} is too few for stable probabilities; use at least 1000 (default {DEFAULT_DRAWS})")
    rng = np.random.default_rng(seed)
    a = posterior_draws(champion, draws, rng)
    b = posterior_draws(challenger, draws, rng)
    lift = b / a - 1.0
    tail = (1 - credible) / 2
    low, high = np.quantile(lift, [tail, 1 - tail])
    return LiftComparison(
        metric=metric,
        champion=champion,
        challenger=challenger,
        prob_challenger_better=float(np.mean(b > a)),
        min_lift=min_lift,
        prob_lift_above_min=float(np.mean(lift > min_lift)),
        regression_lift=regression_lift,
        prob_regression=float(np.mean(lift < -regression_lift)),
        expected_loss_challenger=float(np.mean(np.maximum(a - b, 0.0))),
        expected_loss_champion=float(np.mean(np.maximum(b - a, 0.0))),
        lift_mean=float(np.mean(lift)),
        lift_interval=(float(low), float(high)),
        credible=credible,
        draws=draws,
        seed=seed,
    )


def ctr_posterior(arm: ArmStats) -> BetaPosterior:
    return BetaPosterior.from_counts(arm.clicks, arm.impressions)


def cvr_posterior(arm: ArmStats) -> BetaPosterior:
    return BetaPosterior.from_counts(arm.conversions, arm.clicks)


def compare_arms(champion: ArmStats, challenger: ArmStats, **options: Any) -> dict[str, LiftComparison]:
    """CTR (clicks per impression) and CVR (conversions per click) comparisons of two arms."""
    return {
        "ctr": compare_rates("ctr", ctr_posterior(champion), ctr_posterior(challenger), **options),
        "cvr": compare_rates("cvr", cvr_posterior(champion), cvr_posterior(challenger), **options),
    }


# --- sample ratio mismatch ----------------------------------------------------------------------
@dataclass(frozen=True)
class SampleRatioCheck:
    observed: dict[str, int]
    expected_shares: dict[str, float]
    chi_square: float
    p_value: float
    alpha: float = SRM_ALPHA
    observed_shares: dict[str, float] = field(default_factory=dict)

    @property
    def mismatch(self) -> bool:
        return self.p_value < self.alpha

    def describe(self) -> str:
        split = ", ".join(f"{arm} {self.observed_shares.get(arm, 0):.1%} (expected {share:.1%})"
                          for arm, share in self.expected_shares.items())
        verdict = "MISMATCH" if self.mismatch else "ok"
        return f"sample ratio {verdict}: {split}; chi-square {self.chi_square:.2f}, p = {self.p_value:.3g} (alpha {self.alpha:g})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mismatch": self.mismatch}


def sample_ratio_check(observed: Mapping[str, int], expected_shares: Mapping[str, float],
                       alpha: float = SRM_ALPHA) -> SampleRatioCheck:
    """Chi-square test of requests per arm against the configured shares (arms with share 0 must see none)."""
    arms = [arm for arm, share in expected_shares.items() if share > 0]
    stray = {arm: int(n) for arm, n in observed.items() if arm not in arms and n > 0}
    counts = {arm: int(observed.get(arm, 0)) for arm in arms}
    total = sum(counts.values()) + sum(stray.values())
    shares = {arm: (n / total if total else 0.0) for arm, n in {**counts, **stray}.items()}
    # Requests in an arm that should get none: the assignment is broken whatever the counts.
    if stray:
        return SampleRatioCheck({**counts, **stray}, dict(expected_shares), float("inf"), 0.0, alpha, shares)
    if total == 0 or len(arms) < 2:
        return SampleRatioCheck(counts, dict(expected_shares), 0.0, 1.0, alpha, shares)
    share_sum = sum(expected_shares[arm] for arm in arms)
    expected = np.array([expected_shares[arm] / share_sum * total for arm in arms])
    chi_square, p_value = stats.chisquare([counts[arm] for arm in arms], expected)
    return SampleRatioCheck(counts, dict(expected_shares), float(chi_square), float(p_value), alpha, shares)
