"""PrepareFeedback: turn a window of raw feedback events into the prepared-data contract.

Reads ``window_days`` of events ending at ``window_end`` from the Firehose layout
(``<feedback>/YYYY/MM/DD/HH/<file>[.gz]``), validates every line, quarantines what cannot be
used, drops retried duplicates, splits the rest in time and writes the tables of
``models/dataset.py`` plus a manifest.

Engines (``engine=``): ``duckdb``, the default (steps/prepare_duckdb.py: multi-threaded, out-of-core,
running the SQL of steps/prepare_sql.py), ``spark`` (steps/prepare_spark.py: the same SQL on a Spark
cluster, or in local mode; needs the `spark` extra), and ``reference``, the pure-Python reader below, kept as
the oracle the engines are tested against (same counts, same quarantine, byte-identical tables).

Rules (each one is counted in the manifest, so nothing is lost silently):

- Hour folders are *arrival* hours. An event that happened inside the window can arrive late,
  so folders are read up to ``window_end + models.layout.MAX_DELIVERY_DELAY``; events are then selected by their own
  ``ts`` in ``[start, end)``. A parsed event outside the window is ``out_of_window``, not bad.
- A line that does not parse (``models.events.parse_line``) is quarantined with its reason, detail,
  source file, line number and raw text.
- A file that cannot be read to its end (a truncated or corrupt gzip) is quarantined by name with
  reason ``unreadable_file`` and counts as one bad line; the complete lines before the break are
  kept and read as usual (they are real events; a re-delivered copy is dropped as duplicates), the
  rest of the file is lost and the run goes on. The manifest lists the file under ``inputs.bad_files``.
- Duplicates (same ``event_id``, producers retry) are dropped over the whole read, first
  occurrence wins, *before* the time split, so a retry cannot put one event on both sides.
- A valid in-window event whose app_id is not in the catalog is *kept*, not bad: a cold-start
  prediction (serving's ``new:<uuid>`` query apps) or feedback for an app not yet in the catalog.
  Kept events are written verbatim to ``kept/kept.jsonl.gz`` with their reason and not trained on.
- ``lines_read = good + quarantined + duplicates + out_of_window + kept``;
  ``bad_fraction = quarantined / lines_read``. Above ``max_bad_fraction`` the run fails with
  ``TooManyBadEvents``: the quarantine and a ``"status": "failed"`` manifest are written for
  diagnosis, the tables are not (stale tables of an earlier run at the output are removed first).
- No usable event in the window fails at once (``NoEventsInWindow``), naming where the data ends
  and the ``--param window_end=...`` that would read it.
- Time split: ``cut = window_end - holdout_fraction * window_days``; ``ts < cut`` is train.
- Interactions hold co-engagement positives (``clicked`` clicks, ``converted`` conversions).
  Recommendation-attributed events (``request_id`` set) measure A/B arms and are biased by the
  arm that showed them, so they are left out unless ``use_attributed_clicks``; they are counted.
- App stats count every impression, attributed or not. CTR is clicks per impression and CVR is
  conversions per click, each smoothed with an empirical-Bayes Beta prior whose mean is the
  part's global rate and whose strength is ``CTR_PRIOR_STRENGTH`` pseudo-impressions /
  ``CVR_PRIOR_STRENGTH`` pseudo-clicks: an app's own rate outweighs the prior once it has more
  data than that. Revenue is summed in arrival order, so every engine gives the same bits.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from array import array
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

import numpy as np
import pandas as pd

from models import dataset, layout, storage
from models.catalog import catalog_app_ids
from models.events import EVENT_TYPES, InvalidEvent, format_ts, parse_line, parse_utc
from models.progress import Progress
from steps import prepare_duckdb
from steps.prepare_io import (
    RAW_LINE_LIMIT, BadFile, EngineResult, InvalidWindow, PrepareError, RecordWriter, SplitResult,
    Window, interactions_frame, read_file, split_lines,
)
from steps.prepare_sql import CLICK, COLD_START_PREFIX, CONVERSION, KEPT_REASONS, PREDICTION, event_row

__all__ = ["RAW_LINE_LIMIT", "InvalidWindow", "NoEventsInWindow", "PrepareError", "TooManyBadEvents",
           "Window", "run"]

CTR_PRIOR_STRENGTH = 100.0  # pseudo-impressions behind the global CTR
CVR_PRIOR_STRENGTH = 20.0  # pseudo-clicks behind the global CVR
PROGRESS_EVERY_LINES = 8192
ENGINES = ("duckdb", "spark", "reference")

TABLES = (dataset.TRAIN_INTERACTIONS, dataset.HOLDOUT_INTERACTIONS, dataset.TRAIN_APP_STATS, dataset.HOLDOUT_APP_STATS)
SPLITS = ("train", "holdout")


class TooManyBadEvents(PrepareError):
    """More of the window's lines were quarantined than ``max_bad_fraction`` allows."""


