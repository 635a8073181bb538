"""Small feedback stores built by hand: events from models/events.py written in the Firehose layout."""

from __future__ import annotations

import gzip
import itertools
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest

from models import layout
from models.events import ClickEvent, ConversionEvent, PredictionEvent

WINDOW_END = datetime(2026, 3, 1, tzinfo=timezone.utc)
CATALOG_APPS = tuple(f"app-{i}" for i in range(6))
_ids = itertools.count(1)


def at(days_before_end: float, hours: float = 0.0) -> datetime:
    """A time ``days_before_end`` days (plus ``hours``) before WINDOW_END."""
    return WINDOW_END - timedelta(days=days_before_end) + timedelta(hours=hours)


def click(user: str, app: str, ts: datetime, clicked: bool = True, request_id: str | None = None,
          event_id: str | None = None) -> ClickEvent:
    return ClickEvent(event_id=event_id or f"click-{next(_ids)}", ts=ts, app_id=app, campaign_id=f"camp-{app}",
                      partner_id="partner-1", user_id=user, clicked=clicked, request_id=request_id)


def conversion(user: str, app: str, ts: datetime, converted: bool = True, revenue: float = 1.5,
               request_id: str | None = None, event_id: str | None = None) -> ConversionEvent:
    return ConversionEvent(event_id=event_id or f"conv-{next(_ids)}", ts=ts, app_id=app, campaign_id=f"camp-{app}",
                           partner_id="partner-1", user_id=user, converted=converted,
                           revenue=revenue if converted else 0.0, request_id=request_id)


def prediction(app: str, ts: datetime, event_id: str | None = None) -> PredictionEvent:
    return PredictionEvent(event_id=event_id or f"pred-{next(_ids)}", ts=ts, request_id=f"req-{next(_ids)}",
                           partner_id="partner-1", app_id=app, model_version=1, arm="champion",
                           neighbors=["app-1", "app-2"], scores=[0.9, 0.8], predicted_ctr=0.03)


def to_line(item: object) -> str:
    """An event as the serving sinks write it; a str is taken as an already-written (maybe bad) line."""
    if isinstance(item, str):
        return item
    return json.dumps(item.to_json_dict())  # type: ignore[attr-defined]


@dataclass
class FeedbackStore:
    """A store folder with a catalog and a Firehose-layout feedback folder."""

    root: Path
    written: list[Path] = field(default_factory=list)

    @property
    def feedback(self) -> str:
        return str(self.root / "feedback")

    @property
    def catalog(self) -> str:
        return str(self.root / "catalog" / "apps.parquet")

    def output(self, name: str = "prepared") -> str:
        return str(self.root / "runs" / name)

    def deliver(self, items: list[object], arrival: datetime | None = None, name: str = "batch",
                compress: bool = True) -> Path:
        """Write one Firehose object: the lines land in the hour folder of ``arrival`` (default:
        the first event's ts, i.e. delivered on time)."""
        if arrival is None:
            arrival = next(item.ts for item in items if not isinstance(item, str))  # type: ignore[attr-defined]
        folder = self.root / layout.feedback_prefix(arrival)
        folder.mkdir(parents=True, exist_ok=True)
        # surrogatepass: a lone surrogate in a test line becomes the invalid UTF-8 a broken producer would write.
        body = "".join(to_line(item) + "\n" for item in items).encode("utf-8", "surrogatepass")
        path = folder / (f"{name}.gz" if compress else f"{name}.jsonl")
        path.write_bytes(gzip.compress(body, mtime=0) if compress else body)
        self.written.append(path)
        return path


def make_feedback_store(root: Path) -> FeedbackStore:
    """A store folder with a six-app catalog and no feedback yet."""
    catalog = pd.DataFrame({
        "app_id": list(CATALOG_APPS),
        "name": [f"App {i}" for i in range(len(CATALOG_APPS))],
        "category": ["games", "games", "finance", "finance", "health", "health"],
        "region": ["us", "eu", "us", "eu", "us", "eu"],
        "pricing_model": ["free", "freemium", "paid", "free", "freemium", "paid"],
        "features": [["ads"], ["iap"], ["subscription"], ["ads", "iap"], [], ["offline"]],
        "description": [f"app number {i}" for i in range(len(CATALOG_APPS))],
        "avg_rating": [4.1, 3.9, 4.5, 4.0, 3.2, 4.8],
    })
    path = root / "catalog" / "apps.parquet"
    path.parent.mkdir(parents=True)
    catalog.to_parquet(path, index=False)
    return FeedbackStore(root)


@pytest.fixture
def feedback_store(tmp_path: Path) -> FeedbackStore:
    return make_feedback_store(tmp_path)
