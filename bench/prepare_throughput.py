"""PrepareFeedback throughput and peak memory against DuckDB's floor, on the same synthetic feedback.

    .venv/bin/python bench/prepare_throughput.py --lines 2000000 [--reference] [--memory-limit 2GB]
        [--data-dir /tmp/appsim-bench-2m] [--no-floor]

Writes ``--lines`` events (clicks and conversions, some attributed, plus predictions, ~2%
retried duplicates and ~0.5% bad lines) in the Firehose layout over a 28-day window, then, each in
a subprocess of its own (so each peak RSS is its own): the job entry point (``python -m
steps.prepare``, DuckDB engine) and the floor, a plain DuckDB query that reads the same gzip JSON,
drops bad lines, dedupes by event_id and aggregates per (user, app). Prints lines/s of both, their
ratio (floor seconds / prepare seconds: 1.0 = as fast as the floor), the CPU seconds of the timed work
(``cpu_seconds``, and the CPU ratio from them) and of the whole child process (``process_cpu_seconds``: plus
the ~1 CPU-s of imports both children share), peak RSS, the core count and the load average (the machine is
shared). ``--reference`` also times the pure-Python reference,
``--spark`` the spark engine in local mode (wall clock, same counts asserted).
Generation is not timed. ``--data-dir`` generates into that folder once and reuses it on later
runs with the same generation arguments (30M lines: about 3 CPU-minutes on both cores); ``--no-floor`` skips
the floor (e.g. for a peak-RSS run at 30M lines).
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models import layout  # noqa: E402
from models.events import ClickEvent, ConversionEvent, PredictionEvent  # noqa: E402
from steps.prepare_duckdb import DuckDBSettings  # noqa: E402
from steps.spark_session import LOCAL_CORES as SPARK_LOCAL_CORES  # noqa: E402

WINDOW_END = datetime(2026, 3, 1, tzinfo=timezone.utc)
WINDOW_DAYS = 28


def templates() -> dict[str, dict]:
    """One valid event of each type, from the schema itself, so the bench cannot drift from it."""
    ts = WINDOW_END
    common = {"event_id": "x", "ts": ts, "app_id": "a", "partner_id": "p"}
    return {
        "click": ClickEvent(**common, campaign_id="c", user_id="u", clicked=False).to_json_dict(),
        "conversion": ConversionEvent(**common, campaign_id="c", user_id="u", converted=True, revenue=1.0).to_json_dict(),
        "prediction": PredictionEvent(**common, request_id="r", model_version=1, arm="champion",
                                      neighbors=["a"] * 10, scores=[0.5] * 10, predicted_ctr=0.02).to_json_dict(),
    }


def generate(root: Path, lines: int, apps: int, users: int, seed: int) -> None:
    """The bench's store under ``root``: unless ``root`` already holds one made with the same arguments."""
    stamp = root / "generated.json"
    arguments = {"lines": lines, "apps": apps, "users": users, "seed": seed}
    if stamp.exists():
        if json.loads(stamp.read_text()) == arguments:
            return
        raise SystemExit(f"{root} holds a store generated with {stamp.read_text()}, not {arguments}: "
                         "use another --data-dir or delete that folder")
    if root.exists() and any(root.iterdir()):
        raise SystemExit(f"{root} is not empty and holds no complete store of this bench (an interrupted "
                         "generation?): delete it or use another --data-dir")
    _write_store(root, lines, apps, users, seed)
    stamp.write_text(json.dumps(arguments))


FILE_LINES = 20_000  # events per Firehose object (a duplicate line comes on top of its event)
KINDS = ("prediction", "click", "conversion")


@dataclass(frozen=True)
class _Draws:
    """Every random draw of a store, made up front in one order so the files depend only on the seed."""

    start: datetime
    offsets: np.ndarray   # seconds after ``start``, sorted
    kinds: np.ndarray     # index into KINDS
    app_draw: np.ndarray
    user_draw: np.ndarray
    clicked: np.ndarray
    attributed: np.ndarray
    duplicate: np.ndarray
    bad: np.ndarray


_DRAWS: _Draws | None = None  # set before the worker processes fork, so they share it copy-on-write


