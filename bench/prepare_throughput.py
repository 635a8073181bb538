"""PrepareFeedback throughput and peak memory on synthetic feedback.

    .venv/bin/python bench/prepare_throughput.py --lines 1000000

Writes ``--lines`` events (clicks and conversions, some attributed, plus predictions, ~2%
retried duplicates and ~0.5% bad lines) in the Firehose layout over a 28-day window, then runs
the job entry point (``python -m steps.prepare``) in a subprocess and reports lines/s and the
subprocess's peak RSS. Generation is not timed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from models.events import ClickEvent, ConversionEvent, PredictionEvent, firehose_prefix  # noqa: E402

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
    rng = np.random.default_rng(seed)
    app_ids = [f"app-{i:06d}" for i in range(apps)]
    (root / "catalog").mkdir(parents=True)
    pd.DataFrame({"app_id": app_ids}).to_parquet(root / "catalog" / "apps.parquet", index=False)
    base = templates()
    start = WINDOW_END - timedelta(days=WINDOW_DAYS)
    offsets = np.sort(rng.uniform(0, WINDOW_DAYS * 86400, lines))
    kinds = rng.choice(3, size=lines, p=[0.05, 0.85, 0.10])  # prediction, click, conversion
    app_draw = rng.zipf(1.3, size=lines) % apps
    user_draw = rng.integers(0, users, size=lines)
    clicked = rng.random(lines) < 0.05
    attributed = rng.random(lines) < 0.1
    duplicate = rng.random(lines) < 0.02
    bad = rng.random(lines) < 0.005
    per_file = 20_000
    for first in range(0, lines, per_file):
        arrival = start + timedelta(seconds=float(offsets[first]))
        body = []
        for i in range(first, min(first + per_file, lines)):
            if bad[i]:
                body.append(b'{"event_id": "broken", "event_type": "click", "ts": ')
                continue
            kind = ("prediction", "click", "conversion")[kinds[i]]
            event = dict(base[kind])
            event["event_id"] = f"evt-{i:012d}"
            event["ts"] = (start + timedelta(seconds=float(offsets[i]))).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            event["app_id"] = app_ids[app_draw[i]]
            if kind != "prediction":
                event["user_id"] = f"user-{user_draw[i]:08d}"
                event["campaign_id"] = f"camp-{app_draw[i]}"
                event["request_id"] = f"req-{i}" if attributed[i] else None
                event["clicked" if kind == "click" else "converted"] = bool(clicked[i]) or kind == "conversion"
            line = orjson.dumps(event)
            body.append(line)
            if duplicate[i]:
                body.append(line)
        folder = root / firehose_prefix(arrival)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"part-{first:012d}.gz").write_bytes(gzip.compress(b"\n".join(body) + b"\n", compresslevel=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--apps", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", choices=("duckdb", "spark"), default="duckdb",
                        help="spark: the PySparkProcessor job (steps.prepare_spark) in local mode, local[2]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="appsim-bench-prepare-") as tmp:
        root = Path(tmp)
        generate(root, args.lines, args.apps, args.users, args.seed)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", {"duckdb": "steps.prepare", "spark": "steps.prepare_spark"}[args.engine],
             "--feedback", str(root / "feedback"),
             "--catalog", str(root / "catalog"), "--output", str(root / "prepared"),
             "--window-end", WINDOW_END.isoformat(), "--window-days", str(WINDOW_DAYS),
             "--holdout-fraction", "0.2", "--max-bad-fraction", "0.05"],
            cwd=REPO, check=True,
        )
        seconds = time.monotonic() - started
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the prepare subprocess only
        manifest = json.loads((root / "prepared" / "manifest.json").read_text())
    counts = manifest["counts"]
    print(json.dumps({
        "engine": manifest["engine"], "lines_read": counts["lines_read"], "good": counts["good"], "duplicates": counts["duplicates"],
        "quarantined": counts["quarantined"], "seconds_wall": round(seconds, 2),
        "seconds_in_run": manifest["seconds"], "lines_per_second": round(counts["lines_read"] / manifest["seconds"]),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),  # ru_maxrss is KiB on Linux
        "train_interactions": counts["splits"]["train"]["interactions"],
    }, indent=2))


if __name__ == "__main__":
    main()
