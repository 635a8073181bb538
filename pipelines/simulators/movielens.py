"""A real public implicit-feedback dataset as an appsim store: MovieLens 100K (GroupLens, 1998).

The quality bench needs data the project did not generate. MovieLens 100K (943 users, 1,682
movies, 100,000 ratings with timestamps from September 1997 to April 1998, plus titles, release
years and genres) ships inside the ``recbole`` wheel on PyPI (``recbole/dataset_example/ml-100k``),
so it installs offline with the ordinary client and is never downloaded at run time:

    .venv/bin/pip install --no-deps 'recbole==1.2.1'     # or: make bench-data

(``--no-deps``: only the data files are read, never recbole's code, so torch is not needed.) Its
licence (GroupLens) forbids redistribution without permission: the data is never committed here,
only read from the installed package and converted into a store under the bench's work folder.

Conversion to appsim's contracts (``DESIGN.md``):

- **catalog**: one "app" per movie: ``app_id`` ``ml-<item id>``, ``name`` the title, ``category`` its
  first genre, ``features`` all its genres, ``description`` title, year and genres, ``avg_rating``
  the mean rating it received in the train part of the window only (later ratings would leak the
  holdout). ``region`` and ``pricing_model`` do not exist for movies: "unknown".
- **feedback**: every rating is a user engaging with that movie: a ``click`` event with
  ``clicked=true`` at the rating's time; a rating of 4 or 5 is also a ``conversion`` (the stronger
  signal, weighted like a conversion by the trainer). Unrated movies leave no negative impression
  (the dataset has none), so CTR-style statistics on this store mean nothing; similarity does.
- **time**: the real timestamps, shifted by one constant so the data ends at ``end`` (order and
  gaps unchanged; the event schema refuses 1998 dates as clock faults). Prepare's time split then
  holds out the last ``holdout_fraction`` of the 7 months.

Events go through the simulator's Firehose writer (``pipelines/simulators/marketplace.py``), the one definition
of the store's feedback layout.
"""

from __future__ import annotations

import importlib.util
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from models import layout, storage
from models.events import SCHEMA_VERSION
from pipelines.simulators.marketplace import SimulationParameters, _FirehoseWriter, _json_line, _PendingLine, _write_parquet

PACKAGE = "recbole"
INSTALL_COMMAND = ".venv/bin/pip install --no-deps 'recbole==1.2.1'"
DATA_FOLDER = ("dataset_example", "ml-100k")
CONVERSION_RATING = 4   # a rating at or above this is also a conversion
PARTNER = "grouplens"


class DatasetNotInstalled(FileNotFoundError):
    """The package that ships the dataset is not installed."""


def data_folder() -> Path:
    """Where the installed package keeps ml-100k (found without importing the package: it needs torch)."""
    spec = importlib.util.find_spec(PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations)), *DATA_FOLDER) if spec and spec.submodule_search_locations \
        else None
    if folder is None or not (folder / "ml-100k.inter").exists():
        raise DatasetNotInstalled(f"MovieLens 100K is not installed (it ships in the {PACKAGE} wheel); "
                                  f"install it with: {INSTALL_COMMAND}")
    return folder


def read_atomic(path: Path) -> pd.DataFrame:
    """A RecBole atomic file: tab-separated, header ``name:type``; the type suffix is dropped."""
    frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    return frame.rename(columns=lambda c: c.split(":")[0])


def load_ratings(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ratings with int user/item ids, float rating, int timestamp seconds; movies with id, title, year, genres)."""
    ratings = read_atomic(folder / "ml-100k.inter").astype({"user_id": int, "item_id": int, "rating": float,
                                                            "timestamp": int})
    movies = read_atomic(folder / "ml-100k.item").astype({"item_id": int})
    return ratings.sort_values(["timestamp", "user_id", "item_id"], kind="stable").reset_index(drop=True), movies


def catalog_table(movies: pd.DataFrame, train_ratings: pd.DataFrame) -> pd.DataFrame:
    genres = movies["class"].str.split().map(lambda g: g if g else ["unknown"])
    mean_rating = train_ratings.groupby("item_id")["rating"].mean()
    return pd.DataFrame({
        "app_id": [f"ml-{i:04d}" for i in movies["item_id"]],
        "name": movies["movie_title"],
        "category": genres.map(lambda g: g[0]),
        "region": "unknown",
        "pricing_model": "unknown",
        "features": genres,
        "description": [f"{t} ({y or 'year unknown'}): {', '.join(g)}" for t, y, g in
                        zip(movies["movie_title"], movies["release_year"], genres)],
        "avg_rating": movies["item_id"].map(mean_rating).round(2).to_numpy(dtype=np.float64),
    }).sort_values("app_id", kind="stable").reset_index(drop=True)


def write_store(store_uri: str, *, end: datetime, holdout_fraction: float) -> dict:
    """Write ``catalog/`` and ``feedback/`` for MovieLens 100K into ``store_uri``; returns the window to prepare with."""
    ratings, movies = load_ratings(data_folder())
    shift_s = int(end.timestamp()) - int(ratings["timestamp"].max()) - 1
    span_s = int(ratings["timestamp"].max()) - int(ratings["timestamp"].min()) + 1
    days = int(np.ceil(span_s / 86_400))
    cut_s = int(end.timestamp()) - holdout_fraction * days * 86_400 - shift_s
    store_uri = storage.normalize(store_uri)
    _write_parquet(catalog_table(movies, ratings[ratings["timestamp"] < cut_s]), layout.catalog_uri(store_uri))

    params = SimulationParameters(apps=len(movies), users=int(ratings["user_id"].nunique()), days=days,
                                  events_per_day=max(1, len(ratings) // days), seed=0, fault_rate=0.0, end=end)
    writer = _FirehoseWriter(store_uri, params)
    ts_us = (ratings["timestamp"].to_numpy(np.int64) + shift_s) * 1_000_000
    text = pd.to_datetime(ts_us, unit="us", utc=True).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    lines = []
    for row, (user, item, rating, ts, when) in enumerate(zip(ratings["user_id"], ratings["item_id"], ratings["rating"],
                                                             ts_us, text)):
        common = {"ts": when, "schema_version": SCHEMA_VERSION, "app_id": f"ml-{item:04d}", "campaign_id": f"ml-{item:04d}",
                  "partner_id": PARTNER, "user_id": f"ml-user-{user:04d}", "request_id": None}
        lines.append(_PendingLine(int(ts), _json_line({"event_id": f"ml-rating-{row:06d}", "event_type": "click",
                                                       **common, "clicked": True}), None))
        if rating >= CONVERSION_RATING:
            lines.append(_PendingLine(int(ts), _json_line({"event_id": f"ml-high-{row:06d}", "event_type": "conversion",
                                                           **common, "converted": True, "revenue": 0.0}), None))
    writer.add(lines)
    for hour in sorted(writer.pending):
        writer.flush_hour(hour)
    return {"window_end": end, "window_days": days, "ratings": len(ratings), "movies": len(movies),
            "users": params.users, "lines": writer.lines_written, "time_shift": str(timedelta(seconds=shift_s))}
