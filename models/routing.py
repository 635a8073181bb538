"""A/B arm assignment: the seed's ``pick_arm``, generalised to named arms.

The seed hashes ``f"{partner_id}:{app_id}"`` with MD5, takes it modulo 100 and sends the
request to ``v1`` when that bucket is below ``v1_weight * 100``. Assignment is stateless and
sticky: the same partner asking about the same app always lands in the same arm, in every
worker and every replica, so no store of assignments is needed. Serving, the simulator and
the A/B analysis all call this one function, so an arm seen in the feedback is the arm the
server picked.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping

BUCKETS = 100


class RoutingError(ValueError):
    """Experiment weights that cannot route traffic."""


def bucket(partner_id: str, app_id: str) -> int:
    """The request's bucket in 0..99: ``md5(f"{partner_id}:{app_id}") % 100``, as in the seed."""
    digest = hashlib.md5(f"{partner_id}:{app_id}".encode()).hexdigest()
    return int(digest, 16) % BUCKETS


def check_weights(weights: Mapping[str, float]) -> None:
    """Weights must be non-negative and sum to 1 (arms in a fixed order: the first is the seed's v1)."""
    if not weights:
        raise RoutingError("an experiment needs at least one arm, e.g. {'champion': 1.0}")
    negative = [arm for arm, weight in weights.items() if weight < 0 or math.isnan(weight)]
    if negative:
        raise RoutingError(f"arm weights must be >= 0; {', '.join(negative)} are not")
    total = sum(weights.values())
    if not math.isclose(total, 1.0, abs_tol=1e-6):
        raise RoutingError(f"arm weights must sum to 1, these sum to {total:g}: {dict(weights)}")


def pick_arm(partner_id: str, app_id: str, weights: Mapping[str, float]) -> str:
    """The arm for a request; ``weights`` maps arm -> share of traffic, in order.

    Arm i takes the buckets below ``(w_0 + ... + w_i) * 100``, the last arm the rest. With two
    arms ``{"v1": w, "v2": 1 - w}`` this is exactly the seed's ``pick_arm(partner_id, app_id, w)``
    (the threshold is computed the same way, ``w * 100``, so float rounding agrees too).
    """
    check_weights(weights)
    value = bucket(partner_id, app_id)
    arms = list(weights.items())
    threshold = 0.0
    for arm, weight in arms[:-1]:
        threshold += weight
        if value < threshold * BUCKETS:
            return arm
    return arms[-1][0]
