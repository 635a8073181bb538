"""The app catalog (``<store>/catalog/apps.parquet``, the feature-store snapshot): the one reader.

Columns (DESIGN.md): ``app_id``, ``name``, ``category``, ``region``, ``pricing_model``,
``features`` (list of strings), ``description``, ``avg_rating``, plus optional numeric columns.
Only ``app_id`` is required of every catalog; each user checks the columns it needs.

A catalog URI names the parquet file or a folder holding it: SageMaker hands a job its input
channel as a folder (``/opt/ml/processing/input/catalog``, ``SM_CHANNEL_CATALOG``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import BinaryIO, TypeVar

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models import layout, storage

T = TypeVar("T")


class CatalogMissing(FileNotFoundError):
    """No catalog where one was named."""


class CatalogInvalid(ValueError):
    """The catalog exists but cannot be used: not Parquet, or no ``app_id`` column."""


def catalog_file(uri: str) -> str:
    """The parquet file of a catalog URI that names the file or a folder holding it."""
    return storage.normalize(uri) if uri.endswith(".parquet") else storage.join(uri, layout.CATALOG_FILE)


def _read(uri: str, read: Callable[[BinaryIO, str], T]) -> T:
    """``read(handle, path)`` on the catalog's file; a missing or unreadable one raises its error."""
    path = catalog_file(uri)
    if not storage.exists(path):
        raise CatalogMissing(f"catalog {path} does not exist: copy the feature-store snapshot to "
                             f"<store>/catalog/{layout.CATALOG_FILE} (demo data: `appsim simulate`)")
    try:
        with storage.open_uri(path, "rb") as handle:
            return read(handle, path)
    except CatalogInvalid:
        raise
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise CatalogInvalid(f"catalog {path} is not a readable Parquet file ({error}): "
                             "replace it with the feature-store snapshot") from error


def _require_app_id(names: Sequence[str], path: str) -> None:
    if "app_id" not in names:
        raise CatalogInvalid(f"catalog {path} has no app_id column (columns: {', '.join(names)}): "
                             "every catalog row needs its app's id")


def read_catalog(uri: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The catalog (or only ``columns``, which must include ``app_id``) as a DataFrame."""
    def read(handle: BinaryIO, path: str) -> pd.DataFrame:
        _require_app_id(pq.read_schema(handle).names, path)
        handle.seek(0)
        return pd.read_parquet(handle, columns=list(columns) if columns is not None else None)

    return _read(uri, read)


def catalog_app_ids(uri: str) -> np.ndarray:
    """The catalog's distinct app ids, sorted, as an object array of str."""
    ids = read_catalog(uri, columns=["app_id"])["app_id"].astype(str)
    return np.array(sorted(set(ids)), dtype=object)


def catalog_rows(uri: str) -> int:
    """How many apps the catalog holds, from its footer alone (a store check reads no rows)."""
    def read(handle: BinaryIO, path: str) -> int:
        metadata = pq.read_metadata(handle)
        _require_app_id(metadata.schema.names, path)
        return metadata.num_rows

    return _read(uri, read)
