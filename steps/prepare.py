"""PrepareFeedback: turn a window of raw feedback events into the prepared-data contract.

Reads ``window_days`` of events ending at ``window_end`` from the Firehose layout
(``<feedback>/YYYY/MM/DD/HH/<file>[.gz]``), validates every line, quarantines what cannot be
used, drops retried duplicates, splits the rest in time and writes the tables of
``models/dataset.py`` plus a manifest.

Rules (each one is counted in the manifest, so nothing is lost silently):

- Hour folders are *arrival* hours. An event that happened inside the window can arrive late,
  so folders are read up to ``window_end + LATENESS``; events are then selected by their own
  ``ts`` in ``[start, end)``. A parsed event outside the window is ``out_of_window``, not bad.
- A line that does not parse (``models.events.parse_line``), or names an ``app_id`` missing from
  the catalog, is quarantined with its reason, detail, source file, line number and raw text.
- Duplicates (same ``event_id``, producers retry) are dropped over the whole read, first
  occurrence wins, *before* the time split, so a retry cannot put one event on both sides.
- ``lines_read = good + quarantined + duplicates + out_of_window``;
  ``bad_fraction = quarantined / lines_read``. Above ``max_bad_fraction`` the run fails with
  ``TooManyBadEvents``: the quarantine and a ``"status": "failed"`` manifest are written for
  diagnosis, the tables are not (stale tables of an earlier run at the output are removed first).
- Time split: ``cut = window_end - holdout_fraction * window_days``; ``ts < cut`` is train.
- Interactions hold co-engagement positives (``clicked`` clicks, ``converted`` conversions).
  Recommendation-attributed events (``request_id`` set) measure A/B arms and are biased by the
  arm that showed them, so they are left out unless ``use_attributed_clicks``; they are counted.
- App stats count every impression, attributed or not. CTR is clicks per impression and CVR is
  conversions per click, each smoothed with an empirical-Bayes Beta prior whose mean is the
  part's global rate and whose strength is ``CTR_PRIOR_STRENGTH`` pseudo-impressions /
  ``CVR_PRIOR_STRENGTH`` pseudo-clicks: an app's own rate outweighs the prior once it has more
  data than that.

Scale: one pass, streaming; a good event costs ~27 bytes in typed arrays and ~90 bytes in the
dedupe set (a 16-byte digest per event id, so long ids cost no more); aggregation is numpy.
Measured with bench/prepare_throughput.py on the shared 2-core box: 10.2M lines in 137 CPU
seconds with a peak RSS of 1.7 GB; parse_line is about 40% of the time.
"""

from __future__ import annotations

import argparse
import gzip
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
import orjson
import pandas as pd

from models import dataset, storage
from models.events import EVENT_TYPES, ClickEvent, ConversionEvent, InvalidEvent, format_ts, parse_line, parse_utc
from models.progress import Progress

LATENESS = timedelta(hours=24)  # how long after window_end an in-window event may still arrive
RAW_LINE_LIMIT = 2000  # characters of a bad line kept in the quarantine
CTR_PRIOR_STRENGTH = 100.0  # pseudo-impressions behind the global CTR
CVR_PRIOR_STRENGTH = 20.0  # pseudo-clicks behind the global CVR
PROGRESS_EVERY_LINES = 8192

PREDICTION, CLICK, CONVERSION = (EVENT_TYPES.index(name) for name in ("prediction", "click", "conversion"))
TABLES = (dataset.TRAIN_INTERACTIONS, dataset.HOLDOUT_INTERACTIONS, dataset.TRAIN_APP_STATS, dataset.HOLDOUT_APP_STATS)


class PrepareError(RuntimeError):
    """PrepareFeedback cannot produce valid prepared data; the manifest says why."""


class TooManyBadEvents(PrepareError):
    """More of the window's lines were quarantined than ``max_bad_fraction`` allows."""


class InvalidWindow(PrepareError, ValueError):
    """window_days or holdout_fraction out of range."""


