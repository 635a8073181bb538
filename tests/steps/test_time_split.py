"""No leakage across the time split, checked on simulated feedback against an independent recount.

tests/steps/test_prepare.py pins the rules on hand-made lines (the cut's edge, one duplicate
delivered across it). Here the simulator delivers thousands of events with retried duplicates
(copies arriving up to 90 minutes later, some in hour folders after the cut) and late arrivals;
the prepared train and holdout tables must equal a recount written independently of
steps/prepare.py: every delivered line except the recorded faults (so each event once), split by
its own timestamp.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pandas as pd
import pytest

from models import dataset, layout, storage
from pipelines.simulators.marketplace import simulate
from steps import prepare

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
DAYS = 4
HOLDOUT_FRACTION = 0.25
CUT = END - timedelta(days=DAYS * HOLDOUT_FRACTION)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = storage.normalize(tmp_path_factory.mktemp("split"))
    simulate(root, apps=150, users=400, days=DAYS, events_per_day=4000, seed=11, fault_rate=0.08, end=END)
    prepare.run(layout.feedback_uri(root), layout.catalog_uri(root), storage.join(root, "prepared"), window_end=END,
                window_days=DAYS, holdout_fraction=HOLDOUT_FRACTION, max_bad_fraction=0.2)
    return root


def delivered_lines(root: str) -> pd.DataFrame:
    rows = []
    for uri in storage.list_files(layout.feedback_uri(root)):
        relative = uri[len(root):].lstrip("/")
        rows += [(relative, number, line) for number, line in enumerate(storage.iter_lines(uri), start=1)]
    return pd.DataFrame(rows, columns=["file", "line", "raw"])


def recount(root: str) -> dict[str, pd.DataFrame]:
    """(user, app) -> clicks, conversions per side of the cut, from the lines the simulator did not break or repeat."""
    lines = delivered_lines(root)
    faults = pd.read_parquet(storage.join(root, "ground_truth", "faults.parquet").removeprefix("file://"))
    repeated_or_broken = faults[faults["kind"] != "late"]  # a late event is valid; a duplicate's copy is the fault row
    lines = lines.merge(repeated_or_broken[["file", "line"]], how="left", indicator=True)
    events = [orjson.loads(raw) for raw in lines.loc[lines["_merge"] == "left_only", "raw"]]
    frame = pd.DataFrame([e for e in events if e["event_type"] in ("click", "conversion") and not e.get("request_id")])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame = frame[(frame["ts"] >= END - timedelta(days=DAYS)) & (frame["ts"] < END)]
    frame["click"] = (frame["event_type"] == "click") & (frame["clicked"] == True)  # noqa: E712 (NaN on conversions)
    frame["conversion"] = (frame["event_type"] == "conversion") & (frame["converted"] == True)  # noqa: E712
    frame = frame[frame["click"] | frame["conversion"]]
    out = {}
    for side, mask in (("train", frame["ts"] < CUT), ("holdout", frame["ts"] >= CUT)):
        out[side] = (frame[mask].groupby(["user_id", "app_id"])
                     .agg(clicks=("click", "sum"), conversions=("conversion", "sum")).reset_index())
    return out


def prepared(root: str, name: str) -> pd.DataFrame:
    return dataset.read_table(storage.join(root, "prepared"), name)


def test_the_simulated_window_does_retry_across_the_cut(store):
    """The premise: some event before the cut has a duplicate copy delivered in an hour folder after it."""
    faults = pd.read_parquet(storage.join(store, "ground_truth", "faults.parquet").removeprefix("file://"))
    copies = faults[faults["kind"] == "duplicate"]
    arrival_hour = pd.to_datetime(copies["file"].str.extract(r"feedback/(\d{4}/\d{2}/\d{2}/\d{2})/")[0],
                                  format="%Y/%m/%d/%H", utc=True)
    lines = delivered_lines(store).set_index(["file", "line"])["raw"]
    original_ts = pd.to_datetime([orjson.loads(lines[(f, n)])["ts"] for f, n in zip(copies["file"], copies["line"])], utc=True)
    straddling = (original_ts < CUT) & (arrival_hour.to_numpy() >= CUT)
    assert straddling.sum() > 0


def test_prepared_sides_equal_an_independent_recount(store):
    expected = recount(store)
    for side, name in (("train", dataset.TRAIN_INTERACTIONS), ("holdout", dataset.HOLDOUT_INTERACTIONS)):
        found = prepared(store, name)[["user_id", "app_id", "clicks", "conversions"]]
        found = found.sort_values(["user_id", "app_id"]).reset_index(drop=True)
        want = expected[side].sort_values(["user_id", "app_id"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(found, want, check_dtype=False)


def test_no_holdout_event_precedes_the_cut_and_no_train_event_follows_it(store):
    train, holdout = prepared(store, dataset.TRAIN_INTERACTIONS), prepared(store, dataset.HOLDOUT_INTERACTIONS)
    cut = pd.Timestamp(CUT)
    assert len(train) and len(holdout)
    assert (train["last_ts"] < cut).all() and (train["first_ts"] >= pd.Timestamp(END - timedelta(days=DAYS))).all()
    assert (holdout["first_ts"] >= cut).all() and (holdout["last_ts"] < pd.Timestamp(END)).all()
