"""One SQLite file shared by the embedded stores (registry, experiments): WAL mode, a 30 s busy
timeout, autocommit connections so each store takes ``BEGIN IMMEDIATE`` where it writes."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class SQLiteFile:
    def __init__(self, path: str | Path, schema: str):
        self.path = Path(path)
        self.uri = f"sqlite://{self.path}"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            yield conn
        finally:
            conn.close()
