"""The DuckDB engine of PrepareFeedback: the SQL of steps/prepare_sql.py, multi-threaded and out-of-core.

Files are read through the project's storage layer (models/storage.py, so ``file://`` and ``s3://``
alike) by a few threads that gunzip them and cut them into lines with Arrow (``prepare_io.read_file``:
a truncated or corrupt gzip keeps its complete lines and is reported as a bad file). Batches of lines
go into DuckDB as the ``raw_lines`` relation; the fast path runs in DuckDB's threads. The rare lines
it cannot prove valid are parsed by the reference validator (``models.events.parse_line``) here,
so every bad line gets the reference's reason code. Dedupe, the window, the kept outcome and the
aggregates are SQL; no event id is held in Python.

DuckDB works in memory with a memory limit: past the limit it spills to the spill folder instead of
growing (``DuckDBSettings``; pipeline.yaml ``prepare:``). Extension auto-install
and auto-load are off: json and parquet are built into the wheel, and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.events import EVENT_TYPES, InvalidEvent, parse_line
from models.progress import Progress
from steps import prepare_sql
from steps.prepare_io import (
    BadFile, EngineResult, RecordWriter, SplitResult, Window, interactions_frame, read_file, split_lines,
)

BATCH_LINES = 500_000  # lines per insert into DuckDB: bounds the raw text held in Python
READ_AHEAD_FILES = 8  # files being read and gunzipped ahead of DuckDB
_RAW_SCHEMA = pa.schema([("source", pa.int32()), ("line", pa.int64()), ("raw", pa.string())])
_EVENT_SCHEMA = pa.schema([("source", pa.int32()), ("line", pa.int64()), ("event_id", pa.string()),
                           ("kind", pa.int8()), ("ts_us", pa.int64()), ("app_id", pa.string()),
                           ("user_id", pa.string()), ("positive", pa.bool_()), ("attributed", pa.bool_()),
                           ("revenue", pa.float64()), ("raw", pa.string())])


@dataclass(frozen=True)
class DuckDBSettings:
    memory_limit: str = "2GB"  # DuckDB's own memory (buffer pool); past it, work spills to spill_dir
    spill_dir: str = ""  # local folder for DuckDB's spill files; empty = the system temp folder
    threads: int = 0  # 0 = one per core


@dataclass
class _FileLines:
    source: int
    uri: str
    table: pa.Table  # _RAW_SCHEMA
    undecodable: dict[int, bytes]  # line number -> original bytes of lines that are not UTF-8
    error: str | None


def file_lines(source: int, uri: str) -> _FileLines:
    """A file's lines as the ``raw_lines`` relation (``RAW_COLUMNS``), read as every engine reads them."""
    content, error = read_file(uri)
    undecodable: dict[int, bytes] = {}
    try:
        text = _whole_text(content)
        lines = pc.list_flatten(pc.split_pattern(text, "\n")).cast(pa.string())
        if len(lines) and content.endswith(b"\n") or not content:
            lines = lines.slice(0, len(lines) - 1)  # the newline ends the last line, it does not start one
        if b"\r" in content:
            lines = pc.utf8_rtrim(lines, characters="\r")
    except pa.ArrowInvalid:  # not UTF-8 (rare): find the bad lines; U+FFFD keeps them off the fast path
        texts = []
        for number, line in enumerate(split_lines(content), start=1):
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                undecodable[number] = line
                texts.append(line.decode("utf-8", errors="replace"))
        lines = pa.array(texts, pa.string())
    n = len(lines)
    table = pa.table([pa.array(np.full(n, source, dtype=np.int32)), pa.array(np.arange(1, n + 1, dtype=np.int64)),
                      lines], schema=_RAW_SCHEMA)
    return _FileLines(source, uri, table, undecodable, error)


def _whole_text(content: bytes) -> pa.LargeStringArray:
    """The content as one Arrow string without a copy (no Python decode); ArrowInvalid if it is not UTF-8."""
    text = pa.LargeStringArray.from_buffers(1, pa.py_buffer(np.array([0, len(content)], np.int64)),
                                            pa.py_buffer(content))
    text.validate(full=True)
    return text


