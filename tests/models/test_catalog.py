"""The catalog reader every step and command uses (models/catalog.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from models import catalog, layout, storage


@pytest.fixture
def store(tmp_path):
    uri = storage.normalize(tmp_path)
    frame = pd.DataFrame({"app_id": ["app-2", "app-1", "app-2"], "name": ["B", "A", "B again"],
                          "category": ["games", "tools", "games"]})
    with storage.open_uri(layout.catalog_uri(uri), "wb") as handle:
        frame.to_parquet(handle, index=False)
    return uri


def test_the_catalog_is_read_from_its_file_or_the_folder_sagemaker_hands_over(store):
    by_file = catalog.read_catalog(layout.catalog_uri(store))
    by_folder = catalog.read_catalog(storage.join(store, "catalog"))
    pd.testing.assert_frame_equal(by_file, by_folder)
    assert list(by_file.columns) == ["app_id", "name", "category"] and len(by_file) == 3
    assert list(catalog.read_catalog(layout.catalog_uri(store), columns=["app_id"]).columns) == ["app_id"]
    assert catalog.catalog_app_ids(storage.join(store, "catalog")).tolist() == ["app-1", "app-2"]
    assert catalog.catalog_rows(layout.catalog_uri(store)) == 3


def test_a_missing_or_unusable_catalog_names_the_file_and_the_fix(tmp_path):
    store = storage.normalize(tmp_path)
    with pytest.raises(catalog.CatalogMissing, match=r"catalog/apps\.parquet does not exist: copy the feature-store"):
        catalog.read_catalog(layout.catalog_uri(store))
    storage.write_bytes(layout.catalog_uri(store), b"PAR1 truncated")
    with pytest.raises(catalog.CatalogInvalid, match="not a readable Parquet file"):
        catalog.catalog_rows(layout.catalog_uri(store))
    with storage.open_uri(layout.catalog_uri(store), "wb") as handle:
        pd.DataFrame({"name": ["no id"]}).to_parquet(handle, index=False)
    for read in (catalog.read_catalog, catalog.catalog_app_ids, catalog.catalog_rows):
        with pytest.raises(catalog.CatalogInvalid, match=r"has no app_id column \(columns: name\)"):
            read(layout.catalog_uri(store))
