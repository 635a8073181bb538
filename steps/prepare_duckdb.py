"""The DuckDB engine of PrepareFeedback: the SQL of steps/prepare_sql.py, multi-threaded and out-of-core.

Files are read through the project's storage layer (models/storage.py, so ``file://`` and ``s3://``
alike) by a few threads that gunzip them in Python (``prepare_io.read_file``: a truncated or corrupt
gzip keeps its complete lines and is reported as a bad file; DuckDB's gzip reader does not notice
either, so it is not used). Consecutive files form a unit (``_Unit``, ~32 MB of lines) that the
canonical-line matcher (steps/prepare_canonical.py) reads, a unit per core at once: the lines it accepts go
to table ``matched`` with their values, the others (rare: bad lines, other layouts, and the lines of files
that are not UTF-8, cut by Arrow) to ``unproven``. After the last unit, ``prepare_sql.typed_sql`` (any JSON
layout) goes over ``unproven``, and what it cannot prove is parsed by the reference validator
(``models.events.parse_line``) here, so every bad line gets the reference's reason code. Dedupe, the window,
the kept outcome and the aggregates are SQL; no event id is held in Python.

DuckDB works in memory with a memory limit: past the limit it spills to the spill folder instead of
growing (``DuckDBSettings``; pipeline.yaml ``prepare:``). Extension auto-install
and auto-load are off: json and parquet are built into the wheel, and nothing is downloaded.
"""

from __future__ import annotations

import bisect
import os
import shutil
import tempfile
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.events import EVENT_TYPES, InvalidEvent, parse_line
from models.processes import pid_alive
from models.progress import Progress
from steps import prepare_sql
from steps.prepare_io import (
    BadFile, EngineResult, RecordWriter, SplitResult, Window, interactions_frame, read_file, split_lines,
)

UNIT_BYTES = 32 << 20  # uncompressed bytes matched at once: bounds what Python holds; small enough that the
# last unit, matched while the other worker has nothing left, is a short tail
READ_AHEAD_FILES = 8  # files being read and gunzipped ahead of DuckDB
LOADING_READ_AHEAD_UNITS = 8  # units read ahead while the matcher loads
MATCHER_NOTE_AFTER_SECONDS = 3.0  # loading from numba's cache takes ~1 s
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
    return content_lines(source, uri, *read_file(uri))


def content_lines(source: int, uri: str, content: bytes, error: str | None, first_line: int = 1) -> _FileLines:
    """``file_lines`` of a file already read; its lines numbered from ``first_line``."""
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
        for number, line in enumerate(split_lines(content), start=first_line):
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                undecodable[number] = line
                texts.append(line.decode("utf-8", errors="replace"))
        lines = pa.array(texts, pa.string())
    n = len(lines)
    table = pa.table([pa.array(np.full(n, source, dtype=np.int32)),
                      pa.array(np.arange(first_line, first_line + n, dtype=np.int64)), lines], schema=_RAW_SCHEMA)
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
        # memory_limit caps DuckDB's buffer pool, not the pages its allocator (jemalloc) keeps after a free: the
        # dedupe's hash tables replace evicted blocks, and the freed pages stayed resident beside a full pool
        # (~430 MiB at 30M lines, and more the faster the run). Background threads purge them on time, and a
        # worker that allocated 32 MB in a task purges its arena after it (DuckDB's default: 128 MB).
        "allocator_background_threads": True, "allocator_flush_threshold": "32MB",
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
    _remove_dead_work_folders(parent or tempfile.gettempdir())
    folder = tempfile.mkdtemp(prefix=f"{_WORK_PREFIX}{os.getpid()}-", dir=parent)
    try:
        con = _connect(settings, folder)
        try:
            return _read(con, files, window, app_ids, quarantine, kept, use_attributed_clicks, progress, settings)
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_WORK_PREFIX = "appsim-prepare-duckdb-"