class NoEventsInWindow(PrepareError):
    """Not one usable event in the window: wrong window_end, wrong feedback location, or no traffic."""


def kept_reason(kind: int, app_id: str) -> str:
    return KEPT_REASONS[0] if kind == PREDICTION and app_id.startswith(COLD_START_PREFIX) else KEPT_REASONS[1]


def read_reference(files: Sequence[str], window: Window, app_ids: np.ndarray, quarantine: RecordWriter,
                   kept: RecordWriter, use_attributed_clicks: bool, progress: Progress) -> EngineResult:
    """The pure-Python reference engine: one streaming pass over the files, pydantic per line (the oracle)."""
    app_codes = {app_id: code for code, app_id in enumerate(app_ids)}
    start_us, end_us, cut_us = window.microseconds()
    kind, ts_col, app_col, user_col = array("b"), array("q"), array("i"), array("i")
    positive, attributed, revenue = array("b"), array("b"), array("d")
    users: dict[str, int] = {}
    seen: set[bytes] = set()
    lines_read = duplicates = before = after = 0
    lines_per_file: dict[str, int] = {}
    bad_files = []

    for uri in files:
        content, error = read_file(uri)
        lines = split_lines(content)
        for number, line in enumerate(lines, start=1):
            if not number % PROGRESS_EVERY_LINES:
                progress.update(PROGRESS_EVERY_LINES)
            try:
                event = parse_line(line)
            except InvalidEvent as invalid:
                quarantine.add(invalid.reason, invalid.detail, uri, number, line)
                continue
            event_id, event_kind, ts, app_id, user_id, is_positive, is_attributed, event_revenue = event_row(event)
            key = hashlib.blake2b(event_id.encode(), digest_size=16).digest()
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if ts < start_us:
                before += 1
                continue
            if ts >= end_us:
                after += 1
                continue
            app = app_codes.get(app_id)
            if app is None:
                kept.add(kept_reason(event_kind, app_id), None, uri, number, line)
                continue
            kind.append(event_kind)
            user_col.append(-1 if user_id is None else users.setdefault(user_id, len(users)))
            positive.append(is_positive)
            attributed.append(is_attributed)
            revenue.append(event_revenue)
            ts_col.append(ts)
            app_col.append(app)
        lines_read += len(lines)
        lines_per_file[uri] = len(lines)
        progress.update(len(lines) % PROGRESS_EVERY_LINES)
        if error is not None:
            bad = BadFile(uri, error, len(lines))
            quarantine.add_bad_file(bad)
            bad_files.append(bad)
            lines_read += 1

    # Recode users by sorted id so that outputs sort by (user_id, app_id) whatever the arrival order.
    user_ids = np.array(list(users), dtype=object)
    order = np.argsort(user_ids, kind="stable")
    rank = np.empty(len(order) + 1, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    rank[-1] = -1  # predictions keep -1
    columns = _Columns(
        kind=np.frombuffer(kind, dtype=np.int8), ts_us=np.frombuffer(ts_col, dtype=np.int64),
        app=np.frombuffer(app_col, dtype=np.int32), user=rank[np.frombuffer(user_col, dtype=np.int32)],
        positive=np.frombuffer(positive, dtype=np.int8).astype(bool),
        attributed=np.frombuffer(attributed, dtype=np.int8).astype(bool),
        revenue=np.frombuffer(revenue, dtype=np.float64), app_ids=app_ids, user_ids=user_ids[order],
    )
    in_holdout = columns.ts_us >= cut_us
    splits = {part: _split_result(columns, mask, use_attributed_clicks)
              for part, mask in (("train", ~in_holdout), ("holdout", in_holdout))}
    return EngineResult(lines_read=lines_read, duplicates=duplicates, before_window=before, after_window=after,
                        kept_reasons=dict(kept.reasons), users=len(users), lines_per_file=lines_per_file,
                        splits=splits, bad_files=bad_files)


@dataclass
class _Columns:
    """The reference's good events as parallel arrays (``app``/``user`` index the sorted ids; user -1: none)."""

    kind: np.ndarray
    ts_us: np.ndarray
    app: np.ndarray
    user: np.ndarray
    positive: np.ndarray
    attributed: np.ndarray
    revenue: np.ndarray
    app_ids: np.ndarray
    user_ids: np.ndarray


def _split_result(columns: _Columns, mask: np.ndarray, use_attributed_clicks: bool) -> SplitResult:
    n_apps = len(columns.app_ids)
    clicks_mask = mask & (columns.kind == CLICK)
    conversion_mask = mask & (columns.kind == CONVERSION)
    converted = conversion_mask & columns.positive
    impressions = np.bincount(columns.app[clicks_mask], minlength=n_apps)
    seen = (impressions > 0) | (np.bincount(columns.app[conversion_mask], minlength=n_apps) > 0)
    totals = pd.DataFrame({
        "app_id": columns.app_ids[seen],
        "impressions": impressions[seen],
        "clicks": np.bincount(columns.app[clicks_mask & columns.positive], minlength=n_apps)[seen],
        "conversions": np.bincount(columns.app[converted], minlength=n_apps)[seen],
        "revenue": np.bincount(columns.app[converted], weights=columns.revenue[converted], minlength=n_apps)[seen],
    })

    positives = mask & columns.positive & (columns.kind != PREDICTION)
    selected = positives if use_attributed_clicks else positives & ~columns.attributed
    key = columns.user[selected].astype(np.int64) * n_apps + columns.app[selected]
    ts = columns.ts_us[selected]
    order = np.lexsort((ts, key))
    key, ts, is_click = key[order], ts[order], columns.kind[selected][order] == CLICK
    starts = np.flatnonzero(np.diff(key, prepend=key[:1] - 1))  # first row of each (user, app) run
    ends = np.append(starts[1:], len(key))[:len(starts)]
    clicks_before = np.concatenate(([0], np.cumsum(is_click, dtype=np.int64)))
    clicks = clicks_before[ends] - clicks_before[starts]
    pair = key[starts]
    pairs = interactions_frame(columns.user_ids[pair // n_apps], columns.app_ids[pair % n_apps], clicks,
                               (ends - starts) - clicks, ts[starts], ts[ends - 1])
    return SplitResult(
        interactions=pairs, app_totals=totals,
        events_by_type={name: int((columns.kind[mask] == code).sum()) for code, name in enumerate(EVENT_TYPES)},
        positives=int(positives.sum()), attributed_positives=int((positives & columns.attributed).sum()),
    )


def smoothed_rate(successes: np.ndarray, trials: np.ndarray, prior_mean: float, prior_strength: float) -> np.ndarray:
    """Posterior mean under a Beta(prior_mean * s, (1 - prior_mean) * s) prior: (k + m s) / (n + s)."""
    rate = (np.asarray(successes, dtype=np.float64) + prior_mean * prior_strength) / (
        np.asarray(trials, dtype=np.float64) + prior_strength)
    # Conversions can outnumber in-window clicks (the click happened before the window).
    return np.clip(rate, 0.0, 1.0)


def app_stats_frame(totals: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, float]]:
    """The app-stats table from a split's per-app totals: smoothed CTR and CVR with the split's prior."""
    impressions, clicks, conversions = (totals[name].to_numpy(np.int64) for name in ("impressions", "clicks", "conversions"))
    prior = {
        "ctr_prior_mean": float(clicks.sum() / impressions.sum()) if impressions.sum() else 0.0,
        "ctr_prior_strength": CTR_PRIOR_STRENGTH,
        "cvr_prior_mean": float(min(1.0, conversions.sum() / clicks.sum())) if clicks.sum() else 0.0,
        "cvr_prior_strength": CVR_PRIOR_STRENGTH,
    }
    frame = pd.DataFrame({
        "app_id": totals["app_id"].to_numpy(dtype=object),
        "impressions": impressions,
        "clicks": clicks,
        "conversions": conversions,
        "revenue": totals["revenue"].to_numpy(np.float64),
        "ctr": smoothed_rate(clicks, impressions, prior["ctr_prior_mean"], CTR_PRIOR_STRENGTH),
        "cvr": smoothed_rate(conversions, clicks, prior["cvr_prior_mean"], CVR_PRIOR_STRENGTH),
    }, columns=list(dataset.APP_STATS_COLUMNS))
    return frame, prior


def run(feedback_uri: str, catalog_uri: str, output_uri: str, *, window_end: datetime, window_days: int,
        holdout_fraction: float, max_bad_fraction: float, use_attributed_clicks: bool = False,
        engine: str = "duckdb", duckdb_settings: prepare_duckdb.DuckDBSettings | None = None,
        progress: Progress | None = None) -> dict:
    """Prepare the window's feedback into ``output_uri``; returns the manifest it wrote.

    Raises ``TooManyBadEvents`` / ``NoEventsInWindow`` (after writing the quarantine and a failed
    manifest), ``FileNotFoundError`` when the catalog is missing.
    """
    started = time.monotonic()
    progress = progress or Progress.quiet()
    if engine not in ENGINES:
        raise PrepareError(f"unknown prepare engine '{engine}'; choose one of {', '.join(ENGINES)}")
    window = Window.ending_at(window_end, window_days, holdout_fraction)
    quarantine_uri = storage.join(output_uri, dataset.QUARANTINE)
    manifest_uri = storage.join(output_uri, dataset.MANIFEST)
    # A crash or failure from here on must not leave an earlier run's tables looking valid.
    ours = {storage.join(output_uri, name) for name in (dataset.MANIFEST, *TABLES, dataset.QUARANTINE, dataset.KEPT)}
    for stale in ours.intersection(storage.list_files(output_uri)):
        storage.remove(stale)

    manifest: dict[str, Any] = {
        "status": "running",
        "engine": engine,
        "window": window.to_json(),
        "parameters": {
            "window_end": format_ts(window.end), "window_days": window_days, "holdout_fraction": holdout_fraction,
            "max_bad_fraction": max_bad_fraction, "use_attributed_clicks": use_attributed_clicks,
            "lateness_hours": layout.MAX_DELIVERY_DELAY.total_seconds() / 3600,
        },
        "inputs": {"feedback_uri": storage.normalize(feedback_uri), "catalog_uri": storage.normalize(catalog_uri)},
    }
    written: list[str] = []
    try:
        app_ids = catalog_app_ids(catalog_uri)
        found = layout.feedback_files(feedback_uri, window.start, window.end)
        manifest["inputs"] |= {"catalog_apps": len(app_ids), "ignored_files": found.ignored}
        if not found.files:
            raise NoEventsInWindow(f"no feedback files in the window's hour folders: {_where_data_ends(feedback_uri, window)}")
        reading = progress.child("read", unit="lines")
        with ExitStack() as stack:
            quarantine = RecordWriter(quarantine_uri, stack, raw_limit=RAW_LINE_LIMIT)
            kept = RecordWriter(storage.join(output_uri, dataset.KEPT), stack)
            if engine == "reference":
                read = read_reference(found.files, window, app_ids, quarantine, kept, use_attributed_clicks, reading)
            elif engine == "spark":
                from steps import prepare_spark  # pyspark is an extra: loaded only for this engine

                read = prepare_spark.read(found.files, window, app_ids, quarantine, kept, use_attributed_clicks, reading)
            else:
                read = prepare_duckdb.read(found.files, window, app_ids, quarantine, kept, use_attributed_clicks,
                                           reading, duckdb_settings or prepare_duckdb.DuckDBSettings())
        written += [dataset.QUARANTINE, dataset.KEPT]
        reading.finish(f"{read.lines_read:,} lines from {len(found.files)} files")
        manifest["inputs"]["files"] = [{"uri": uri, "lines": n} for uri, n in read.lines_per_file.items()]
        manifest["inputs"]["bad_files"] = [{"uri": bad.uri, "error": bad.error, "lines_kept": bad.lines_kept}
                                           for bad in read.bad_files]

        counts = _counts(read, quarantine)
        manifest["counts"] = counts
        _check_quality(counts, max_bad_fraction, quarantine_uri, found, window, feedback_uri)

        manifest["smoothing"] = {}
        for part, interactions_name, stats_name in (
            ("train", dataset.TRAIN_INTERACTIONS, dataset.TRAIN_APP_STATS),
            ("holdout", dataset.HOLDOUT_INTERACTIONS, dataset.HOLDOUT_APP_STATS),
        ):
            split = read.splits[part]
            stats, prior = app_stats_frame(split.app_totals)
            dataset.write_table(split.interactions, output_uri, interactions_name)
            written.append(interactions_name)
            dataset.write_table(stats, output_uri, stats_name)
            written.append(stats_name)
            attributed_excluded = 0 if use_attributed_clicks else split.attributed_positives
            counts["splits"][part] |= {
                "positives": split.positives, "attributed_positives": split.attributed_positives,
                "attributed_excluded": attributed_excluded, "interactions": len(split.interactions),
                "users": int(split.interactions["user_id"].nunique()), "apps": len(stats),
            }
            manifest["smoothing"][part] = prior
        counts["attributed_excluded"] = sum(split["attributed_excluded"] for split in counts["splits"].values())
        manifest["status"] = "succeeded"
    except Exception as error:
        manifest["status"] = "failed"
        manifest["error"] = f"{type(error).__name__}: {error}"
        for name in [n for n in written if n in TABLES]:
            storage.remove(storage.join(output_uri, name))
            written.remove(name)
        raise
    finally:
        manifest["files"] = {name: _sha256(storage.join(output_uri, name)) for name in written}
        manifest["seconds"] = round(time.monotonic() - started, 3)
        storage.write_json(manifest_uri, manifest)
        progress.finish(f"{manifest['status']}: {manifest.get('counts', {}).get('good', 0):,} good events")
    return manifest


def _counts(read: EngineResult, quarantine: RecordWriter) -> dict[str, Any]:
    good = read.good
    out_of_window = read.before_window + read.after_window
    kept = sum(read.kept_reasons.values())
    return {
        "lines_read": read.lines_read,
        "good": good,
        "quarantined": quarantine.count,
        "duplicates": read.duplicates,
        "out_of_window": out_of_window,
        "kept": kept,
        "out_of_window_by_side": {"before_start": read.before_window, "at_or_after_end": read.after_window},
        "bad_fraction": quarantine.count / read.lines_read if read.lines_read else 0.0,
        "quarantine_reasons": dict(sorted(quarantine.reasons.items())),
        "kept_reasons": dict(sorted(read.kept_reasons.items())),
        "bad_files": len(read.bad_files),
        "events_by_type": {name: sum(split.events_by_type[name] for split in read.splits.values())
                           for name in EVENT_TYPES},
        "files_read": len(read.lines_per_file),
        "users": read.users,
        "splits": {part: {"events": sum(split.events_by_type.values()), "events_by_type": dict(split.events_by_type)}
                   for part, split in read.splits.items()},
    }


def _check_quality(counts: dict[str, Any], max_bad_fraction: float, quarantine_uri: str, found: layout.FeedbackFiles,
                   window: Window, feedback_uri: str) -> None:
    if counts["bad_fraction"] > max_bad_fraction:
        top = ", ".join(f"{reason} {n:,}" for reason, n in Counter(counts["quarantine_reasons"]).most_common(3))
        raise TooManyBadEvents(
            f"{counts['quarantined']:,} of the {counts['lines_read']:,} lines read are bad: bad_fraction "
            f"{counts['bad_fraction']:.4f} ({counts['bad_fraction']:.2%}) is above max_bad_fraction "
            f"{max_bad_fraction:g} ({max_bad_fraction:.2%}). "
            f"Top reasons: {top}. Each bad line, with its reason, file and line number, is in {quarantine_uri}. "
            "Fix the producer, or raise the limit with "
            "--param max_bad_fraction=... if this much bad input is expected."
        )
    if counts["good"] == 0:
        raise NoEventsInWindow(
            f"no usable events with ts in [{format_ts(window.start)}, {format_ts(window.end)}): read "
            f"{counts['lines_read']:,} lines from {len(found.files)} files. {_where_data_ends(feedback_uri, window)}"
        )


def _where_data_ends(feedback_uri: str, window: Window) -> str:
    """Which hour folders the window read, where the data really ends, and the window_end that would read it."""
    hours = window.arrival_hours()
    searched = f"the window read the hour folders {format_ts(hours[0])} .. {format_ts(hours[-1])}"
    last = layout.last_arrival_hour(feedback_uri)
    if last is None:
        return (f"{searched}, and {storage.normalize(feedback_uri)} holds no YYYY/MM/DD/HH folder with files at all: "
                "check the feedback location (or generate data with `appsim simulate`).")
    data_end = last + timedelta(hours=1)
    return (f"{searched}; the data ends at {data_end:%Y-%m-%dT%H:%M:%SZ} (the newest hour folder is "
            f"{last:%Y/%m/%d/%H}). To use it, run with --param window_end={data_end:%Y-%m-%dT%H:%M:%SZ} "
            f"(window_days={round((window.end - window.start) / timedelta(days=1))} days ending there).")


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_uri(uri, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not '{text}'")
    return lowered in ("true", "1", "yes")


def main(argv: Sequence[str] | None = None) -> int:
    """The SageMaker Processing job: ``python -m steps.prepare --window-end ... --window-days ...``
    (steps/prepare_spark.py runs the same job with ``--engine spark``)."""
    parser = argparse.ArgumentParser(prog="python -m steps.prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--feedback", default="/opt/ml/processing/input/feedback",
                        help="folder or URI holding YYYY/MM/DD/HH/ feedback files")
    parser.add_argument("--catalog", default="/opt/ml/processing/input/catalog",
                        help="folder holding apps.parquet, or the parquet file's URI")
    parser.add_argument("--output", default="/opt/ml/processing/output/prepared", help="folder or URI to write to")
    parser.add_argument("--window-end", default="", help="ISO date-time (UTC), e.g. 2026-01-31T00:00:00Z; empty: now")
    parser.add_argument("--window-days", type=int, required=True)
    parser.add_argument("--holdout-fraction", type=float, required=True)
    parser.add_argument("--max-bad-fraction", type=float, required=True)
    parser.add_argument("--use-attributed-clicks", type=_parse_bool, nargs="?", const=True, default=False,
                        help="train on recommendation-attributed positives too (true/false; bare flag = true)")
    parser.add_argument("--engine", choices=ENGINES, default="duckdb",
                        help="duckdb (default), spark (local mode here; steps.prepare_spark on a cluster) or reference "
                             "(the pure-Python oracle, slow)")
    defaults = prepare_duckdb.DuckDBSettings()
    parser.add_argument("--memory-limit", default=defaults.memory_limit,
                        help="DuckDB's memory limit (e.g. 2GB); past it, work spills to --spill-dir")
    parser.add_argument("--spill-dir", default=defaults.spill_dir, help="local folder for spill files; empty: system temp")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="DuckDB threads; 0: one per core")
    args = parser.parse_args(argv)
    try:
        window_end = parse_utc(args.window_end) if args.window_end else datetime.now(timezone.utc)
    except ValueError:
        parser.error(f"--window-end '{args.window_end}' is not an ISO date-time such as 2026-01-31T00:00:00Z")
    try:
        manifest = run(
            args.feedback, args.catalog, args.output, window_end=window_end,
            window_days=args.window_days, holdout_fraction=args.holdout_fraction,
            max_bad_fraction=args.max_bad_fraction, use_attributed_clicks=args.use_attributed_clicks,
            engine=args.engine, progress=Progress("PrepareFeedback", every=5.0),
            duckdb_settings=prepare_duckdb.DuckDBSettings(args.memory_limit, args.spill_dir, args.threads),
        )
    except (PrepareError, FileNotFoundError) as error:
        print(f"PrepareFeedback failed: {error}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    print(f"PrepareFeedback: {counts['good']:,} good events of {counts['lines_read']:,} lines "
          f"({counts['quarantined']:,} quarantined, {counts['duplicates']:,} duplicates, "
          f"{counts['out_of_window']:,} out of window, {counts['kept']:,} kept) in {manifest['seconds']:.1f}s -> {storage.normalize(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
