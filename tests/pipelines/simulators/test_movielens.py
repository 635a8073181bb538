"""MovieLens 100K -> an appsim store: RecBole's atomic files converted to the catalog and feedback contracts.

The real files ship in the recbole wheel (the bench installs it); here a few rows in the same format
stand in for them, so the conversion is checked without the data (whose licence forbids committing it).
"""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pytest

from models import dataset, layout, storage
from pipelines.simulators import movielens
from steps import prepare

END = datetime(2026, 11, 2, tzinfo=timezone.utc)
DAY = 86_400
T0 = 880_000_000  # 1997-11-20


def write_atomic(folder):
    folder.mkdir(parents=True)
    ratings = [(1, 10, 5, T0), (1, 20, 3, T0 + DAY), (2, 10, 4, T0 + 2 * DAY), (2, 30, 2, T0 + 3 * DAY),
               (3, 20, 5, T0 + 8 * DAY), (3, 30, 1, T0 + 9 * DAY)]
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                          + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings))
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                                         "10\tToy Story\t1995\tAnimation Children's Comedy\n"
                                         "20\tGoldenEye\t1995\tAction Adventure Thriller\n"
                                         "30\tFour Rooms\t\t\n")


@pytest.fixture
def store(tmp_path, monkeypatch):
    write_atomic(tmp_path / "ml-100k")
    monkeypatch.setattr(movielens, "data_folder", lambda: tmp_path / "ml-100k")
    uri = storage.normalize(tmp_path / "store")
    return uri, movielens.write_store(uri, end=END, holdout_fraction=0.2)


def test_movies_become_the_catalog_without_holdout_ratings(store):
    uri, summary = store
    assert summary["movies"] == 3 and summary["ratings"] == 6 and summary["window_days"] == 10
    with storage.open_uri(layout.catalog_uri(uri), "rb") as handle:
        catalog = pd.read_parquet(handle)
    assert catalog["app_id"].tolist() == ["ml-0010", "ml-0020", "ml-0030"]
    assert catalog["category"].tolist() == ["Animation", "Action", "unknown"]
    assert list(catalog["features"][0]) == ["Animation", "Children's", "Comedy"]
    assert catalog["description"][2] == "Four Rooms (year unknown): unknown"
    # avg_rating from the train part only: item 30's 2 is in it (day 3), its 1 (day 9) is in the holdout
    assert catalog["avg_rating"].tolist() == [4.5, 3.0, 2.0]


def test_ratings_become_events_prepare_accepts_with_a_time_split(store):
    uri, summary = store
    assert summary["lines"] == 6 + 3  # a click per rating, a conversion per rating >= 4
    manifest = prepare.run(layout.feedback_uri(uri), layout.catalog_uri(uri), storage.join(uri, "prepared"),
                           window_end=END, window_days=summary["window_days"], holdout_fraction=0.2,
                           max_bad_fraction=0.0)
    assert manifest["counts"]["quarantined"] == 0
    prepared = storage.join(uri, "prepared")
    train = dataset.read_table(prepared, dataset.TRAIN_INTERACTIONS)
    holdout = dataset.read_table(prepared, dataset.HOLDOUT_INTERACTIONS)
    assert set(zip(train["user_id"], train["app_id"])) == {("ml-user-0001", "ml-0010"), ("ml-user-0001", "ml-0020"),
                                                           ("ml-user-0002", "ml-0010"), ("ml-user-0002", "ml-0030")}
    assert set(holdout["user_id"]) == {"ml-user-0003"}
    assert train.set_index(["user_id", "app_id"])["conversions"].to_dict()[("ml-user-0001", "ml-0010")] == 1


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(movielens, "PACKAGE", "no_such_package_for_appsim")
    with pytest.raises(movielens.DatasetNotInstalled, match="pip install --no-deps 'recbole==1.2.1'"):
        movielens.data_folder()