def _connect(settings: DuckDBSettings, folder: str) -> duckdb.DuckDBPyConnection:
    config = {
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "memory_limit": settings.memory_limit, "temp_directory": os.path.join(folder, "spill"),
        "preserve_insertion_order": False,
    }
    if settings.threads:
        config["threads"] = settings.threads
    # In memory, but not bounded by memory: past memory_limit DuckDB evicts blocks to temp_directory.
    return duckdb.connect(":memory:", config=config)


def read(files: Sequence[str], window: Window, app_ids: np.ndarray, quarantine: RecordWriter, kept: RecordWriter,
         use_attributed_clicks: bool, progress: Progress, settings: DuckDBSettings) -> EngineResult:
    """Read, validate, dedupe and aggregate the window's files in DuckDB (see the module docstring)."""
    parent = settings.spill_dir or None
    if parent:
        os.makedirs(parent, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="appsim-prepare-duckdb-", dir=parent)
    try:
        con = _connect(settings, folder)
        try:
            return _read(con, files, window, app_ids, quarantine, kept, use_attributed_clicks, progress, settings)
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read(con: duckdb.DuckDBPyConnection, files: Sequence[str], window: Window, app_ids: np.ndarray,
          quarantine: RecordWriter, kept: RecordWriter, use_attributed_clicks: bool, progress: Progress,
          settings: DuckDBSettings) -> EngineResult:
    catalog = pa.table({"app_id": pa.array(list(app_ids), pa.string())})
    con.register("catalog_arrow", catalog)
    con.execute("CREATE TABLE catalog AS SELECT app_id FROM catalog_arrow")
    con.unregister("catalog_arrow")
    typed = prepare_sql.typed_sql("raw_lines", "catalog")
    con.register("raw_lines", _RAW_SCHEMA.empty_table())
    con.execute(f"CREATE TABLE typed AS SELECT * FROM ({typed}) LIMIT 0")
    con.unregister("raw_lines")
    con.execute(f"CREATE TABLE slow_events AS SELECT {', '.join(prepare_sql.EVENT_COLUMNS)} FROM typed LIMIT 0")

    lines_per_file: dict[str, int] = {}
    bad_files: list[BadFile] = []
    # (source, line) -> what the slow path must do, in arrival order: parse these lines with the reference.
    undecodable: dict[tuple[int, int], bytes] = {}
    pending: list[pa.Table] = []
    pending_lines = 0

    def flush() -> None:
        nonlocal pending, pending_lines
        if not pending:
            return
        batch = pa.concat_tables(pending)
        con.register("raw_lines", batch)
        con.execute(f"INSERT INTO typed {typed}")
        con.unregister("raw_lines")
        progress.update(pending_lines)
        pending, pending_lines = [], 0

    workers = settings.threads or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare-read") as pool:
        queue: deque[Future[_FileLines]] = deque()
        next_file = 0
        while next_file < len(files) or queue:
            while next_file < len(files) and len(queue) < READ_AHEAD_FILES:
                queue.append(pool.submit(file_lines, next_file, files[next_file]))
                next_file += 1
            done = queue.popleft().result()
            n = done.table.num_rows
            lines_per_file[done.uri] = n
            undecodable.update({(done.source, number): raw for number, raw in done.undecodable.items()})
            if done.error is not None:
                bad_files.append(BadFile(done.uri, done.error, n))
            pending.append(done.table)
            pending_lines += n
            if pending_lines >= BATCH_LINES:
                flush()
        flush()

    bad_by_source = {files.index(bad.uri): bad for bad in bad_files}
    _slow_path(con, files, undecodable, bad_by_source, quarantine)
    con.execute(f"CREATE VIEW events AS {prepare_sql.events_sql('typed', 'slow_events')}")
    start_us, end_us, cut_us = window.microseconds()
    con.execute(f"CREATE TABLE classified AS {prepare_sql.classified_sql(start_us, end_us, cut_us, 'events', 'catalog')}")
    con.execute("DROP VIEW events")
    con.execute("DROP TABLE typed")
    con.execute("DROP TABLE slow_events")

    outcomes = con.execute(prepare_sql.outcome_counts_sql("classified")).fetch_df()
    for reason, source, line, raw in _rows(con, prepare_sql.kept_rows_sql("classified")):
        kept.add(reason, None, files[source], line, raw)

    def total(outcome: str) -> int:
        return int(outcomes.loc[outcomes["outcome"] == outcome, "n"].sum())

    splits = {part: split_result(lambda sql: con.execute(sql).fetch_df(), outcomes, holdout, use_attributed_clicks)
              for part, holdout in (("train", False), ("holdout", True))}
    lines_read = sum(lines_per_file.values()) + len(bad_files)
    return EngineResult(
        lines_read=lines_read, duplicates=total("duplicate"), before_window=total("before_window"),
        after_window=total("after_window"), kept_reasons=dict(kept.reasons),
        users=int(con.execute(prepare_sql.users_sql("classified")).fetchone()[0]),
        lines_per_file=lines_per_file, splits=splits, bad_files=bad_files,
    )


