"""`appsim simulate`: the demo marketplace into a store, and the command that comes next."""

import json
import shlex

from models import storage
from tests.pipelines.cli.runner import run

ARGS = ["--apps", "40", "--users", "30", "--days", "2", "--events-per-day", "200", "--end", "2026-05-04T00:00:00Z"]


def test_writes_the_store_and_the_next_command_names_the_store_and_window(tmp_path):
    printed = run("simulate", "--store", tmp_path, *ARGS)
    summary = storage.read_json(str(tmp_path / "ground_truth" / "simulation.json"))
    assert summary["window_end"] == "2026-05-04T00:00:00Z" and summary["events"]["click"] == 400
    hint = next(line for line in printed.splitlines() if line.startswith("next: "))
    words = shlex.split(hint.removeprefix("next: "))
    assert words[:2] == ["appsim", "retrain"]
    assert storage.local_path(words[words.index("--store") + 1]) == tmp_path
    assert "window_end=2026-05-04T00:00:00Z" in words and "window_days=2" in words

    again = run("simulate", "--store", tmp_path, *ARGS, expect=2)
    assert "error: " in again and "--overwrite" in again


def test_json_summary_carries_the_counts_and_the_next_command(tmp_path):
    summary = json.loads(run("simulate", "--store", tmp_path / "s", *ARGS, "--json"))
    assert summary["events"]["click"] == 400 and summary["lines_written"] > 400
    assert summary["next"].startswith("appsim retrain --store ")