def _remove_dead_work_folders(parent: str) -> None:
    """Work folders (spill files: gigabytes at scale) that a killed prepare left, its pid in their name."""
    for path in Path(parent).glob(f"{_WORK_PREFIX}*-*"):
        pid = path.name[len(_WORK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class _Unit:
    """Consecutive files matched at once: in ``matched`` and ``unproven`` its rows have ``source`` = ``number`` and
    ``line`` = the row in the unit (the files' lines one after another), which orders them as (file, line) does."""

    number: int
    files: list[int]  # indices into the window's files, in arrival order
    contents: list[bytes]
    first_rows: list[int]  # each file's first row in the unit
    rows: int

    def locate(self, row: int) -> tuple[int, int]:
        """(file index, line in that file) of a row of the unit."""
        at = bisect.bisect_right(self.first_rows, row) - 1
        return self.files[at], row - self.first_rows[at] + 1


def line_count(content: bytes) -> int:
    """Lines as ``split_lines`` counts them, without splitting (numpy releases the GIL: reader threads run it)."""
    newlines = int(np.count_nonzero(np.frombuffer(content, np.uint8) == ord("\n")))
    return newlines + (0 if not content or content.endswith(b"\n") else 1)


def is_utf8(content: bytes) -> bool:
    """Whether the content is valid UTF-8, which the matcher needs (rare other files are cut by Arrow instead)."""
    try:
        _whole_text(content)
    except pa.ArrowInvalid:
        return False
    return True


def _read_counted(uri: str) -> tuple[bytes, str | None, int, bool]:
    content, error = read_file(uri)
    return content, error, line_count(content), is_utf8(content)


def _read(con: duckdb.DuckDBPyConnection, files: Sequence[str], window: Window, app_ids: np.ndarray,
          quarantine: RecordWriter, kept: RecordWriter, use_attributed_clicks: bool, progress: Progress,
          settings: DuckDBSettings) -> EngineResult:
    loading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare-load")
    matcher = loading.submit(_load_matcher, progress)
    loading.shutdown(wait=False)
    catalog = pa.table({"app_id": pa.array(list(app_ids), pa.string())})
    con.register("catalog_arrow", catalog)
    con.execute("CREATE TABLE catalog AS SELECT app_id FROM catalog_arrow")
    con.unregister("catalog_arrow")
    typed = prepare_sql.typed_sql("raw_lines", "catalog")
    con.register("raw_lines", _RAW_SCHEMA.empty_table())
    con.execute("CREATE TABLE unproven AS SELECT * FROM raw_lines")
    con.execute(f"CREATE TABLE matched AS SELECT * FROM ({typed}) LIMIT 0")
    con.unregister("raw_lines")
    con.execute(f"CREATE TABLE slow_events AS SELECT {', '.join(prepare_sql.EVENT_COLUMNS)} FROM matched LIMIT 0")

    lines_per_file: dict[str, int] = {}
    bad_files: list[BadFile] = []
    units: list[_Unit] = []
    undecodable: dict[tuple[int, int], bytes] = {}  # (unit, row) -> original bytes of a line that is not UTF-8
    lock = threading.Lock()

    def insert_arrow_lines(unit: _Unit, cursor: duckdb.DuckDBPyConnection) -> None:
        """The unit cut into lines by Arrow, every line left for ``typed_sql``."""
        parts = [content_lines(unit.number, files[index], content, None, first_row + 1)
                 for index, content, first_row in zip(unit.files, unit.contents, unit.first_rows)]
        with lock:
            for part in parts:
                undecodable.update({(unit.number, row): raw for row, raw in part.undecodable.items()})
        cursor.register("unit_lines", pa.concat_tables([part.table for part in parts]))
        cursor.execute("INSERT INTO unproven SELECT source, line, raw FROM unit_lines")
        cursor.unregister("unit_lines")

    def scan(unit: _Unit) -> None:
        cursor = con.cursor()
        try:
            # The last line of a file ends at the end of the file.
            content = b"".join(part if part.endswith(b"\n") else part + b"\n" for part in unit.contents)
            unit.contents = []
            cursor.register("unit_table", matcher.result()(unit.number, content))
            cursor.execute(f"INSERT INTO matched BY NAME {prepare_sql.matched_sql('unit_table', 'catalog')}")
            cursor.execute(f"INSERT INTO unproven {prepare_sql.unmatched_sql('unit_table')}")
            cursor.unregister("unit_table")
            progress.update(unit.rows)
        finally:
            cursor.close()

    workers = settings.threads or os.cpu_count() or 1
    # ``workers`` units are matched at once (the matcher releases the GIL), each inserted by one DuckDB thread.
    con.execute("SET threads = 1")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare-read") as readers, \
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prepare-scan") as scanners:
        reading: deque[Future[tuple[bytes, str | None, int, bool]]] = deque()
        scanning: deque[Future[None]] = deque()
        batch: _Unit | None = None
        next_file = 0

        def submit(unit: _Unit, arrow: bool = False) -> None:
            units.append(unit)
            if arrow:
                cursor = con.cursor()
                try:
                    insert_arrow_lines(unit, cursor)
                finally:
                    cursor.close()
                unit.contents = []
                progress.update(unit.rows)
                return
            scanning.append(scanners.submit(scan, unit))
            # Bounds the contents held in memory. While the matcher loads (numba's ~1 s start-up, on one core), the
            # readers gunzip further ahead on the other; DuckDB's pool is still empty then.
            while len(scanning) > (workers if matcher.done() else LOADING_READ_AHEAD_UNITS):
                scanning.popleft().result()

        for index in range(len(files)):
            while next_file < len(files) and len(reading) < READ_AHEAD_FILES:
                reading.append(readers.submit(_read_counted, files[next_file]))
                next_file += 1
            content, error, n, utf8 = reading.popleft().result()
            lines_per_file[files[index]] = n
            if error is not None:
                bad_files.append(BadFile(files[index], error, n))
            if not n:
                continue
            if not utf8:
                if batch is not None:
                    submit(batch)
                    batch = None
                submit(_Unit(len(units), [index], [content], [0], n), arrow=True)
                continue
            if batch is None:
                batch = _Unit(len(units), [], [], [], 0)
            batch.files.append(index)
            batch.contents.append(content)
            batch.first_rows.append(batch.rows)
            batch.rows += n
            if sum(map(len, batch.contents)) >= UNIT_BYTES:
                submit(batch)
                batch = None
        if batch is not None:
            submit(batch)
        while scanning:
            scanning.popleft().result()
    con.execute(f"SET threads = {workers}")

    columns = ", ".join(("accepted", *prepare_sql.EVENT_COLUMNS))
    # The lines the matcher left (rare: bad lines, other layouts) through typed_sql, which reads any JSON layout.
    con.execute(f"CREATE TABLE rechecked AS {prepare_sql.typed_sql('unproven', 'catalog')}")
    con.execute("DROP TABLE unproven")
    con.execute(f"CREATE VIEW proven AS SELECT {columns} FROM matched WHERE accepted "
                f"UNION ALL SELECT {columns} FROM rechecked WHERE accepted")
    bad_by_file = {files.index(bad.uri): bad for bad in bad_files}
    _slow_path(con, files, units, undecodable, bad_by_file, quarantine)
    con.execute(f"CREATE VIEW events AS {prepare_sql.events_sql('proven', 'slow_events')}")
    start_us, end_us, cut_us = window.microseconds()
    con.execute(f"CREATE TABLE classified AS {prepare_sql.classified_sql(start_us, end_us, cut_us, 'events', 'catalog')}")
    con.execute("DROP VIEW events")
    con.execute("DROP VIEW proven")
    con.execute("DROP TABLE matched")
    con.execute("DROP TABLE rechecked")
    con.execute("DROP TABLE slow_events")

    outcomes = con.execute(prepare_sql.outcome_counts_sql("classified")).fetch_df()
    for reason, source, line, raw in _rows(con, prepare_sql.kept_rows_sql("classified")):
        file_index, file_line = units[source].locate(line - 1)
        kept.add(reason, None, files[file_index], file_line, raw)
    users = int(con.execute(prepare_sql.users_sql("classified")).fetchone()[0])
    # The results first become tables inside DuckDB's memory limit, ``classified`` is dropped, and only then are
    # they fetched, one split at a time: Python's copies (millions of interaction ids at scale) never sit beside a
    # full buffer pool. Insertion order is kept, so each result table (and its rows of a split) holds its query's
    # ORDER BY.
    con.execute("SET preserve_insertion_order = true")
    queries = split_queries(use_attributed_clicks)
    for name, sql in queries.items():
        con.execute(f"CREATE TABLE result_{name} AS {sql}")
    con.execute("DROP TABLE classified")
    splits = {part: split_result({name: con.execute(f"SELECT * FROM result_{name} WHERE holdout = {holdout}")
                                  .to_arrow_table() for name in queries}, outcomes, holdout)
              for part, holdout in SPLITS.items()}
    for name in queries:
        con.execute(f"DROP TABLE result_{name}")
    return engine_result(outcomes, splits, kept, users, lines_per_file, bad_files)


def _load_matcher(progress: Progress) -> Callable[[int, bytes], pa.Table]:
    """``prepare_canonical.canonical_table``, imported and its compiled code loaded: numba's start-up (~1 CPU-s,
    mostly holding the GIL) runs in a thread of its own while the reader threads gunzip the first files (without).
    Compiling it (after an install or a code change) takes ~15 s with no line read meanwhile: a note says so."""
    note = threading.Timer(MATCHER_NOTE_AFTER_SECONDS, progress.child("matcher").finish,
                           ["compiling (numba, ~15 s once after an install or a code change; cached after)"])
    note.daemon = True
    note.start()
    try:
        from steps import prepare_canonical

        prepare_canonical.load()
    finally:
        note.cancel()
    return prepare_canonical.canonical_table


def _slow_path(con: duckdb.DuckDBPyConnection, files: Sequence[str], units: list[_Unit],
               undecodable: dict[tuple[int, int], bytes], bad_by_file: dict[int, BadFile],
               quarantine: RecordWriter) -> None:
    """Lines neither fast path accepted, through the reference validator, in arrival order.

    Valid ones become ``slow_events`` rows; bad ones (and bad files, after their last line read) go to the quarantine.
    """
    rows: list[tuple] = []
    bad_files_left = sorted(bad_by_file.items())

    def quarantine_bad_files_before(file_index: int) -> None:
        while bad_files_left and bad_files_left[0][0] < file_index:
            quarantine.add_bad_file(bad_files_left.pop(0)[1])

    for source, line, raw in _rows(con, "SELECT source, line, raw FROM rechecked WHERE NOT accepted ORDER BY source, line"):
        file_index, file_line = units[source].locate(line - 1)
        quarantine_bad_files_before(file_index)
        original = undecodable.get((source, line)) or raw.encode("utf-8")
        try:
            event = parse_line(original)
        except InvalidEvent as invalid:
            quarantine.add(invalid.reason, invalid.detail, files[file_index], file_line, original)
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


SPLITS = {"train": False, "holdout": True}  # split name -> the ``holdout`` value of its rows


def split_queries(use_attributed_clicks: bool) -> dict[str, str]:
    """The read-only statements of steps/prepare_sql.py on ``classified`` that the splits' results come from, by
    the name ``split_result`` reads them under (an engine runs them: DuckDB as is, Spark transpiled)."""
    return {
        "pairs": prepare_sql.interactions_sql(use_attributed_clicks, "classified"),
        "totals": prepare_sql.app_totals_sql("classified"),
        "revenue": prepare_sql.revenue_rows_sql("classified"),
        "positives": prepare_sql.positive_counts_sql("classified"),
    }


def split_result(tables: dict[str, pa.Table], outcomes: pd.DataFrame, holdout: bool) -> SplitResult:
    """One split's results from the ``split_queries`` results (Arrow: their rows of this split, or of both) and the
    outcome counts (``outcome_counts_sql``)."""
    pairs, totals, revenue, positives = (tables[name].filter(pc.equal(tables[name]["holdout"], holdout))
                                         for name in ("pairs", "totals", "revenue", "positives"))
    interactions = interactions_frame(
        _shared_strings(pairs["user_id"]), _shared_strings(pairs["app_id"]), pairs["clicks"].to_numpy(),
        pairs["conversions"].to_numpy(), pairs["first_ts_us"].to_numpy(), pairs["last_ts_us"].to_numpy())
    app_ids = totals["app_id"].to_numpy()
    codes = pd.Index(app_ids).get_indexer(_shared_strings(revenue["app_id"]))
    app_totals = pd.DataFrame({
        "app_id": app_ids,
        **{name: totals[name].to_numpy() for name in ("impressions", "clicks", "conversions")},
        # Summed in arrival order (the rows' order), as the reference sums: the same floating-point totals.
        "revenue": np.bincount(codes, weights=revenue["revenue"].to_numpy(), minlength=len(app_ids)),
    })
    good = outcomes[(outcomes["outcome"] == prepare_sql.GOOD) & (outcomes["holdout"] == holdout)]
    by_kind = good.groupby("kind")["n"].sum()
    return SplitResult(
        interactions=interactions, app_totals=app_totals,
        events_by_type={name: int(by_kind.get(code, 0)) for code, name in enumerate(EVENT_TYPES)},
        positives=int(pc.sum(positives["positives"]).as_py() or 0),
        attributed_positives=int(pc.sum(positives["attributed_positives"]).as_py() or 0),
    )


def _shared_strings(column: pa.ChunkedArray) -> np.ndarray:
    """A string column as Python strings, one object per distinct value shared by its rows: a user's or an app's id
    repeats on many rows, and a str per row would cost ~55 bytes each (millions of rows at scale)."""
    if not len(column):
        return np.empty(0, dtype=object)
    encoded = column.combine_chunks().dictionary_encode()
    return encoded.dictionary.to_numpy(zero_copy_only=False)[encoded.indices.to_numpy()]


def engine_result(outcomes: pd.DataFrame, splits: dict[str, SplitResult], kept: RecordWriter, users: int,
                  lines_per_file: dict[str, int], bad_files: list[BadFile]) -> EngineResult:
    """What a SQL engine hands back, from the outcome counts (``outcome_counts_sql``: codes, named here)."""
    by_outcome = outcomes.groupby("outcome")["n"].sum()

    def total(outcome: int) -> int:
        return int(by_outcome.get(outcome, 0))

    return EngineResult(
        lines_read=sum(lines_per_file.values()) + len(bad_files), duplicates=total(prepare_sql.DUPLICATE),
        before_window=total(prepare_sql.BEFORE_WINDOW), after_window=total(prepare_sql.AFTER_WINDOW),
        kept_reasons=dict(kept.reasons), users=users, lines_per_file=lines_per_file, splits=splits,
        bad_files=bad_files,
    )
