"""The embedded registry: one SQLite file in the store.

Concurrent writers are serialised by ``BEGIN IMMEDIATE`` (the write lock is taken before the
next number is read) and the version column is the primary key, so two writers can never get
the same number.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from models.sqlite_file import SQLiteFile
from models.registry import ModelVersion, Registry, Status, VersionNotFound, check_status

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


class SQLiteRegistry(SQLiteFile, Registry):
    def __init__(self, path: str | Path):
        SQLiteFile.__init__(self, path, _SCHEMA)

    @staticmethod
    def _row(row: tuple) -> ModelVersion:
        version, status, created_at, artifact_uri, evaluation_uri, metrics, lineage, reason = row
        return ModelVersion(
            version=version,
            status=status,
            created_at=datetime.fromisoformat(created_at),
            artifact_uri=artifact_uri,
            evaluation_uri=evaluation_uri,
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
                    (number, status, created, artifact_uri, evaluation_uri,
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
