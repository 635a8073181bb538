"""Arm assignment is the seed's pick_arm: same inputs, same arm."""

import hashlib

import pytest

from models.routing import RoutingError, bucket, pick_arm


def seed_pick_arm(partner_id, app_id, v1_weight=0.5):
    # Verbatim from the seed (section 3.1), the reference.
    key = f"{partner_id}:{app_id}"
    hash_val = int(hashlib.md5(key.encode()).hexdigest(), 16) % 100
    return "v1" if hash_val < v1_weight * 100 else "v2"


@pytest.mark.parametrize("v1_weight", [0.0, 0.05, 0.1, 0.3, 0.5, 0.57, 0.7, 0.9, 1.0])
def test_two_arms_match_the_seed(v1_weight):
    pairs = [(f"partner-{p}", f"app-{a:05d}") for p in range(7) for a in range(300)]
    ours = [pick_arm(p, a, {"v1": v1_weight, "v2": 1 - v1_weight}) for p, a in pairs]
    assert ours == [seed_pick_arm(p, a, v1_weight) for p, a in pairs]
    if 0 < v1_weight < 1:
        share = ours.count("v1") / len(ours)
        assert abs(share - v1_weight) < 0.05


def test_assignment_is_sticky_and_partner_specific():
    assert pick_arm("acme", "app-1", {"a": 0.5, "b": 0.5}) == pick_arm("acme", "app-1", {"a": 0.5, "b": 0.5})
    arms = {pick_arm(f"partner-{i}", "app-1", {"a": 0.5, "b": 0.5}) for i in range(50)}
    assert arms == {"a", "b"}


def test_three_arms_take_their_buckets_in_order():
    weights = {"a": 0.2, "b": 0.3, "c": 0.5}
    for i in range(500):
        value = bucket("p", f"app-{i}")
        expected = "a" if value < 20 else "b" if value < 50 else "c"
        assert pick_arm("p", f"app-{i}", weights) == expected


@pytest.mark.parametrize("weights", [{}, {"a": 0.5}, {"a": 1.2, "b": -0.2}, {"a": 0.6, "b": 0.6}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(RoutingError):
        pick_arm("p", "a", weights)
