"""One SQLite file shared by the embedded stores (registry, experiments): WAL mode, a 30 s busy
timeout, autocommit connections so each store takes ``BEGIN IMMEDIATE`` where it writes.

Opened ``read_only`` nothing is written, not even the schema: commands that only read (``registry
list``, ``serve``) work on a read-only folder or mount, and a file that does not exist yet reads as
empty. A damaged, read-only or locked file raises the store's ``unusable_error`` naming the file and
the fix, never a bare ``sqlite3`` error.
"""

from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


BUSY_TIMEOUT_S = 30


class SQLiteFileError(RuntimeError):
    """A database file that cannot be used as asked; ``reason`` is corrupt, read_only, locked or unreadable."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class SQLiteFile:
    unusable_error: type[SQLiteFileError] = SQLiteFileError

    def __init__(self, path: str | Path, schema: str, read_only: bool = False):
        self.path = Path(path)
        self.uri = f"sqlite://{self.path}"
        self.read_only = read_only
        self._schema = schema
        if read_only:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            self._use_wal(conn)
            conn.executescript(schema)

    @staticmethod
    def _use_wal(conn: sqlite3.Connection) -> None:
        # While other connections open the same new file, switching it to WAL can fail with "database is locked" at
        # once: SQLite does not call the busy handler for it, so the connection's timeout does not cover it (4% of
        # 6 threads creating one registry did). Retried here, within the same 30 s.
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._open()
        except sqlite3.DatabaseError as error:
            raise self._unusable(error) from None
        try:
            yield conn
        except sqlite3.DatabaseError as error:
            raise self._unusable(error) from None
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        if not self.read_only:
            return sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        if not self.path.exists():
            empty = sqlite3.connect(":memory:", isolation_level=None)
            empty.executescript(self._schema)
            return empty
        uri = self.path.resolve().as_uri()
        try:
            conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
            return conn
        except sqlite3.OperationalError:
            # A WAL database in a read-only folder: mode=ro needs to create the -shm file beside it.
            # immutable=1 reads the file as it is; no writer can be appending a WAL in that folder.
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def quick_check(self) -> str:
        """SQLite's own consistency check: "ok", or what is damaged."""
        with self._connect() as conn:
            return "; ".join(row[0] for row in conn.execute("PRAGMA quick_check").fetchall())

    def _unusable(self, error: sqlite3.DatabaseError) -> SQLiteFileError:
        text = str(error)
        # Creating a database in a read-only folder fails as "unable to open database file".
        cannot_create = not self.path.exists() and not os.access(self.path.parent, os.W_OK)
        if "readonly" in text or "read-only" in text or cannot_create:
            return self.unusable_error(
                f"{self.path} is read-only ({text}); this command writes: run it on a writable store "
                "(fix the folder's permissions, or copy the store)", "read_only")
        if "locked" in text or "busy" in text:
            return self.unusable_error(
                f"{self.path} stayed locked by another process for {BUSY_TIMEOUT_S} s ({text}); retry when that process is done",
                "locked")
        if isinstance(error, sqlite3.OperationalError) and "unable to open" in text:
            return self.unusable_error(
                f"cannot open {self.path} ({text}); check that its folder exists and is readable", "unreadable")
        return self.unusable_error(
            f"{self.path} is not a readable SQLite database ({text}); restore it from a backup, or move it "
            "aside to start an empty one (`appsim store check` lists what the store still holds)", "corrupt")
