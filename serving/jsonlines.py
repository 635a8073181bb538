"""``/invocations`` with JSON Lines: the bulk neighbour export, one request per Batch Transform mini-batch.

SageMaker Batch Transform splits an input file by line (``SplitType=Line``), posts mini-batches
of lines with ``ContentType=application/jsonlines`` and joins the answers line by line
(``AssembleWith=Line``), so every input line gets exactly one output line, in order:

- in: ``{"app_id": "app-00001", "k": 100}`` (``k`` optional, default 10) or just ``"app-00001"``;
- out: the row ``appsim neighbors export`` writes for that app (steps/export_neighbors.py:
  ``app_id``, ``neighbor_ids``, ``scores``, ``ctr``... ``support_impressions``) plus
  ``model_version`` and ``arm``; an unknown app gets ``{"app_id", "error": "unknown_app", "message"}``
  so the rest of the batch is answered and the output stays aligned with the input.

A malformed line fails the request with a 422 naming the line (Batch Transform then reports the
record), never a silently missing output line. Like the local export, it logs no prediction
events: these are offline tables, not answers a partner acts on.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import orjson

from models.predictor import MAX_K, MIN_K, UnknownApp
from serving.model_state import ServingState
from serving.security import ApiError
from steps.export_neighbors import neighbor_records

CONTENT_TYPES = ("application/jsonlines", "application/jsonl", "application/x-jsonlines")
MEDIA_TYPE = "application/jsonlines"
DEFAULT_K = 10


def parse_lines(body: bytes, max_lines: int) -> list[tuple[str, int]]:
    """(app id, k) per non-blank line, or ``ApiError`` 422 naming the first bad line."""
    requests = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ApiError(422, "malformed_json", f"line {number} is not JSON: {error}", field=f"line {number}") from None
        app_id, k = (item, DEFAULT_K) if isinstance(item, str) else (
            (item.get("app_id"), item.get("k", DEFAULT_K)) if isinstance(item, dict) else (None, None))
        if not isinstance(app_id, str) or not app_id:
            raise ApiError(422, "invalid_request", f'line {number} must be {{"app_id": "...", "k": 10}} or an app id '
                           'string', field=f"line {number}")
        if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= MAX_K:
            raise ApiError(422, "invalid_k", f"line {number}: k must be an integer from {MIN_K} to {MAX_K}, got {k!r}",
                           field=f"line {number}")
        requests.append((app_id, k))
    if not requests:
        raise ApiError(422, "invalid_request", "no lines in the request", field="body")
    if len(requests) > max_lines:
        raise ApiError(413, "too_many_instances", f"{len(requests)} lines in one request; send at most {max_lines} "
                       "(lower MaxPayloadInMB or set BatchStrategy=MultiRecord with smaller mini-batches)", field="body")
    return requests


def answer_lines(state: ServingState, partner_id: str, requests: list[tuple[str, int]]) -> bytes:
    """One JSON line per request, in order; one vectorised search per (arm, k)."""
    answers: list[dict[str, Any] | None] = [None] * len(requests)
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    arms = {}
    for i, (app_id, k) in enumerate(requests):
        arm = state.route(partner_id, app_id)
        arms[id(arm)] = arm
        positions = arm.model.predictor.artifact.positions
        if app_id in positions:
            groups[(id(arm), k)].append(i)
        else:
            answers[i] = {"app_id": app_id, "error": "unknown_app",
                          "message": str(UnknownApp(app_id, len(positions)))}
    for (arm_key, k), lines in groups.items():
        arm = arms[arm_key]
        predictor = arm.model.predictor
        rows = np.array([predictor.artifact.positions[requests[i][0]] for i in lines], dtype=np.int64)
        for i, record in zip(lines, neighbor_records(predictor, rows, k)):
            answers[i] = {**record, "model_version": arm.model.version, "arm": arm.name}
    return b"".join(orjson.dumps(answer) + b"\n" for answer in answers)
