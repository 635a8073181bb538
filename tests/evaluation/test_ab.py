import json
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy import integrate, stats

from evaluation.ab import (
    DEFAULT_DRAWS, ABError, ArmStats, BetaPosterior, arm_stats, compare_arms, compare_rates, sample_ratio_check,
)

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
PP = 0.005  # the must-show tolerance: half a percentage point


def ts(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def prediction(request_id, arm, minutes=0, version=1, **extra):
    return {"event_id": f"p-{request_id}", "event_type": "prediction", "ts": ts(minutes), "request_id": request_id,
            "partner_id": "p", "app_id": "a", "model_version": version, "arm": arm, "neighbors": [], "scores": [],
            **extra}


def click(request_id, clicked, n, minutes=1):
    return {"event_id": f"c-{request_id}-{n}", "event_type": "click", "ts": ts(minutes), "app_id": "b",
            "campaign_id": "c", "partner_id": "p", "user_id": "u", "clicked": clicked, "request_id": request_id}


def conversion(request_id, revenue, n=0, converted=True):
    return {"event_id": f"v-{request_id}-{n}", "event_type": "conversion", "ts": ts(2), "app_id": "b",
            "campaign_id": "c", "partner_id": "p", "user_id": "u", "converted": converted, "revenue": revenue,
            "request_id": request_id}


def test_arm_stats_joins_outcomes_to_requests_by_request_id():
    events = [
        click("r1", True, 0), click("r1", False, 1),  # outcomes before their prediction still count
        prediction("r1", "champion", latency_ms=10.0), prediction("r2", "champion", latency_ms=30.0),
        prediction("r3", "challenger", version=2),
        click("r2", False, 0), click("r3", True, 0), click("r3", True, 0),  # the second is a retried duplicate
        conversion("r1", 2.5), conversion("r3", 4.0), conversion("r3", 9.9, n=1, converted=False),
        click("unknown-request", True, 0), {**click("x", True, 9), "request_id": None},
    ]
    result = arm_stats(events)
    champion, challenger = result["champion"], result["challenger"]
    assert (champion.requests, champion.impressions, champion.clicks, champion.conversions) == (2, 3, 1, 1)
    assert champion.ctr == pytest.approx(1 / 3) and champion.cvr == 1.0
    assert champion.revenue_per_request == pytest.approx(1.25)
    assert champion.latency_ms["p50"] == pytest.approx(20.0)
    assert (challenger.requests, challenger.impressions, challenger.clicks, challenger.revenue) == (1, 1, 1, 4.0)
    assert challenger.model_versions == (2,) and challenger.latency_ms is None
    json.dumps(champion.to_dict())


def test_arm_stats_keeps_only_requests_in_the_window():
    events = [prediction("early", "champion", minutes=-5), prediction("in", "champion", minutes=5),
              prediction("late", "champion", minutes=65), click("early", True, 0), click("in", True, 0)]
    result = arm_stats(events, since=T0, until=T0 + timedelta(hours=1))
    assert result["champion"].requests == 1 and result["champion"].clicks == 1


def reference_probability(champion: BetaPosterior, challenger: BetaPosterior, lift: float) -> float:
    """P(challenger > (1 + lift) * champion) by numerical integration (no sampling)."""
    a = stats.beta(champion.alpha, champion.beta)
    b = stats.beta(challenger.alpha, challenger.beta)
    low, high = a.ppf(1e-12), a.ppf(1 - 1e-12)
    value, _ = integrate.quad(lambda x: a.pdf(x) * b.sf((1 + lift) * x), low, high, limit=200, points=[a.mean()])
    return value


def reference_lift_draws(champion: BetaPosterior, challenger: BetaPosterior, n: int = 1_000_000) -> np.ndarray:
    """An independent Monte Carlo: Beta draws built from Gamma ratios, another generator and seed."""
    rng = np.random.Generator(np.random.PCG64DXSM(20260301))

    def beta(p: BetaPosterior) -> np.ndarray:
        x, y = rng.gamma(p.alpha, size=n), rng.gamma(p.beta, size=n)
        return x / (x + y)

    return beta(challenger) / beta(champion) - 1


CASES = [
    (500, 10_000, 540, 10_000),     # +8% at 10K impressions
    (2_000, 40_000, 1_960, 40_000),  # -2% at 40K
    (30, 400, 45, 410),              # small counts: the prior matters, skewed posteriors
    (5_000, 100_000, 5_300, 60_000),  # unequal arms
]


@pytest.mark.parametrize("counts", CASES)
def test_posterior_probabilities_and_interval_match_references_within_half_a_point(counts):
    champion = BetaPosterior.from_counts(counts[0], counts[1])
    challenger = BetaPosterior.from_counts(counts[2], counts[3])
    result = compare_rates("ctr", champion, challenger, min_lift=0.05, regression_lift=0.02)

    assert result.prob_challenger_better == pytest.approx(reference_probability(champion, challenger, 0.0), abs=PP)
    assert result.prob_lift_above_min == pytest.approx(reference_probability(champion, challenger, 0.05), abs=PP)
    assert result.prob_regression == pytest.approx(1 - reference_probability(champion, challenger, -0.02), abs=PP)

    lift = reference_lift_draws(champion, challenger)
    low, high = np.quantile(lift, [0.025, 0.975])
    assert result.lift_interval[0] == pytest.approx(low, abs=PP)
    assert result.lift_interval[1] == pytest.approx(high, abs=PP)
    # The interval is a 95% interval of the reference distribution too (coverage within half a point).
    assert np.mean((lift >= result.lift_interval[0]) & (lift <= result.lift_interval[1])) == pytest.approx(0.95, abs=PP)
    assert result.lift_mean == pytest.approx(lift.mean(), abs=PP)


def test_expected_loss_matches_its_closed_form():
    champion, challenger = BetaPosterior.from_counts(500, 10_000), BetaPosterior.from_counts(470, 10_000)
    result = compare_rates("ctr", champion, challenger)
    a = stats.beta(champion.alpha, champion.beta)
    b = stats.beta(challenger.alpha, challenger.beta)
    mean_b_above = stats.beta(challenger.alpha + 1, challenger.beta)
    # E[max(A - B, 0)] = E_A[A * F_B(A) - E[B] * F_{Beta(alpha_B + 1, beta_B)}(A)]
    exact, _ = integrate.quad(lambda x: a.pdf(x) * (x * b.cdf(x) - b.mean() * mean_b_above.cdf(x)),
                              a.ppf(1e-12), a.ppf(1 - 1e-12), limit=200)
    assert result.expected_loss_challenger == pytest.approx(exact, rel=0.02)
    assert result.expected_loss_challenger > result.expected_loss_champion


def test_comparison_is_deterministic_and_reports_its_draws():
    champion, challenger = BetaPosterior.from_counts(50, 1000), BetaPosterior.from_counts(60, 1000)
    assert compare_rates("ctr", champion, challenger) == compare_rates("ctr", champion, challenger)
    assert compare_rates("ctr", champion, challenger, seed=1).draws == DEFAULT_DRAWS
    with pytest.raises(ABError, match="at least 1000"):
        compare_rates("ctr", champion, challenger, draws=10)


def test_compare_arms_compares_ctr_and_cvr():
    champion = ArmStats("champion", requests=1000, impressions=1000, clicks=50, conversions=5)
    challenger = ArmStats("challenger", requests=1000, impressions=1000, clicks=80, conversions=20)
    result = compare_arms(champion, challenger)
    assert result["ctr"].challenger.alpha == 81 and result["ctr"].challenger.beta == 921
    assert result["cvr"].champion == BetaPosterior(6, 46)
    assert result["ctr"].prob_challenger_better > 0.99


def test_posterior_uses_the_uniform_prior_and_rejects_impossible_counts():
    posterior = BetaPosterior.from_counts(3, 10)
    assert (posterior.alpha, posterior.beta) == (4, 8)
    low, high = posterior.interval()
    assert low < posterior.mean < high
    with pytest.raises(ABError, match="successes <= trials"):
        BetaPosterior.from_counts(11, 10)


def test_a_45_55_split_on_a_50_50_experiment_is_a_sample_ratio_mismatch():
    check = sample_ratio_check({"champion": 4_500, "challenger": 5_500}, {"champion": 0.5, "challenger": 0.5})
    assert check.mismatch and check.chi_square == pytest.approx(100.0)
    assert "MISMATCH" in check.describe() and "45.0%" in check.describe()


def test_a_fair_split_is_not_flagged_and_weights_are_respected():
    rng = np.random.default_rng(7)
    flagged = 0
    for _ in range(200):
        challenger = int(rng.binomial(20_000, 0.1))
        check = sample_ratio_check({"champion": 20_000 - challenger, "challenger": challenger},
                                   {"champion": 0.9, "challenger": 0.1})
        flagged += check.mismatch
    assert flagged <= 2  # alpha = 0.001
    assert sample_ratio_check({"champion": 9_000, "challenger": 1_000}, {"champion": 0.9, "challenger": 0.1}).p_value == 1.0
    assert sample_ratio_check({"champion": 5_050, "challenger": 4_950}, {"champion": 0.5, "challenger": 0.5}).mismatch is False


def test_traffic_in_an_arm_that_should_get_none_is_a_mismatch():
    check = sample_ratio_check({"champion": 1_000, "challenger": 3}, {"champion": 1.0, "challenger": 0.0})
    assert check.mismatch
    assert check.to_dict()["mismatch"] is True
