import gzip
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import dataset, layout, storage
from steps import prepare, prepare_duckdb
from steps.prepare import CTR_PRIOR_STRENGTH, CVR_PRIOR_STRENGTH, NoEventsInWindow, TooManyBadEvents
from tests.steps.conftest import WINDOW_END, FeedbackStore, at, click, conversion, prediction, to_line

REPO = Path(__file__).resolve().parents[2]
WINDOW_DAYS = 10
HOLDOUT_FRACTION = 0.2
CUT = WINDOW_END - timedelta(days=2)
START = WINDOW_END - timedelta(days=WINDOW_DAYS)


def run(feedback_store: FeedbackStore, output: str = "prepared", **overrides):
    arguments = dict(window_end=WINDOW_END, window_days=WINDOW_DAYS, holdout_fraction=HOLDOUT_FRACTION,
                     max_bad_fraction=1.0)
    return prepare.run(feedback_store.feedback, feedback_store.catalog, feedback_store.output(output), **(arguments | overrides))


def table(feedback_store: FeedbackStore, name: str, output: str = "prepared") -> pd.DataFrame:
    return dataset.read_table(feedback_store.output(output), name)


def quarantine(feedback_store: FeedbackStore, output: str = "prepared") -> list[dict]:
    path = Path(feedback_store.output(output)) / dataset.QUARANTINE
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def assert_accounting(counts: dict) -> None:
    assert counts["lines_read"] == (counts["good"] + counts["quarantined"] + counts["duplicates"] + counts["out_of_window"]
                                    + counts["kept"])
    assert counts["kept"] == sum(counts["kept_reasons"].values())
    assert counts["quarantined"] == sum(counts["quarantine_reasons"].values())
    assert counts["good"] == sum(counts["events_by_type"].values())
    assert counts["good"] == sum(split["events"] for split in counts["splits"].values())
    assert counts["bad_fraction"] == pytest.approx(counts["quarantined"] / counts["lines_read"])


def test_clean_window_becomes_interactions_and_stats_per_time_split(feedback_store):
    feedback_store.deliver([click("u1", "app-1", at(5)), click("u1", "app-1", at(4)), conversion("u1", "app-1", at(4, 1)),
                   click("u1", "app-2", at(3), clicked=False), click("u2", "app-2", at(6)),
                   prediction("app-1", at(5, 2))])
    feedback_store.deliver([click("u2", "app-3", at(1)), conversion("u2", "app-3", at(0.5), revenue=4.0)], name="late")

    manifest = run(feedback_store)

    assert manifest["status"] == "succeeded"
    assert manifest["window"] == {"start": "2026-02-19T00:00:00.000000Z", "end": "2026-03-01T00:00:00.000000Z",
                                  "cut": "2026-02-27T00:00:00.000000Z"}
    train = table(feedback_store, dataset.TRAIN_INTERACTIONS)
    assert list(train.columns) == list(dataset.INTERACTION_COLUMNS)
    assert train[["user_id", "app_id", "clicks", "conversions"]].values.tolist() == [
        ["u1", "app-1", 2, 1], ["u2", "app-2", 1, 0]]  # u1/app-2 was shown but not clicked: no positive
    assert train["first_ts"].iloc[0] == pd.Timestamp(at(5)) and train["last_ts"].iloc[0] == pd.Timestamp(at(4, 1))
    holdout = table(feedback_store, dataset.HOLDOUT_INTERACTIONS)
    assert holdout[["user_id", "app_id", "clicks", "conversions"]].values.tolist() == [["u2", "app-3", 1, 1]]

    stats = table(feedback_store, dataset.TRAIN_APP_STATS).set_index("app_id")
    assert list(stats.reset_index().columns) == list(dataset.APP_STATS_COLUMNS)
    assert stats.loc["app-1", ["impressions", "clicks", "conversions"]].tolist() == [2, 2, 1]
    assert stats.loc["app-2", ["impressions", "clicks"]].tolist() == [2, 1]
    assert table(feedback_store, dataset.HOLDOUT_APP_STATS).set_index("app_id").loc["app-3", "revenue"] == 4.0

    counts = manifest["counts"]
    assert_accounting(counts)
    assert counts["events_by_type"] == {"prediction": 1, "click": 5, "conversion": 2}
    assert counts["splits"]["train"]["events_by_type"] == {"prediction": 1, "click": 4, "conversion": 1}
    assert counts["splits"]["holdout"]["interactions"] == 1
    assert set(manifest["files"]) == {*prepare.TABLES, dataset.QUARANTINE, dataset.KEPT}
    assert manifest["engine"] == "duckdb"
    on_disk = json.loads((Path(feedback_store.output()) / dataset.MANIFEST).read_text())
    assert on_disk["counts"] == counts and on_disk["status"] == "succeeded"


