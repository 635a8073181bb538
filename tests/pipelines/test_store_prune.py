"""`appsim store prune`: feedback older than the retention age is deleted by whole hour folders."""

import gzip
import json
from datetime import datetime, timedelta, timezone

from click.testing import CliRunner

from models import layout, storage
from pipelines.cli import cli

NOW = datetime(2026, 6, 1, 12, tzinfo=timezone.utc)


def write_hour(store, moment: datetime, lines: int = 3) -> str:
    folder = storage.join(layout.feedback_uri(str(store)), moment.strftime("%Y/%m/%d/%H"))
    storage.write_bytes(storage.join(folder, "batch-1.gz"), gzip.compress(b'{"event_id": "x"}\n' * lines, mtime=0))
    return folder


def prune(store, *args, expect=0):
    result = CliRunner().invoke(cli, ["store", "prune", "--store", str(store), "--at", NOW.isoformat(), *args])
    assert result.exit_code == expect, result.output
    return result.output


def test_prune_deletes_only_hours_wholly_older_than_the_age(tmp_path):
    old = [write_hour(tmp_path, NOW - timedelta(days=40, hours=h)) for h in range(3)]
    boundary = write_hour(tmp_path, NOW - timedelta(days=30) + timedelta(minutes=30))  # its hour ends after the cut-off
    recent = write_hour(tmp_path, NOW - timedelta(days=2))
    stray = tmp_path / "feedback" / "2026" / "README"
    stray.mkdir(parents=True)

    planned = json.loads(prune(tmp_path, "--older-than", "30", "--dry-run", "--json"))
    assert planned["hours"] == 3 and planned["files"] == 3 and planned["dry_run"] is True
    assert all(storage.exists(f) for f in old), "a dry run deletes nothing"

    done = json.loads(prune(tmp_path, "--older-than", "30", "--json"))
    assert [h["uri"] for h in done["removed"]] == sorted(old)
    assert done["bytes"] == sum(h["bytes"] for h in planned["removed"]) > 0
    assert not any(storage.exists(f) for f in old)
    assert storage.exists(boundary) and storage.exists(recent) and stray.is_dir()
    assert not (tmp_path / "feedback" / "2026" / "04").exists(), "emptied day/month folders go too"
    assert "deleted 0 feedback hour folder(s)" in prune(tmp_path, "--older-than", "30")


def test_prune_defaults_to_the_configured_retention(tmp_path):
    kept = write_hour(tmp_path, NOW - timedelta(days=300))
    gone = write_hour(tmp_path, NOW - timedelta(days=400))
    output = prune(tmp_path)
    assert "older than 365 days" in output and "1 feedback hour folder(s)" in output
    assert storage.exists(kept) and not storage.exists(gone)
    assert "--older-than" in prune(tmp_path, "--older-than", "0", expect=2)
