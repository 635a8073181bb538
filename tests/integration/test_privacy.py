"""With pseudonymisation on, no raw user id reaches any file under the store (gz included)."""

from __future__ import annotations

import gzip
import uuid
from pathlib import Path

import httpx
import pytest

from models.pseudonym import KEY_ENV, parse_key
from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from serving.settings import ServingSettings, SettingsError
from tests.serving.helpers import build_artifact, publish, read_feedback, running_server, wait_for

KEY_TEXT = "2026-01:9f2c4e6a8b0d1f3e5a7c9b1d3f5e7a9c"


def every_file_bytes(root: Path) -> dict[Path, bytes]:
    """Every file under ``root``, gzip members decompressed (by magic number, whatever the name)."""
    contents = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            contents[path] = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return contents


def feedback_events(users: list[str], n: int) -> list[dict]:
    return [{"event_type": "click" if i % 2 else "conversion", "app_id": f"app-{i % 50:05d}", "campaign_id": "c-1",
             "partner_id": "acme", "user_id": users[i % len(users)],
             **({"clicked": True} if i % 2 else {"converted": True, "revenue": 1.5})} for i in range(n)]


def test_no_raw_user_id_in_any_file_of_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY_TEXT)
    store = tmp_path / "store"
    store.mkdir()
    publish(SQLiteRegistry(store / "registry.db"), store, build_artifact())
    # The journal and spill folder inside the store too, so they are searched as well.
    settings = ServingSettings(store=str(store), spill_dir=str(store / "spill"), flush_seconds=0.05, poll_seconds=0.1)
    users = [f"raw-user-{uuid.uuid4().hex}" for _ in range(7)]
    with running_server(create_app(settings)) as url, httpx.Client(base_url=url, timeout=10) as http:
        wait_for(lambda: http.get("/ping").status_code == 200)
        for batch in range(3):
            answer = http.post("/v1/feedback", json={"events": feedback_events(users, 20)})
            assert answer.status_code == 202, answer.text
        single = http.post("/v1/feedback", json=feedback_events(users, 1)[0])  # one event, not a list
        assert single.status_code == 202
        assert http.get("/v1/apps/app-00003/similar", params={"partner_id": "acme"}).status_code == 200
    events = read_feedback(store / "feedback")
    clicks = [e for e in events if e["event_type"] in ("click", "conversion")]
    assert len(clicks) == 61
    key = parse_key(KEY_TEXT)
    # The same user has the same pseudonym in every event and batch (what training joins on).
    assert {e["user_id"] for e in clicks} == {key.pseudonymize(u) for u in users}
    files = every_file_bytes(store)
    assert any(path.suffix == ".gz" for path in files)
    leaks = {str(path.relative_to(store)) for path, data in files.items() for user in users if user.encode() in data}
    assert leaks == set()


def test_require_pseudonyms_refuses_to_start_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    settings = ServingSettings(store=str(tmp_path), spill_dir=str(tmp_path / "spill"), require_pseudonyms=True)
    app = create_app(settings)

    async def start() -> None:
        async with app.router.lifespan_context(app):
            pass

    import asyncio

    with pytest.raises(SettingsError, match="APPSIM_PSEUDONYM_KEY"):
        asyncio.run(start())
