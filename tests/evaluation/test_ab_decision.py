from datetime import datetime, timedelta, timezone

import pytest

from evaluation.ab import ArmStats, sample_ratio_check
from evaluation.ab_decision import DecisionRules, decide
from pipelines.simulators.experiment import ExperimentScenario, run_experiment

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
FAST = DecisionRules(draws=20_000)  # simulations decide every day: fewer draws, same rules
FAIR = sample_ratio_check({"champion": 9_000, "challenger": 1_000}, {"champion": 0.9, "challenger": 0.1})


def arms(champion_ctr: float, challenger_ctr: float, impressions: int = 200_000, requests: int = 50_000):
    return (ArmStats("champion", requests=requests, impressions=impressions, clicks=round(champion_ctr * impressions)),
            ArmStats("challenger", requests=requests, impressions=impressions, clicks=round(challenger_ctr * impressions)))


def decision_for(champion_ctr, challenger_ctr, *, days=10.0, days_at_weight=2.0, weight=0.1, srm=FAIR,
                 end_at=None, **arm_options):
    champion, challenger = arms(champion_ctr, challenger_ctr, **arm_options)
    now = T0 + timedelta(days=days)
    return decide(now=now, started_at=T0, weight_changed_at=now - timedelta(days=days_at_weight),
                  challenger_weight=weight, champion=champion, challenger=challenger, srm=srm, end_at=end_at)


def test_waits_for_seven_days_and_ten_thousand_requests_per_arm():
    early = decision_for(0.05, 0.06, days=6.5)
    assert early.action == "wait" and "6.5 of 7 days" in early.reason
    small = decision_for(0.05, 0.06, requests=9_999)
    assert small.action == "wait" and "9,999 of 10,000 requests" in small.reason
    assert small.challenger_weight == 0.1 and not small.changes_experiment


def test_a_clear_winner_ramps_by_ten_points_once_a_day():
    ramp = decision_for(0.05, 0.056)
    assert (ramp.action, ramp.challenger_weight) == ("ramp", 0.2)
    assert "P(CTR lift > 5%)" in ramp.reason and "CI" in ramp.reason
    assert ramp.numbers["ctr_comparison"]["prob_lift_above_min"] >= 0.95
    too_soon = decision_for(0.05, 0.056, days_at_weight=0.5)
    assert (too_soon.action, too_soon.challenger_weight) == ("continue", 0.1)
    assert decision_for(0.05, 0.056, weight=0.45).challenger_weight == 0.5  # the last step stops at the final weight


def test_promotes_after_three_stable_days_at_the_final_step():
    waiting = decision_for(0.05, 0.056, weight=0.5, days_at_weight=2.0)
    assert waiting.action == "continue" and "day 2.0 of 3 stable days" in waiting.reason
    promote = decision_for(0.05, 0.056, weight=0.5, days_at_weight=3.0)
    assert (promote.action, promote.challenger_weight) == ("promote", 1.0)


def test_a_significant_regression_stops_the_challenger():
    stop = decision_for(0.05, 0.047)
    assert (stop.action, stop.challenger_weight) == ("stop", 0.0)
    assert "significant regression" in stop.reason and stop.numbers["ctr_comparison"]["prob_regression"] >= 0.95


def test_no_winner_keeps_running_until_the_end_date():
    undecided = decision_for(0.05, 0.051)
    assert undecided.action == "continue" and "no winner yet" in undecided.reason
    ended = decision_for(0.05, 0.051, end_at=T0 + timedelta(days=9))
    assert (ended.action, ended.challenger_weight) == ("end", 0.0) and "the champion stays" in ended.reason


def test_a_sample_ratio_mismatch_holds_every_decision():
    broken = sample_ratio_check({"champion": 4_500, "challenger": 5_500}, {"champion": 0.5, "challenger": 0.5})
    held = decision_for(0.05, 0.06, srm=broken)
    assert held.action == "hold" and "MISMATCH" in held.reason
    assert held.numbers["sample_ratio"]["mismatch"] is True


# --- simulated experiments (the must-show) -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_a_challenger_8_percent_better_walks_the_ramp_to_promotion(seed):
    run = run_experiment(ExperimentScenario(true_lift=0.08, seed=seed), FAST)
    assert run.outcome == "promoted"
    assert run.weights == [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]
    steps = run.experiment.history
    assert (steps[1].at - steps[0].at) >= timedelta(days=7)          # nothing before 7 days
    assert (steps[-1].at - steps[-2].at) >= timedelta(days=3)        # 3 stable days at 50%
    assert all("P(CTR lift > 5%)" in step.reason for step in steps[1:])


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_a_challenger_3_percent_worse_is_stopped(seed):
    run = run_experiment(ExperimentScenario(true_lift=-0.03, seed=seed), FAST)
    assert run.outcome == "stopped"
    assert run.experiment.challenger_weight == 0.0
    assert "significant regression" in run.experiment.history[-1].reason


@pytest.mark.slow
def test_no_difference_keeps_running_without_false_winners_over_20_seeds():
    outcomes = [run_experiment(ExperimentScenario(true_lift=0.0, seed=seed, max_days=42), FAST).outcome
                for seed in range(20)]
    assert outcomes.count("promoted") <= 1
    assert outcomes.count("running") >= 18, outcomes
