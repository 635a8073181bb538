"""The embedded registry: one SQLite file in the store.

Concurrent writers are serialised by ``BEGIN IMMEDIATE`` (the write lock is taken before the
next number is read) and the version column is the primary key, so two writers can never get
the same number.

The store is portable: an artifact or report inside the registry's folder (the store) is recorded
by its path relative to that folder, so a store copied or restored elsewhere still finds its
artifacts. Rows written before that hold absolute ``file://`` URIs; when such a path is gone, the
longest tail of it that exists under the registry's folder is used (``/old/store/runs/X/...`` ->
``<store>/runs/X/...``).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models import storage
from models.registry import ModelVersion, Registry, RegistryError, Status, VersionNotFound, check_status
from models.sqlite_file import SQLiteFile, SQLiteFileError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS model_versions (
    version INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('PendingManualApproval', 'Approved', 'Rejected')),
    created_at TEXT NOT NULL,
    artifact_uri TEXT NOT NULL,
    evaluation_uri TEXT,
    metrics TEXT NOT NULL,
    lineage TEXT NOT NULL,
    status_reason TEXT NOT NULL DEFAULT ''
)
"""


class RegistryUnavailable(SQLiteFileError, RegistryError):
    """registry.db cannot be used (damaged, read-only for a write, locked)."""


class SQLiteRegistry(SQLiteFile, Registry):
    unusable_error = RegistryUnavailable

    def __init__(self, path: str | Path, read_only: bool = False):
        SQLiteFile.__init__(self, path, _SCHEMA, read_only=read_only)
        self.root = self.path.resolve().parent

    def _stored(self, uri: str | None) -> str | None:
        """How a location is recorded: relative to the registry's folder when inside it."""
        if uri is None or not storage.is_local(uri):
            return uri
        try:
            return storage.local_path(uri).relative_to(self.root).as_posix()
        except ValueError:
            return storage.normalize(uri)

    def _resolved(self, stored: str | None) -> str | None:
        """A recorded location as a URI that points into this copy of the store."""
        if stored is None:
            return None
        if "://" not in stored:
            return storage.normalize(self.root / stored)
        if not stored.startswith("file://"):
            return stored
        path = storage.local_path(stored)
        if path.exists():
            return stored
        for start in range(1, len(path.parts) - 1):  # keep at least <folder>/<file>
            candidate = self.root.joinpath(*path.parts[start:])
            if candidate.exists():
                return storage.normalize(candidate)
        return stored

    def _row(self, row: tuple) -> ModelVersion:
        version, status, created_at, artifact_uri, evaluation_uri, metrics, lineage, reason = row
        return ModelVersion(
            version=version,
            status=status,
            created_at=datetime.fromisoformat(created_at),
            artifact_uri=self._resolved(artifact_uri),
            evaluation_uri=self._resolved(evaluation_uri),
            metrics=json.loads(metrics),
            lineage=json.loads(lineage),
            status_reason=reason,
        )

    _COLUMNS = "version, status, created_at, artifact_uri, evaluation_uri, metrics, lineage, status_reason"

    def register(
        self,
        artifact_uri: str,
        status: Status,
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        evaluation_uri: str | None = None,
        status_reason: str = "",
    ) -> ModelVersion:
        check_status(status)
        created = datetime.now(timezone.utc).isoformat()
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (number,) = conn.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions").fetchone()
                conn.execute(
                    f"INSERT INTO model_versions ({self._COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (number, status, created, self._stored(artifact_uri), self._stored(evaluation_uri),
                     json.dumps(metrics, sort_keys=True), json.dumps(lineage, sort_keys=True, default=str), status_reason),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return self.get(number)

    def get(self, version: int) -> ModelVersion:
        with self._connect() as conn:
            row = conn.execute(f"SELECT {self._COLUMNS} FROM model_versions WHERE version = ?", (int(version),)).fetchone()
        if row is None:
            raise VersionNotFound(version, self.uri)
        return self._row(row)

    def list_versions(self) -> list[ModelVersion]:
        with self._connect() as conn:
            rows = conn.execute(f"SELECT {self._COLUMNS} FROM model_versions ORDER BY version DESC").fetchall()
        return [self._row(r) for r in rows]

    def set_status(self, version: int, status: Status, reason: str = "") -> ModelVersion:
        check_status(status)
        with self._connect() as conn:
            cursor = conn.execute(
                "UPDATE model_versions SET status = ?, status_reason = ? WHERE version = ?", (status, reason, int(version))
            )
        if cursor.rowcount == 0:
            raise VersionNotFound(version, self.uri)
        return self.get(version)