class NoEventsInWindow(PrepareError):
    """Not one usable event in the window: wrong window_end, wrong feedback location, or no traffic."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    cut: datetime

    @classmethod
    def ending_at(cls, window_end: datetime, window_days: int, holdout_fraction: float) -> "Window":
        if window_days < 1:
            raise InvalidWindow(f"window_days must be at least 1, not {window_days}")
        if not 0.0 < holdout_fraction < 1.0:
            raise InvalidWindow(f"holdout_fraction must be between 0 and 1 (exclusive), not {holdout_fraction}")
        end = window_end.replace(tzinfo=timezone.utc) if window_end.tzinfo is None else window_end.astimezone(timezone.utc)
        return cls(end - timedelta(days=window_days), end, end - timedelta(days=holdout_fraction * window_days))

    def arrival_hours(self) -> list[datetime]:
        """The hour folders that can hold this window's events: start's hour up to end + LATENESS."""
        hour = self.start.replace(minute=0, second=0, microsecond=0)
        hours = []
        while hour < self.end + LATENESS:
            hours.append(hour)
            hour += timedelta(hours=1)
        return hours

    def to_json(self) -> dict[str, str]:
        return {"start": format_ts(self.start), "end": format_ts(self.end), "cut": format_ts(self.cut)}


@dataclass(frozen=True)
class FeedbackFiles:
    files: list[str]
    ignored: list[str]  # files in the window's day folders that are not in an hour folder


def feedback_files(feedback_uri: str, window: Window) -> FeedbackFiles:
    """The window's files, in arrival order: one listing per day, filtered to the hour folders."""
    hours = window.arrival_hours()
    wanted = {hour.strftime("%Y/%m/%d/%H") for hour in hours}
    files: list[str] = []
    ignored: list[str] = []
    for day in sorted({hour.strftime("%Y/%m/%d") for hour in hours}):
        day_uri = storage.join(feedback_uri, day)
        for uri in storage.list_files(day_uri):
            relative = uri[len(day_uri):].lstrip("/")
            hour_folder = relative.split("/", 1)[0]
            if "/" not in relative or not (hour_folder.isdigit() and len(hour_folder) == 2):
                ignored.append(uri)
            elif f"{day}/{hour_folder}" in wanted:
                files.append(uri)
    return FeedbackFiles(files, ignored)