@pytest.mark.parametrize("bad_line, reason", [
    ('{"event_id": "x", "event_type": "click", "ts": "2026-02-25T00:00', "malformed_json"),
    ('{"event_type": "click", "ts": "2026-02-25T00:00:00Z", "app_id": "app-1", "campaign_id": "c", '
     '"partner_id": "p", "user_id": "u", "clicked": true}', "missing_field"),
    ('{"event_id": "x", "event_type": "click", "ts": "2026-02-25T00:00:00Z", "app_id": "app-1", "campaign_id": "c", '
     '"partner_id": "p", "user_id": "u", "clicked": "yes"}', "invalid_field"),
    ('{"event_id": "x", "event_type": "install", "ts": "2026-02-25T00:00:00Z"}', "unknown_event_type"),
])
def test_each_bad_line_is_quarantined_with_reason_source_line_and_raw_text(feedback_store, bad_line, reason):
    path = feedback_store.deliver([click("u1", "app-1", at(5)), bad_line, click("u2", "app-1", at(5))])

    counts = run(feedback_store)["counts"]

    assert counts["quarantine_reasons"] == {reason: 1} and counts["good"] == 2
    assert_accounting(counts)
    [record] = quarantine(feedback_store)
    assert record["reason"] == reason and record["detail"]
    assert record["source"] == f"file://{path}" and record["line"] == 2
    assert record["raw"] == bad_line and record["raw_truncated"] is False


def kept(feedback_store: FeedbackStore, output: str = "prepared") -> list[dict]:
    path = Path(feedback_store.output(output)) / dataset.KEPT
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines()]


def test_events_for_apps_outside_the_catalog_are_kept_verbatim_not_bad(feedback_store):
    lines = [click("u1", "app-404", at(5)), conversion("u1", "app-405", at(5)), prediction("new:3f2a", at(5)),
             prediction("app-406", at(5)), click("u1", "app-1", at(5))]
    path = feedback_store.deliver(lines)

    counts = run(feedback_store, max_bad_fraction=0.0)["counts"]

    assert counts["quarantined"] == 0 and counts["good"] == 1 and counts["kept"] == 4
    assert counts["kept_reasons"] == {"app_not_in_catalog": 3, "cold_start_query": 1}
    assert_accounting(counts)
    records = kept(feedback_store)
    assert [(r["reason"], r["line"]) for r in records] == [
        ("app_not_in_catalog", 1), ("app_not_in_catalog", 2), ("cold_start_query", 3), ("app_not_in_catalog", 4)]
    assert all(r["source"] == f"file://{path}" for r in records)
    assert [r["raw"] for r in records] == [to_line(line) for line in lines[:4]]
    assert table(feedback_store, dataset.TRAIN_APP_STATS)["app_id"].tolist() == ["app-1"]