def _write_store(root: Path, lines: int, apps: int, users: int, seed: int) -> None:
    global _DRAWS
    rng = np.random.default_rng(seed)
    (root / "catalog").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"app_id": [f"app-{i:06d}" for i in range(apps)]}).to_parquet(root / "catalog" / "apps.parquet", index=False)
    _DRAWS = _Draws(
        start=WINDOW_END - timedelta(days=WINDOW_DAYS),
        offsets=np.sort(rng.uniform(0, WINDOW_DAYS * 86400, lines)),
        kinds=rng.choice(3, size=lines, p=[0.05, 0.85, 0.10]),
        app_draw=rng.zipf(1.3, size=lines) % apps,
        user_draw=rng.integers(0, users, size=lines),
        clicked=rng.random(lines) < 0.05,
        attributed=rng.random(lines) < 0.1,
        duplicate=rng.random(lines) < 0.02,
        bad=rng.random(lines) < 0.005,
    )
    firsts = range(0, lines, FILE_LINES)
    started = time.monotonic()
    # Files are independent: one process per core builds and gzips them (fork shares the draws).
    with multiprocessing.get_context("fork").Pool(os.cpu_count()) as pool:
        for done, _ in enumerate(pool.imap_unordered(_write_file, [(root, first) for first in firsts]), start=1):
            if done % 50 == 0 or done == len(firsts):
                print(f"generate: {done:,}/{len(firsts):,} files, {min(done * FILE_LINES, lines):,} lines "
                      f"{time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    _DRAWS = None


def _timestamps_us(offsets: np.ndarray) -> np.ndarray:
    """Whole microseconds of ``offsets`` seconds, rounded as ``timedelta(seconds=x)`` does (half to even on
    the fraction), so the text is the one ``datetime.strftime`` gave before this was vectorised."""
    whole = np.floor(offsets)
    return whole.astype(np.int64) * 1_000_000 + np.rint((offsets - whole) * 1e6).astype(np.int64)


# The fields each line fills in, in the schema's key order; the rest is the template's own text.
LINE_FIELDS = {
    "prediction": ("event_id", "ts", "app_id"),
    "click": ("event_id", "ts", "app_id", "campaign_id", "user_id", "clicked", "request_id"),
    "conversion": ("event_id", "ts", "app_id", "campaign_id", "user_id", "converted", "request_id"),
}


def _line_pieces() -> dict[str, list[str]]:
    """Each event type's line as the literal text around its ``LINE_FIELDS`` (from the schema's own template,
    serialised by orjson as the producers do): values go between the pieces as JSON text."""
    pieces = {}
    for kind, event in templates().items():
        marked = {key: ("\x00" if key in LINE_FIELDS[kind] else value) for key, value in event.items()}
        text = orjson.dumps(marked).decode()
        assert [key for key in event if key in LINE_FIELDS[kind]] == list(LINE_FIELDS[kind]), kind
        pieces[kind] = text.split('"\\u0000"')
    return pieces


def _write_file(task: tuple[Path, int]) -> None:
    root, first = task
    d = _DRAWS
    rows = slice(first, min(first + FILE_LINES, len(d.offsets)))
    start_us = int(d.start.timestamp() * 1_000_000)
    ts_text = np.datetime_as_string((start_us + _timestamps_us(d.offsets[rows])).astype("datetime64[us]"), unit="us")
    pieces = _line_pieces()
    body = []
    for i, kind, ts, app, user, clicked, attributed, duplicate, bad in zip(
            range(rows.start, rows.stop), d.kinds[rows].tolist(), ts_text.tolist(), d.app_draw[rows].tolist(),
            d.user_draw[rows].tolist(), d.clicked[rows].tolist(), d.attributed[rows].tolist(),
            d.duplicate[rows].tolist(), d.bad[rows].tolist()):
        if bad:
            body.append('{"event_id": "broken", "event_type": "click", "ts": ')
            continue
        if kind == 0:
            p = pieces["prediction"]
            line = f'{p[0]}"evt-{i:012d}"{p[1]}"{ts}Z"{p[2]}"app-{app:06d}"{p[3]}'
        else:
            p = pieces[KINDS[kind]]
            request = f'"req-{i}"' if attributed else "null"
            outcome = "true" if clicked or kind == 2 else "false"
            line = (f'{p[0]}"evt-{i:012d}"{p[1]}"{ts}Z"{p[2]}"app-{app:06d}"{p[3]}"camp-{app}"{p[4]}'
                    f'"user-{user:08d}"{p[5]}{outcome}{p[6]}{request}{p[7]}')
        body.append(line)
        if duplicate:
            body.append(line)
    arrival = d.start + timedelta(seconds=float(d.offsets[rows.start]))
    folder = root / layout.feedback_prefix(arrival)
    folder.mkdir(parents=True, exist_ok=True)
    payload = ("\n".join(body) + "\n").encode()
    (folder / f"part-{first:012d}.gz").write_bytes(gzip.compress(payload, compresslevel=1, mtime=0))


FLOOR_SQL = """
WITH events AS (
    SELECT * FROM read_ndjson({files}, compression = 'gzip', ignore_errors = true, columns = {{
        event_id: 'VARCHAR', event_type: 'VARCHAR', ts: 'TIMESTAMPTZ', app_id: 'VARCHAR', user_id: 'VARCHAR',
        clicked: 'BOOLEAN', converted: 'BOOLEAN'}})
    WHERE event_id IS NOT NULL AND ts IS NOT NULL
), first_seen AS (
    SELECT any_value(COLUMNS(* EXCLUDE (event_id))) FROM events GROUP BY event_id
)
SELECT count(*) FROM (
    SELECT user_id, app_id, count_if(event_type = 'click') AS clicks, count_if(event_type = 'conversion') AS conversions
    FROM first_seen WHERE coalesce(clicked, converted) AND event_type <> 'prediction'
    GROUP BY user_id, app_id
)
"""


def child(task: str, root: Path, engine: str, memory_limit: str) -> None:
    """Runs in a subprocess of its own, so that its peak RSS is its alone. The clocks start after this module's
    imports (numpy, pandas, duckdb, pyarrow, pydantic: the same for both tasks), so the figures are the work's."""
    started, cpu_started = time.monotonic(), _process_cpu_seconds()
    if task == "prepare":
        from steps import prepare

        subprocess_args = ["--feedback", str(root / "feedback"), "--catalog", str(root / "catalog"),
                           "--output", str(root / f"prepared-{engine}"), "--window-end", WINDOW_END.isoformat(),
                           "--window-days", str(WINDOW_DAYS), "--holdout-fraction", "0.2", "--max-bad-fraction", "0.05",
                           "--engine", engine, "--memory-limit", memory_limit]
        if prepare.main(subprocess_args) != 0:
            raise SystemExit(1)
    else:
        import duckdb

        files = sorted(str(path) for path in (root / "feedback").rglob("*.gz"))
        con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                     "memory_limit": memory_limit})
        con.execute(FLOOR_SQL.format(files=files)).fetchall()
    seconds = time.monotonic() - started
    print(json.dumps({"seconds": seconds, "cpu_seconds": _process_cpu_seconds() - cpu_started,
                      "process_cpu_seconds": _process_cpu_seconds(),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))  # KiB on Linux


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(task: str, root: Path, engine: str, memory_limit: str) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", task, "--root", str(root), "--engine", engine,
                           "--memory-limit", memory_limit], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _figures(measured: dict, lines: int) -> dict:
    return {"seconds": round(measured["seconds"], 2), "lines_per_second": round(lines / measured["seconds"]),
            "cpu_seconds": round(measured["cpu_seconds"], 2), "process_cpu_seconds": round(measured["process_cpu_seconds"], 2),
            "lines_per_cpu_second": round(lines / measured["cpu_seconds"]), "peak_rss_mib": measured["peak_rss_mib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=2_000_000)
    parser.add_argument("--apps", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory-limit", default=DuckDBSettings().memory_limit, help="for both DuckDB runs")
    parser.add_argument("--data-dir", type=Path,
                        help="generate the store here once and reuse it (default: a temporary folder, deleted)")
    parser.add_argument("--no-floor", action="store_true", help="skip the DuckDB floor (no ratio)")
    parser.add_argument("--reference", action="store_true", help="also time the pure-Python reference engine (slow)")
    parser.add_argument("--child", choices=("prepare", "floor"), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--engine", default="duckdb", help=argparse.SUPPRESS)
    parser.add_argument("--spark", action="store_true",
                        help="also time the spark engine (steps.prepare_spark_job, local mode: local[2])")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.engine, args.memory_limit)
        return
    with ExitStack() as stack:
        root = args.data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="appsim-bench-prepare-")))
        generate(root, args.lines, args.apps, args.users, args.seed)
        prepared = measure("prepare", root, "duckdb", args.memory_limit)
        floor = None if args.no_floor else measure("floor", root, "duckdb", args.memory_limit)
        reference = measure("prepare", root, "reference", args.memory_limit) if args.reference else None
        spark = measure("prepare", root, "spark", args.memory_limit) if args.spark else None
        counts = json.loads((root / "prepared-duckdb" / "manifest.json").read_text())["counts"]
        if spark:  # the same counts, or the figures compare different work
            assert json.loads((root / "prepared-spark" / "manifest.json").read_text())["counts"] == counts
    lines = counts["lines_read"]
    report = {
        "lines_read": lines, "good": counts["good"], "duplicates": counts["duplicates"],
        "quarantined": counts["quarantined"], "train_interactions": counts["splits"]["train"]["interactions"],
        "cores": os.cpu_count(), "load_average_1m": round(os.getloadavg()[0], 2), "memory_limit": args.memory_limit,
        "prepare": _figures(prepared, lines),
    }
    if floor:
        report |= {
            "duckdb_floor": _figures(floor, lines),
            # Wall-clock ratio (the goal's measure) and CPU ratio (fairer when other jobs share the cores).
            "ratio_prepare_to_floor": round(floor["seconds"] / prepared["seconds"], 3),
            "cpu_ratio_prepare_to_floor": round(floor["cpu_seconds"] / prepared["cpu_seconds"], 3),
        }
    if reference:
        report["reference"] = _figures(reference, lines)
    if spark:
        # Wall clock only: the JVM and the Python workers are not this child's own CPU or RSS.
        report["spark_local_2_cores"] = {
            "seconds": round(spark["seconds"], 2), "lines_per_second": round(lines / spark["seconds"]),
            "lines_per_second_per_core": round(lines / spark["seconds"] / SPARK_LOCAL_CORES),
            "ratio_spark_to_prepare": round(prepared["seconds"] / spark["seconds"], 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