class QuarantineWriter:
    """Streams bad lines, with why and where, to a gzip JSON-lines file (deterministic bytes)."""

    def __init__(self, uri: str, stack: ExitStack):
        handle = stack.enter_context(storage.open_uri(uri, "wb"))
        # mtime=0 and no file name in the header: the same bad lines give the same bytes.
        self._out = stack.enter_context(gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=6, mtime=0))
        self.reasons: Counter[str] = Counter()

    def add(self, reason: str, detail: str, source: str, line_number: int, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace")
        record = {
            "reason": reason, "detail": detail, "source": source, "line": line_number,
            "raw": text[:RAW_LINE_LIMIT], "raw_truncated": len(text) > RAW_LINE_LIMIT,
        }
        self._out.write(orjson.dumps(record) + b"\n")
        self.reasons[reason] += 1

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


@dataclass
class EventColumns:
    """The window's good events as parallel arrays (one row per event).

    ``kind`` indexes ``EVENT_TYPES``; ``app`` indexes the sorted catalog ids; ``user`` indexes the
    sorted user ids (-1 for predictions, which have no user); ``ts_us`` is UTC epoch microseconds.
    """

    kind: np.ndarray
    ts_us: np.ndarray
    app: np.ndarray
    user: np.ndarray
    positive: np.ndarray
    attributed: np.ndarray
    revenue: np.ndarray
    app_ids: np.ndarray
    user_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


@dataclass
class ReadResult:
    columns: EventColumns
    lines_read: int
    duplicates: int
    before_window: int
    after_window: int
    lines_per_file: dict[str, int]


def read_feedback(files: Sequence[str], window: Window, app_ids: np.ndarray, quarantine: QuarantineWriter,
                  progress: Progress) -> ReadResult:
    """One streaming pass over the files; the hot loop, so it binds methods to locals."""
    app_codes = {app_id: code for code, app_id in enumerate(app_ids)}
    start_us, end_us = _epoch_us(window.start), _epoch_us(window.end)
    kind, ts_col, app_col, user_col = array("b"), array("q"), array("i"), array("i")
    positive, attributed, revenue = array("b"), array("b"), array("d")
    users: dict[str, int] = {}
    seen: set[bytes] = set()
    seen_add, blake2b, quarantine_add = seen.add, hashlib.blake2b, quarantine.add
    lines_read = duplicates = before = after = 0
    lines_per_file: dict[str, int] = {}

    for uri in files:
        number = 0
        for number, line in enumerate(storage.iter_lines(uri), start=1):
            if not number % PROGRESS_EVERY_LINES:
                progress.update(PROGRESS_EVERY_LINES)
            try:
                event = parse_line(line)
            except InvalidEvent as error:
                quarantine_add(error.reason, error.detail, uri, number, line)
                continue
            key = blake2b(event.event_id.encode(), digest_size=16).digest()
            if key in seen:
                duplicates += 1
                continue
            seen_add(key)
            ts = round(event.ts.timestamp() * 1_000_000)
            if ts < start_us:
                before += 1
                continue
            if ts >= end_us:
                after += 1
                continue
            app = app_codes.get(event.app_id)
            if app is None:
                quarantine_add("unknown_app_id", f"app_id '{event.app_id}' is not in the catalog; add the app to "
                               "catalog/apps.parquet or fix the producer", uri, number, line)
                continue
            event_class = type(event)
            if event_class is ClickEvent:
                kind.append(CLICK)
                user_col.append(users.setdefault(event.user_id, len(users)))
                positive.append(event.clicked)
                revenue.append(0.0)
                attributed.append(bool(event.request_id))
            elif event_class is ConversionEvent:
                kind.append(CONVERSION)
                user_col.append(users.setdefault(event.user_id, len(users)))
                positive.append(event.converted)
                revenue.append(event.revenue)
                attributed.append(bool(event.request_id))
            else:
                kind.append(PREDICTION)
                user_col.append(-1)
                positive.append(False)
                revenue.append(0.0)
                attributed.append(True)
            ts_col.append(ts)
            app_col.append(app)
        lines_read += number
        lines_per_file[uri] = number
        progress.update(number % PROGRESS_EVERY_LINES)

    # Recode users by sorted id so that outputs sort by (user_id, app_id) whatever the arrival order.
    user_ids = np.array(list(users), dtype=object)
    order = np.argsort(user_ids, kind="stable")
    rank = np.empty(len(order) + 1, dtype=np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    rank[-1] = -1  # predictions keep -1
    user = np.frombuffer(user_col, dtype=np.int32)
    columns = EventColumns(
        kind=np.frombuffer(kind, dtype=np.int8), ts_us=np.frombuffer(ts_col, dtype=np.int64),
        app=np.frombuffer(app_col, dtype=np.int32), user=rank[user],
        positive=np.frombuffer(positive, dtype=np.int8).astype(bool),
        attributed=np.frombuffer(attributed, dtype=np.int8).astype(bool),
        revenue=np.frombuffer(revenue, dtype=np.float64), app_ids=app_ids, user_ids=user_ids[order],
    )
    return ReadResult(columns, lines_read, duplicates, before, after, lines_per_file)


def smoothed_rate(successes: np.ndarray, trials: np.ndarray, prior_mean: float, prior_strength: float) -> np.ndarray:
    """Posterior mean under a Beta(prior_mean * s, (1 - prior_mean) * s) prior: (k + m s) / (n + s)."""
    rate = (np.asarray(successes, dtype=np.float64) + prior_mean * prior_strength) / (
        np.asarray(trials, dtype=np.float64) + prior_strength)
    # Conversions can outnumber in-window clicks (the click happened before the window).
    return np.clip(rate, 0.0, 1.0)


def app_stats(columns: EventColumns, mask: np.ndarray) -> tuple[pd.DataFrame, dict[str, float]]:
    """Per-app impressions, clicks, conversions, revenue and smoothed rates over ``mask``'s events."""
    n_apps = len(columns.app_ids)
    clicks_mask = mask & (columns.kind == CLICK)
    conversion_mask = mask & (columns.kind == CONVERSION)
    converted = conversion_mask & columns.positive
    impressions = np.bincount(columns.app[clicks_mask], minlength=n_apps)
    clicks = np.bincount(columns.app[clicks_mask & columns.positive], minlength=n_apps)
    conversions = np.bincount(columns.app[converted], minlength=n_apps)
    revenue = np.bincount(columns.app[converted], weights=columns.revenue[converted], minlength=n_apps)
    seen = (impressions > 0) | (np.bincount(columns.app[conversion_mask], minlength=n_apps) > 0)
    prior = {
        "ctr_prior_mean": float(clicks.sum() / impressions.sum()) if impressions.sum() else 0.0,
        "ctr_prior_strength": CTR_PRIOR_STRENGTH,
        "cvr_prior_mean": float(min(1.0, conversions.sum() / clicks.sum())) if clicks.sum() else 0.0,
        "cvr_prior_strength": CVR_PRIOR_STRENGTH,
    }
    frame = pd.DataFrame({
        "app_id": columns.app_ids[seen],
        "impressions": impressions[seen].astype(np.int64),
        "clicks": clicks[seen].astype(np.int64),
        "conversions": conversions[seen].astype(np.int64),
        "revenue": revenue[seen],
        "ctr": smoothed_rate(clicks[seen], impressions[seen], prior["ctr_prior_mean"], CTR_PRIOR_STRENGTH),
        "cvr": smoothed_rate(conversions[seen], clicks[seen], prior["cvr_prior_mean"], CVR_PRIOR_STRENGTH),
    }, columns=list(dataset.APP_STATS_COLUMNS))
    return frame, prior


def interactions(columns: EventColumns, mask: np.ndarray, use_attributed_clicks: bool) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per (user, app) with a positive in ``mask``, sorted by (user_id, app_id)."""
    positives = mask & columns.positive & (columns.kind != PREDICTION)
    attributed = positives & columns.attributed
    selected = positives if use_attributed_clicks else positives & ~columns.attributed
    key = columns.user[selected].astype(np.int64) * len(columns.app_ids) + columns.app[selected]
    ts = columns.ts_us[selected]
    order = np.lexsort((ts, key))
    key, ts, is_click = key[order], ts[order], columns.kind[selected][order] == CLICK
    starts = np.flatnonzero(np.diff(key, prepend=key[:1] - 1))  # first row of each (user, app) run
    ends = np.append(starts[1:], len(key))[:len(starts)]
    clicks_before = np.concatenate(([0], np.cumsum(is_click, dtype=np.int64)))
    clicks = clicks_before[ends] - clicks_before[starts]
    pair = key[starts]
    users = pair // len(columns.app_ids)
    frame = pd.DataFrame({
        "user_id": columns.user_ids[users],
        "app_id": columns.app_ids[pair % len(columns.app_ids)],
        "clicks": clicks,
        "conversions": (ends - starts) - clicks,
        "first_ts": _timestamps(ts[starts]),
        "last_ts": _timestamps(ts[ends - 1]),
    }, columns=list(dataset.INTERACTION_COLUMNS))
    counts = {
        "positives": int(positives.sum()),
        "attributed_positives": int(attributed.sum()),
        "attributed_excluded": 0 if use_attributed_clicks else int(attributed.sum()),
        "interactions": len(frame),
        "users": len(np.unique(users)),
    }
    return frame, counts


def run(feedback_uri: str, catalog_uri: str, output_uri: str, *, window_end: datetime, window_days: int,
        holdout_fraction: float, max_bad_fraction: float, use_attributed_clicks: bool = False,
        progress: Progress | None = None) -> dict:
    """Prepare the window's feedback into ``output_uri``; returns the manifest it wrote.

    Raises ``TooManyBadEvents`` / ``NoEventsInWindow`` (after writing the quarantine and a failed
    manifest), ``FileNotFoundError`` when the catalog is missing.
    """
    started = time.monotonic()
    progress = progress or Progress.quiet()
    window = Window.ending_at(window_end, window_days, holdout_fraction)
    quarantine_uri = storage.join(output_uri, dataset.QUARANTINE)
    manifest_uri = storage.join(output_uri, dataset.MANIFEST)
    # A crash or failure from here on must not leave an earlier run's tables looking valid.
    ours = {storage.join(output_uri, name) for name in (dataset.MANIFEST, *TABLES, dataset.QUARANTINE)}
    for stale in ours.intersection(storage.list_files(output_uri)):
        storage.remove(stale)

    manifest: dict[str, Any] = {
        "status": "running",
        "window": window.to_json(),
        "parameters": {
            "window_end": format_ts(window.end), "window_days": window_days, "holdout_fraction": holdout_fraction,
            "max_bad_fraction": max_bad_fraction, "use_attributed_clicks": use_attributed_clicks,
            "lateness_hours": LATENESS.total_seconds() / 3600,
        },
        "inputs": {"feedback_uri": storage.normalize(feedback_uri), "catalog_uri": storage.normalize(catalog_uri)},
    }
    written: list[str] = []
    try:
        app_ids = _catalog_app_ids(catalog_uri)
        found = feedback_files(feedback_uri, window)
        manifest["inputs"] |= {"catalog_apps": len(app_ids), "ignored_files": found.ignored}
        reading = progress.child("read", unit="lines")
        with ExitStack() as stack:
            quarantine = QuarantineWriter(quarantine_uri, stack)
            read = read_feedback(found.files, window, app_ids, quarantine, reading)
        written.append(dataset.QUARANTINE)
        reading.finish(f"{read.lines_read:,} lines from {len(found.files)} files")
        manifest["inputs"]["files"] = [{"uri": uri, "lines": n} for uri, n in read.lines_per_file.items()]

        columns = read.columns
        in_holdout = columns.ts_us >= _epoch_us(window.cut)
        counts = _counts(read, quarantine, in_holdout)
        manifest["counts"] = counts
        _check_quality(counts, max_bad_fraction, quarantine_uri, found, window)

        manifest["smoothing"] = {}
        for part, mask, interactions_name, stats_name in (
            ("train", ~in_holdout, dataset.TRAIN_INTERACTIONS, dataset.TRAIN_APP_STATS),
            ("holdout", in_holdout, dataset.HOLDOUT_INTERACTIONS, dataset.HOLDOUT_APP_STATS),
        ):
            pairs, positive_counts = interactions(columns, mask, use_attributed_clicks)
            stats, prior = app_stats(columns, mask)
            dataset.write_table(pairs, output_uri, interactions_name)
            written.append(interactions_name)
            dataset.write_table(stats, output_uri, stats_name)
            written.append(stats_name)
            counts["splits"][part] |= positive_counts | {"apps": len(stats)}
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


def _counts(read: ReadResult, quarantine: QuarantineWriter, in_holdout: np.ndarray) -> dict[str, Any]:
    columns = read.columns
    good = len(columns)

    def by_type(mask: np.ndarray) -> dict[str, int]:
        return {name: int((columns.kind[mask] == code).sum()) for code, name in enumerate(EVENT_TYPES)}

    out_of_window = read.before_window + read.after_window
    return {
        "lines_read": read.lines_read,
        "good": good,
        "quarantined": quarantine.count,
        "duplicates": read.duplicates,
        "out_of_window": out_of_window,
        "out_of_window_by_side": {"before_start": read.before_window, "at_or_after_end": read.after_window},
        "bad_fraction": quarantine.count / read.lines_read if read.lines_read else 0.0,
        "quarantine_reasons": dict(sorted(quarantine.reasons.items())),
        "events_by_type": by_type(np.ones(good, dtype=bool)),
        "files_read": len(read.lines_per_file),
        "users": len(columns.user_ids),
        "splits": {
            part: {"events": int(mask.sum()), "events_by_type": by_type(mask)}
            for part, mask in (("train", ~in_holdout), ("holdout", in_holdout))
        },
    }


def _check_quality(counts: dict[str, Any], max_bad_fraction: float, quarantine_uri: str, found: FeedbackFiles,
                   window: Window) -> None:
    if counts["bad_fraction"] > max_bad_fraction:
        top = ", ".join(f"{reason} {n:,}" for reason, n in Counter(counts["quarantine_reasons"]).most_common(3))
        raise TooManyBadEvents(
            f"{counts['quarantined']:,} of the {counts['lines_read']:,} lines read are bad: bad_fraction "
            f"{counts['bad_fraction']:.4f} ({counts['bad_fraction']:.2%}) is above max_bad_fraction "
            f"{max_bad_fraction:g} ({max_bad_fraction:.2%}). "
            f"Top reasons: {top}. Each bad line, with its reason, file and line number, is in {quarantine_uri}. "
            "Fix the producer (or the catalog, for unknown_app_id), or raise the limit with "
            "--param max_bad_fraction=... if this much bad input is expected."
        )
    if counts["good"] == 0:
        raise NoEventsInWindow(
            f"no usable events with ts in [{format_ts(window.start)}, {format_ts(window.end)}): read {counts['lines_read']:,} "
            f"lines from {len(found.files)} files in the hour folders {format_ts(window.arrival_hours()[0])} .. "
            f"{format_ts(window.arrival_hours()[-1])}. Check window_end and the feedback location."
        )


def _catalog_app_ids(catalog_uri: str) -> np.ndarray:
    if not storage.exists(catalog_uri):
        raise FileNotFoundError(f"catalog {catalog_uri} is missing: PrepareFeedback needs apps.parquet with an app_id column")
    with storage.open_uri(catalog_uri, "rb") as handle:
        ids = pd.read_parquet(handle, columns=["app_id"])["app_id"].astype(str)
    return np.array(sorted(set(ids)), dtype=object)


def _sha256(uri: str) -> str:
    digest = hashlib.sha256()
    with storage.open_uri(uri, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _epoch_us(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


def _timestamps(epoch_us: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(epoch_us.astype("datetime64[us]")).tz_localize("UTC")


def _parse_bool(text: str | bool) -> bool:
    if isinstance(text, bool):
        return text
    lowered = text.strip().lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, not '{text}'")
    return lowered in ("true", "1", "yes")


def _catalog_file(uri: str) -> str:
    """SageMaker hands the catalog over as a folder holding apps.parquet; a URI may name the file."""
    return uri if uri.endswith(".parquet") else storage.join(uri, "apps.parquet")


def main(argv: Sequence[str] | None = None) -> int:
    """The SageMaker Processing job: ``python -m steps.prepare --window-end ... --window-days ...``."""
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
    args = parser.parse_args(argv)
    try:
        window_end = parse_utc(args.window_end) if args.window_end else datetime.now(timezone.utc)
    except ValueError:
        parser.error(f"--window-end '{args.window_end}' is not an ISO date-time such as 2026-01-31T00:00:00Z")
    try:
        manifest = run(
            args.feedback, _catalog_file(args.catalog), args.output, window_end=window_end,
            window_days=args.window_days, holdout_fraction=args.holdout_fraction,
            max_bad_fraction=args.max_bad_fraction, use_attributed_clicks=args.use_attributed_clicks,
            progress=Progress("PrepareFeedback", every=5.0),
        )
    except (PrepareError, FileNotFoundError) as error:
        print(f"PrepareFeedback failed: {error}", file=sys.stderr)
        return 1
    counts = manifest["counts"]
    print(f"PrepareFeedback: {counts['good']:,} good events of {counts['lines_read']:,} lines "
          f"({counts['quarantined']:,} quarantined, {counts['duplicates']:,} duplicates, "
          f"{counts['out_of_window']:,} out of window) in {manifest['seconds']:.1f}s -> {storage.normalize(args.output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
