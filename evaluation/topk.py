"""Exact top-k "which apps are most like query app q?" from dense query x app scores, the query itself never listed.

One loop for every exact ranker that scores all apps for a block of query apps: the trainer's validation
(``steps/train.py``: several popularity weightings of one product) and the bench's oracles
(``evaluation/baselines.py``). Rankings are positions into the ranker's app ids, best first (ties: the lower
position), ``PADDING`` where a query app is unknown or the catalog has fewer than k other apps.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from evaluation.metrics import PADDING
from models.index import largest

# Query x app scores held at once (float32: 64 MB a copy). One block at a time: ranking two blocks on two threads
# cost selection at 200K apps 74.6 CPU-s and 76.8 s wall against 62.4 and 65.0 on one, on the shared 2-core machine.
BLOCK_CELLS = 16_000_000


def top_k_excluding(scores: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``scores``, the columns of its ``k`` largest scores, best first (ties: the lower column), never the
    row's ``own`` column (``scores`` is overwritten there with -inf)."""
    scores[np.arange(scores.shape[0]), own] = -np.inf
    return largest(scores, k)[0]


def query_top_k(app_ids: Sequence[str], query_app_ids: Sequence[str], k: int,
                score_rows: Callable[[np.ndarray], Iterable[np.ndarray]], count: int = 1,
                block_cells: int = BLOCK_CELLS) -> list[np.ndarray]:
    """For each of ``count`` scorings, every query's top ``k`` apps: (len(query_app_ids), k) positions in ``app_ids``.

    ``score_rows(rows)`` yields, one after the other, the ``count`` score matrices (len(rows), len(app_ids)) of the
    query apps at those positions; each is ranked before the next is asked for, so a scorer may reuse one buffer,
    and each is overwritten. Each distinct query app is scored once, in blocks of ``block_cells`` scores.
    """
    distinct, query_of = np.unique(np.asarray(query_app_ids, dtype=object).astype(str), return_inverse=True)
    rows = pd.Index([str(app_id) for app_id in app_ids]).get_indexer(distinct)
    known = np.flatnonzero(rows >= 0)
    take = min(k, len(app_ids) - 1)
    found = [np.full((len(distinct), k), PADDING, dtype=np.int64) for _ in range(count)]
    block = max(1, block_cells // max(len(app_ids), 1))
    for start in range(0, known.size if take > 0 else 0, block):
        batch = known[start:start + block]
        for ranking, scores in zip(found, score_rows(rows[batch])):
            ranking[batch, :take] = top_k_excluding(scores, rows[batch], take)
    return [ranking[query_of] for ranking in found]