def _slow_path(con: duckdb.DuckDBPyConnection, files: Sequence[str], undecodable: dict[tuple[int, int], bytes],
               bad_by_source: dict[int, BadFile], quarantine: RecordWriter) -> None:
    """Lines the fast path did not accept, through the reference validator, in arrival order.

    Valid ones become ``slow_events`` rows; bad ones (and bad files, after their last line read) go to the quarantine.
    """
    rows: list[tuple] = []
    bad_files_left = sorted(bad_by_source.items())

    def quarantine_bad_files_before(source: int) -> None:
        while bad_files_left and bad_files_left[0][0] < source:
            quarantine.add_bad_file(bad_files_left.pop(0)[1])

    for source, line, raw in _rows(con, "SELECT source, line, raw FROM typed WHERE NOT accepted ORDER BY source, line"):
        quarantine_bad_files_before(source)
        original = undecodable.get((source, line)) or raw.encode("utf-8")
        try:
            event = parse_line(original)
        except InvalidEvent as invalid:
            quarantine.add(invalid.reason, invalid.detail, files[source], line, original)
            continue
        rows.append((source, line, *prepare_sql.event_row(event), raw))
    quarantine_bad_files_before(len(files))
    if rows:
        columns = list(zip(*rows))
        table = pa.table([pa.array(values, type=column.type) for values, column in zip(columns, _EVENT_SCHEMA)],
                         schema=_EVENT_SCHEMA)
        con.register("slow_arrow", table)
        con.execute(f"INSERT INTO slow_events SELECT {', '.join(prepare_sql.EVENT_COLUMNS)} FROM slow_arrow")
        con.unregister("slow_arrow")


def _rows(con: duckdb.DuckDBPyConnection, sql: str, batch_rows: int = 65_536):
    """A query's rows as tuples, fetched in Arrow batches (bounded memory)."""
    reader = con.execute(sql).to_arrow_reader(batch_rows)
    for batch in reader:
        yield from zip(*(column.to_pylist() for column in batch.columns))


def split_result(fetch: Callable[[str], pd.DataFrame], outcomes: pd.DataFrame, holdout: bool,
                 use_attributed_clicks: bool) -> SplitResult:
    """One split's results from the read-only queries on ``classified``; ``fetch`` runs a statement of
    steps/prepare_sql.py on an engine (here DuckDB; the Spark engine transpiles it first)."""
    pairs = fetch(prepare_sql.interactions_sql(holdout, use_attributed_clicks, "classified"))
    interactions = interactions_frame(
        pairs["user_id"].to_numpy(object), pairs["app_id"].to_numpy(object),
        pairs["clicks"].to_numpy(), pairs["conversions"].to_numpy(),
        pairs["first_ts_us"].to_numpy(), pairs["last_ts_us"].to_numpy())
    totals = fetch(prepare_sql.app_totals_sql(holdout, "classified"))
    revenue = fetch(prepare_sql.revenue_rows_sql(holdout, "classified"))
    codes = pd.Index(totals["app_id"]).get_indexer(revenue["app_id"])
    totals["revenue"] = np.bincount(codes, weights=revenue["revenue"].to_numpy(np.float64), minlength=len(totals))
    positives, attributed_positives = fetch(prepare_sql.positive_counts_sql(holdout, "classified")).iloc[0]
    good = outcomes[(outcomes["outcome"] == "good") & (outcomes["holdout"] == holdout)]
    by_kind = good.groupby("kind")["n"].sum()
    return SplitResult(
        interactions=interactions, app_totals=totals,
        events_by_type={name: int(by_kind.get(code, 0)) for code, name in enumerate(EVENT_TYPES)},
        positives=int(positives), attributed_positives=int(attributed_positives),
    )