def test_a_truncated_gzip_file_is_quarantined_by_name_and_its_complete_lines_are_kept(feedback_store):
    whole = feedback_store.deliver([click(f"u{i}", "app-1", at(5)) for i in range(3)], name="whole")
    broken = feedback_store.deliver([click(f"v{i}", "app-2", at(5)) for i in range(400)], arrival=at(5, 1), name="broken")
    data = broken.read_bytes()
    broken.write_bytes(data[:len(data) // 2])  # Firehose upload cut short: EOFError in gzip
    garbage = feedback_store.deliver([click("w", "app-3", at(5))], arrival=at(5, 2), name="garbage")
    garbage.write_bytes(b"\x00not gzip at all" * 10)  # BadGzipFile / zlib error

    manifest = run(feedback_store)

    counts = manifest["counts"]
    assert counts["bad_files"] == 2 and counts["quarantine_reasons"] == {"unreadable_file": 2}
    assert_accounting(counts)
    bad = {entry["uri"]: entry for entry in manifest["inputs"]["bad_files"]}
    assert set(bad) == {f"file://{broken}", f"file://{garbage}"}
    assert "EOFError" in bad[f"file://{broken}"]["error"] and "error" in bad[f"file://{garbage}"]["error"]
    kept_lines = bad[f"file://{broken}"]["lines_kept"]
    assert 0 < kept_lines < 400 and bad[f"file://{garbage}"]["lines_kept"] == 0
    assert counts["good"] == 3 + kept_lines and counts["lines_read"] == 3 + kept_lines + 2
    records = quarantine(feedback_store)
    assert [(r["source"], r["line"]) for r in records] == [(f"file://{broken}", kept_lines + 1), (f"file://{garbage}", 1)]
    assert all("re-deliver" in r["detail"] for r in records)
    assert f"file://{whole}" in [f["uri"] for f in manifest["inputs"]["files"]]


def test_a_huge_bad_line_is_kept_truncated(feedback_store):
    feedback_store.deliver([click("u1", "app-1", at(5)), "{" + "x" * 10_000])

    run(feedback_store)

    [record] = quarantine(feedback_store)
    assert len(record["raw"]) == prepare.RAW_LINE_LIMIT and record["raw_truncated"] is True


def test_duplicates_in_the_same_and_other_files_are_dropped_first_one_wins(feedback_store):
    first = click("u1", "app-1", at(5), event_id="retried")
    feedback_store.deliver([first, first, click("u2", "app-2", at(5), event_id="retried-later")], name="a")
    # A retry delivered an hour later, with a different payload: the first occurrence wins.
    feedback_store.deliver([click("u9", "app-3", at(5), event_id="retried"), click("u2", "app-2", at(5), event_id="retried-later")],
                  arrival=at(5, 1), name="b")

    counts = run(feedback_store)["counts"]

    assert counts["duplicates"] == 3 and counts["good"] == 2
    assert_accounting(counts)
    train = table(feedback_store, dataset.TRAIN_INTERACTIONS)
    assert train[["user_id", "app_id", "clicks"]].values.tolist() == [["u1", "app-1", 1], ["u2", "app-2", 1]]


def test_a_duplicate_cannot_land_on_both_sides_of_the_cut(feedback_store):
    event = click("u1", "app-1", CUT - timedelta(minutes=5), event_id="edge")
    feedback_store.deliver([event], arrival=CUT - timedelta(minutes=5), name="on-time")
    feedback_store.deliver([event], arrival=CUT + timedelta(hours=3), name="retry")

    counts = run(feedback_store)["counts"]

    assert counts["duplicates"] == 1
    assert len(table(feedback_store, dataset.TRAIN_INTERACTIONS)) == 1 and table(feedback_store, dataset.HOLDOUT_INTERACTIONS).empty


def test_late_events_count_by_their_ts_and_other_events_are_out_of_window(feedback_store):
    # Happened before window_end, arrived 20 hours after it (within layout.MAX_DELIVERY_DELAY): accepted, in the holdout.
    feedback_store.deliver([click("late", "app-1", at(0, -1))], arrival=WINDOW_END + timedelta(hours=20), name="late")
    # In the lateness folders but happened after window_end, and in a window folder but happened before start.
    feedback_store.deliver([click("future", "app-1", WINDOW_END + timedelta(hours=2))], name="future")
    feedback_store.deliver([click("old", "app-1", START - timedelta(hours=1))], arrival=START + timedelta(hours=1), name="old")
    # Arrived after the lateness allowance: not read at all.
    feedback_store.deliver([click("too-late", "app-1", at(1))], arrival=WINDOW_END + layout.MAX_DELIVERY_DELAY + timedelta(hours=1), name="x")

    counts = run(feedback_store)["counts"]

    assert counts["lines_read"] == 3 and counts["good"] == 1
    assert counts["out_of_window"] == 2
    assert counts["out_of_window_by_side"] == {"before_start": 1, "at_or_after_end": 1}
    assert table(feedback_store, dataset.HOLDOUT_INTERACTIONS)["user_id"].tolist() == ["late"]
    assert counts["bad_fraction"] == 0.0


def test_files_outside_the_hour_folders_are_listed_as_ignored_not_read(feedback_store):
    path = feedback_store.deliver([click("u1", "app-1", at(5))])
    stray = path.parent.parent / "stray.jsonl"
    stray.write_text(to_line(click("u2", "app-2", at(5))) + "\n")

    manifest = run(feedback_store)

    assert manifest["inputs"]["ignored_files"] == [f"file://{stray}"]
    assert [f["uri"] for f in manifest["inputs"]["files"]] == [f"file://{path}"]
    assert manifest["counts"]["lines_read"] == 1


def test_accounting_holds_on_a_mixed_window(feedback_store):
    rng = np.random.default_rng(7)
    events = [click(f"u{rng.integers(20)}", f"app-{rng.integers(6)}", at(float(rng.uniform(0, 11))),
                    clicked=bool(rng.random() < 0.3), request_id="req" if rng.random() < 0.2 else None)
              for _ in range(300)]
    lines = events + events[:15] + ["not json", '{"event_type": "click"}', '{"event_id": 1}', click("u1", "app-99", at(3))]
    feedback_store.deliver(lines[:150], arrival=at(5), name="one")
    feedback_store.deliver(lines[150:], arrival=at(1), name="two")

    counts = run(feedback_store)["counts"]

    assert counts["lines_read"] == len(lines) and counts["duplicates"] == 15 and counts["quarantined"] == 3
    assert counts["kept"] == 1
    assert counts["out_of_window"] == sum(1 for e in events if e.ts < START)
    assert_accounting(counts)


def test_too_many_bad_lines_fail_with_quarantine_and_failed_manifest_but_no_tables(feedback_store):
    feedback_store.deliver([click("u1", "app-1", at(5)), click("u2", "app-2", at(1))])
    run(feedback_store)  # a good earlier run leaves tables at the same output
    feedback_store.deliver(["garbage"] * 3 + ['{"event_type": "click"}'], arrival=at(4), name="bad")

    with pytest.raises(TooManyBadEvents) as raised:
        run(feedback_store, max_bad_fraction=0.25)

    message = str(raised.value)
    assert "bad_fraction 0.6667 (66.67%)" in message and "max_bad_fraction 0.25 (25.00%)" in message
    assert "malformed_json 3" in message
    assert "missing_field 1" in message and dataset.QUARANTINE in message
    output = Path(feedback_store.output())
    assert not any((output / name).exists() for name in prepare.TABLES)
    manifest = json.loads((output / dataset.MANIFEST).read_text())
    assert manifest["status"] == "failed" and "TooManyBadEvents" in manifest["error"]
    assert manifest["counts"]["quarantined"] == 4 and set(manifest["files"]) == {dataset.QUARANTINE, dataset.KEPT}
    assert len(quarantine(feedback_store)) == 4


def test_an_empty_window_fails_clearly(feedback_store):
    feedback_store.deliver([click("u1", "app-1", START - timedelta(days=3))])

    with pytest.raises(NoEventsInWindow, match="window_end"):
        run(feedback_store)

    assert json.loads((Path(feedback_store.output()) / dataset.MANIFEST).read_text())["status"] == "failed"


def test_a_window_after_the_data_fails_at_once_naming_where_the_data_ends(feedback_store):
    feedback_store.deliver([click("u1", "app-1", at(5))], arrival=at(5, 3))  # hour folder 2026/02/24/03

    with pytest.raises(NoEventsInWindow) as raised:
        run(feedback_store, window_end=WINDOW_END + timedelta(days=200))

    message = str(raised.value)
    assert "no feedback files" in message and "2026/02/24/03" in message
    assert "--param window_end=2026-02-24T04:00:00Z" in message


def test_a_store_without_feedback_says_where_it_looked(tmp_path, feedback_store):
    with pytest.raises(NoEventsInWindow, match="appsim simulate"):
        run(feedback_store)


def test_holdout_starts_at_the_cut_and_train_ends_before_it(feedback_store):
    edge = [click("u1", "app-1", CUT - timedelta(microseconds=1)), click("u1", "app-2", CUT),
            click("u2", "app-1", CUT + timedelta(seconds=1))]
    spread = [click(f"u{i % 4}", f"app-{i % 6}", at(i * 0.35)) for i in range(28)]
    feedback_store.deliver(edge + spread, arrival=at(0, -1))

    manifest = run(feedback_store)

    train = table(feedback_store, dataset.TRAIN_INTERACTIONS)
    holdout = table(feedback_store, dataset.HOLDOUT_INTERACTIONS)
    cut = pd.Timestamp(CUT)
    assert (train["last_ts"] < cut).all() and (holdout["first_ts"] >= cut).all()
    assert ((holdout["user_id"] == "u1") & (holdout["app_id"] == "app-2")).any()
    assert manifest["counts"]["splits"]["holdout"]["events"] == sum(1 for e in edge + spread if CUT <= e.ts < WINDOW_END)


def test_attributed_positives_are_excluded_and_counted_unless_asked_for(feedback_store):
    feedback_store.deliver([click("u1", "app-1", at(5), request_id="req-1"),
                   conversion("u1", "app-1", at(5, 1), request_id="req-1"),
                   click("u1", "app-2", at(5, 2), clicked=False, request_id="req-1"),
                   click("u2", "app-3", at(5))])

    excluded = run(feedback_store, output="default")
    included = run(feedback_store, output="with-attributed", use_attributed_clicks=True)

    assert table(feedback_store, dataset.TRAIN_INTERACTIONS, "default")[["user_id", "app_id"]].values.tolist() == [["u2", "app-3"]]
    assert excluded["counts"]["attributed_excluded"] == 2
    assert excluded["counts"]["splits"]["train"]["attributed_positives"] == 2
    with_attributed = table(feedback_store, dataset.TRAIN_INTERACTIONS, "with-attributed")
    assert with_attributed[["user_id", "app_id", "clicks", "conversions"]].values.tolist() == [
        ["u1", "app-1", 1, 1], ["u2", "app-3", 1, 0]]
    assert included["counts"]["attributed_excluded"] == 0
    # Stats count every impression, attributed or not, either way.
    for output in ("default", "with-attributed"):
        stats = table(feedback_store, dataset.TRAIN_APP_STATS, output).set_index("app_id")
        assert stats["impressions"].to_dict() == {"app-1": 1, "app-2": 1, "app-3": 1}


def test_predictions_are_counted_but_never_interactions(feedback_store):
    feedback_store.deliver([prediction("app-1", at(5)), prediction("app-2", at(1)), click("u1", "app-3", at(5))])

    counts = run(feedback_store)["counts"]

    assert counts["splits"]["train"]["events_by_type"]["prediction"] == 1
    assert counts["splits"]["holdout"]["events_by_type"]["prediction"] == 1
    assert set(table(feedback_store, dataset.TRAIN_INTERACTIONS)["app_id"]) == {"app-3"}
    assert table(feedback_store, dataset.HOLDOUT_INTERACTIONS).empty


def test_smoothed_rate_shrinks_small_samples_towards_the_prior():
    rates = prepare.smoothed_rate(np.array([0, 1, 500]), np.array([0, 1, 1000]), prior_mean=0.1, prior_strength=100)
    assert rates[0] == pytest.approx(0.1)  # no data: the prior
    assert rates[1] == pytest.approx(11 / 101)  # one lucky click barely moves it
    assert rates[2] == pytest.approx(510 / 1100)  # plenty of data: close to its own 0.5


def test_app_stats_use_the_global_rate_as_prior(feedback_store):
    events = [click(f"u{i}", "app-1", at(5), clicked=i < 30) for i in range(200)]
    events += [click("u1", "app-2", at(5), clicked=False), click("u2", "app-2", at(5), clicked=True)]
    events += [conversion(f"u{i}", "app-1", at(4), converted=i < 6, revenue=2.0) for i in range(10)]
    feedback_store.deliver(events)

    manifest = run(feedback_store)

    stats = table(feedback_store, dataset.TRAIN_APP_STATS).set_index("app_id")
    global_ctr = 31 / 202
    global_cvr = 6 / 31
    assert manifest["smoothing"]["train"]["ctr_prior_mean"] == pytest.approx(global_ctr)
    assert stats.loc["app-1", "ctr"] == pytest.approx((30 + CTR_PRIOR_STRENGTH * global_ctr) / (200 + CTR_PRIOR_STRENGTH))
    assert stats.loc["app-2", "ctr"] == pytest.approx((1 + CTR_PRIOR_STRENGTH * global_ctr) / (2 + CTR_PRIOR_STRENGTH))
    assert stats.loc["app-2", "cvr"] == pytest.approx(CVR_PRIOR_STRENGTH * global_cvr / (1 + CVR_PRIOR_STRENGTH))
    assert stats.loc["app-1", "cvr"] == pytest.approx((6 + CVR_PRIOR_STRENGTH * global_cvr) / (30 + CVR_PRIOR_STRENGTH))
    assert stats.loc["app-1", "revenue"] == pytest.approx(12.0)


def test_gzip_and_plain_files_give_the_same_tables(feedback_store):
    events = [click(f"u{i % 3}", f"app-{i % 4}", at(i * 0.4)) for i in range(20)]
    feedback_store.deliver(events, arrival=at(3), name="batch", compress=True)
    gz_manifest = run(feedback_store, output="from-gzip")
    feedback_store.written.pop().unlink()
    feedback_store.deliver(events, arrival=at(3), name="batch", compress=False)

    plain_manifest = run(feedback_store, output="from-plain")

    assert plain_manifest["inputs"]["files"][0]["uri"].endswith(".jsonl")
    assert plain_manifest["counts"] == gz_manifest["counts"]
    for name in prepare.TABLES:
        assert plain_manifest["files"][name] == gz_manifest["files"][name]


def test_same_input_gives_byte_identical_outputs(feedback_store):
    feedback_store.deliver([click("u2", "app-1", at(5)), click("u1", "app-3", at(1)), "bad line",
                   conversion("u1", "app-3", at(0.5))])
    feedback_store.deliver([click("u1", "app-0", at(4))], name="second")

    first = run(feedback_store, output="one")
    second = run(feedback_store, output="two")

    assert first["files"] == second["files"] and len(first["files"]) == 6


def test_job_entry_point_with_the_sagemaker_processing_layout(feedback_store, tmp_path):
    feedback_store.deliver([click("u1", "app-1", at(4)), click("u2", "app-2", at(1))], arrival=at(4))
    processing = tmp_path / "opt" / "ml" / "processing"
    (processing / "input").mkdir(parents=True)
    feedback, catalog = processing / "input" / "feedback", processing / "input" / "catalog"
    os.rename(feedback_store.root / "feedback", feedback)
    os.rename(feedback_store.root / "catalog", catalog)
    output = processing / "output" / "prepared"

    def job(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "steps.prepare", "--feedback", str(feedback),
             "--catalog", str(catalog), "--output", str(output),
             "--window-end", "2026-03-01T00:00:00Z", "--window-days", str(WINDOW_DAYS),
             "--holdout-fraction", str(HOLDOUT_FRACTION), *extra],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )

    done = job("--max-bad-fraction", "0.05", "--use-attributed-clicks", "false")
    assert done.returncode == 0, done.stderr
    manifest = json.loads((output / dataset.MANIFEST).read_text())
    assert manifest["status"] == "succeeded" and manifest["counts"]["good"] == 2
    assert manifest["parameters"]["use_attributed_clicks"] is False
    assert (output / dataset.TRAIN_INTERACTIONS).exists()

    [hour_folder] = {path.parent for path in feedback.rglob("*.gz")}
    (hour_folder / "c.jsonl").write_text("oops\n" * 3)
    failed = job("--max-bad-fraction", "0.05")
    assert failed.returncode == 1
    assert "PrepareFeedback failed" in failed.stderr and "Traceback" not in failed.stderr
    assert "60.00%" in failed.stderr and "quarantine" in failed.stderr
    assert not (output / dataset.TRAIN_INTERACTIONS).exists()


@pytest.fixture
def s3_bucket(monkeypatch):
    """A moto S3 server on 127.0.0.1 and an empty bucket; storage reaches it through AWS_ENDPOINT_URL."""
    boto3 = pytest.importorskip("boto3", reason="the aws extra (boto3, s3fs) is needed for s3:// stores")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for name, value in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    boto3.client("s3").create_bucket(Bucket="appsim-test")
    yield "s3://appsim-test"
    server.stop()


def test_an_s3_store_works_through_the_same_code(feedback_store, s3_bucket):
    feedback_store.deliver([click("u1", "app-1", at(2)), "bad", click("u2", "app-2", at(0.5)),
                            conversion("u2", "app-2", at(0.4))])
    storage.upload_dir(feedback_store.root, f"{s3_bucket}/store")
    short_window = dict(window_days=3, max_bad_fraction=0.5)  # fewer day folders to list: moto is slow per call
    local = run(feedback_store, **short_window)
    remote_output = f"{s3_bucket}/store/runs/prepared"

    manifest = prepare.run(f"{s3_bucket}/store/feedback", f"{s3_bucket}/store/catalog/apps.parquet", remote_output,
                           window_end=WINDOW_END, holdout_fraction=HOLDOUT_FRACTION, **short_window)

    assert manifest["status"] == "succeeded" and manifest["counts"] == local["counts"]
    for name in prepare.TABLES:  # same bytes wherever the store lives
        assert manifest["files"][name] == local["files"][name]
    assert storage.read_json(f"{remote_output}/{dataset.MANIFEST}")["status"] == "succeeded"
    assert dataset.read_table(remote_output, dataset.HOLDOUT_INTERACTIONS)["user_id"].tolist() == ["u2"]


def test_a_tiny_memory_limit_spills_to_the_spill_folder_and_gives_the_same_outputs(feedback_store, tmp_path):
    rng = np.random.default_rng(3)
    feedback_store.deliver([click(f"u{rng.integers(500)}", f"app-{rng.integers(6)}", at(float(rng.uniform(0, 9))))
                            for _ in range(1000)], arrival=at(5))
    spill = tmp_path / "spill"
    roomy = run(feedback_store, output="roomy")

    tight = run(feedback_store, output="tight",
                duckdb_settings=prepare_duckdb.DuckDBSettings(memory_limit="40MB", spill_dir=str(spill), threads=1))

    assert tight["counts"] == roomy["counts"] and tight["files"] == roomy["files"]
    assert spill.is_dir() and not any(spill.iterdir())  # its working folder is removed afterwards


def test_a_work_folder_left_by_a_killed_prepare_is_removed_by_the_next_run(feedback_store, tmp_path):
    feedback_store.deliver([click("u1", "app-1", at(1))], arrival=at(1))
    spill = tmp_path / "spill"
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    exited.wait()  # its pid belongs to no process any more
    killed = spill / f"appsim-prepare-duckdb-{exited.pid}-abc123"
    running = spill / f"appsim-prepare-duckdb-{os.getppid()}-def456"  # a live process's: left alone
    for folder in (killed, running):
        (folder / "spill").mkdir(parents=True)
        (folder / "unit-0.jsonl").write_bytes(b"{}\n" * 1000)

    run(feedback_store, duckdb_settings=prepare_duckdb.DuckDBSettings(spill_dir=str(spill)))

    assert sorted(path.name for path in spill.iterdir()) == [running.name]


def test_duckdb_never_installs_or_loads_extensions_on_its_own(tmp_path):
    connection = prepare_duckdb._connect(prepare_duckdb.DuckDBSettings(), str(tmp_path))
    settings = dict(connection.execute(
        "SELECT name, value FROM duckdb_settings() WHERE name LIKE 'auto%_known_extensions'").fetchall())
    assert settings == {"autoinstall_known_extensions": "false", "autoload_known_extensions": "false"}
    built_in = dict(connection.execute(
        "SELECT extension_name, install_mode FROM duckdb_extensions() WHERE extension_name IN ('json', 'parquet')"
    ).fetchall())
    assert built_in == {"json": "STATICALLY_LINKED", "parquet": "STATICALLY_LINKED"}


def test_duckdb_returns_freed_allocator_pages_promptly(tmp_path):
    """Pages freed beside a full buffer pool are purged on time (background threads) and after each task in which
    a worker allocated 32 MB, not only past DuckDB's 128 MB default: they count in prepare's peak RSS."""
    connection = prepare_duckdb._connect(prepare_duckdb.DuckDBSettings(), str(tmp_path))
    settings = dict(connection.execute("SELECT name, value FROM duckdb_settings() WHERE name IN "
                                       "('allocator_background_threads', 'allocator_flush_threshold')").fetchall())
    assert settings == {"allocator_background_threads": "true", "allocator_flush_threshold": "30.5 MiB"}
