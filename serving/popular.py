"""Popular apps' neighbours from the version's bulk export instead of a FAISS search (off by default).

With ``APPSIM_POPULAR_APPS=N`` each worker, when it loads a model version, reads the rows of the
version's N most-shown apps (``impressions`` in the artifact's statistics) from its neighbour
export (``appsim neighbors export``: ``<store>/neighbors/v<N>/``, or ``APPSIM_NEIGHBORS_URI``) and
answers ``/similar`` for those apps, for any k up to the export's, from memory; every other app,
larger k, ``/predict`` and cold start still search. Whether it pays, measured over HTTP: README,
"Bulk neighbours" (``bench/serving.py --popular-table``).

The table is only used when it is the export of exactly the loaded model (same version and
embeddings checksum, which the export's manifest records); otherwise, or when the export is
missing or unreadable, the version is served from FAISS alone and the reason is logged and shown
in ``/v1/models``: the table is a shortcut, never a second source of truth.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from models.artifact import EMBEDDINGS, ModelArtifact
from models.predictor import Neighbor, Predictor, check_k
from steps.export_neighbors import export_manifest, read_neighbors

log = logging.getLogger("appsim.serving.popular")


class PopularTableError(ValueError):
    """A neighbour export that cannot answer for the loaded model."""


@dataclass(frozen=True)
class PopularTable:
    k: int
    rows: dict[str, list[Neighbor]]
    uri: str


def most_shown(artifact: ModelArtifact, apps: int) -> list[str]:
    """The ``apps`` app ids with the most impressions, most first (ties: artifact order)."""
    impressions = artifact.app_stats.set_index("app_id")["impressions"].reindex(artifact.app_ids).fillna(0).to_numpy()
    return [artifact.app_ids[row] for row in np.argsort(-impressions, kind="stable")[:apps]]


def load_popular_table(artifact: ModelArtifact, version: int, export_uri: str, apps: int) -> PopularTable:
    """The exported neighbours of the ``apps`` most-shown apps of ``artifact`` (registered ``version``)."""
    try:
        manifest = export_manifest(export_uri)
    except FileNotFoundError:
        raise PopularTableError(f"no finished neighbour export at {export_uri}; run `appsim neighbors export "
                                f"--version {version}` (the server answers from FAISS meanwhile)") from None
    except ValueError as error:  # a truncated or hand-edited manifest
        raise PopularTableError(f"the neighbour export's manifest at {export_uri} is not JSON ({error}); "
                                f"export version {version} again") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("k"), int) or manifest["k"] < 1:
        raise PopularTableError(f"the neighbour export's manifest at {export_uri} has no positive k; "
                                f"export version {version} again")
    checksum = artifact.manifest.get("files", {}).get(EMBEDDINGS)
    if manifest.get("model_version") != version or manifest.get("embeddings_sha256") != checksum:
        raise PopularTableError(
            f"the export at {export_uri} is of version {manifest.get('model_version')} (embeddings "
            f"{str(manifest.get('embeddings_sha256'))[:12]}), not of the served version {version} (embeddings "
            f"{str(checksum)[:12]}); export this version or point APPSIM_NEIGHBORS_URI at its export")
    found = read_neighbors(export_uri, most_shown(artifact, apps), ["app_id", "neighbor_ids", "scores"])
    rows = {app_id: [Neighbor(a, s) for a, s in zip(ids, scores)]
            for app_id, ids, scores in zip(*(found[name].to_pylist() for name in ("app_id", "neighbor_ids", "scores")))}
    return PopularTable(manifest["k"], rows, export_uri)


class TablePredictor(Predictor):
    """A ``Predictor`` whose ``similar`` answers the table's apps from the table (k up to the export's)."""

    def __init__(self, artifact: ModelArtifact, table: PopularTable):
        super().__init__(artifact)
        self.table = table

    def similar(self, app_id: str, k: int = 10) -> list[Neighbor]:
        neighbors = self.table.rows.get(app_id)
        if neighbors is None or check_k(k) > self.table.k:
            return super().similar(app_id, k)
        return neighbors[:k]
