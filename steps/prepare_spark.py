"""The Spark engine of PrepareFeedback (prepare_engine=spark): the SQL of steps/prepare_sql.py on a cluster.

The same statements as the DuckDB engine (steps/prepare_duckdb.py), split where the work splits:

1. Per file, in Spark tasks (``mapInArrow``): the file is read and cut into lines exactly as the
   DuckDB engine does (``prepare_duckdb.file_lines``: the storage layer, so ``file://`` locally and
   ``s3://`` on SageMaker; a truncated gzip keeps its complete lines and is reported as a bad file).
   The per-line fast path ``typed_sql`` runs on those lines in an in-process DuckDB, in the dialect
   it is written in: it is row-local, and its JSON functions have no Spark equivalent. The lines it
   does not accept go through the reference validator ``models.events.parse_line`` in the same task,
   so a bad line gets the reference's reason code.
2. Across the cluster, in Spark SQL: global dedupe by event_id, the window, the kept outcome and the
   aggregates (``classified_sql`` and the read-only queries), transpiled from DuckDB's dialect to
   Spark's by sqlglot. No event id is held in Python; only the results (interactions, per-app totals,
   quarantined and kept lines) come back to the driver, which writes them as steps.prepare does.

Locally (the local runner, tests, bench) Spark runs in local mode (steps/spark_session.py); on
SageMaker, PySparkProcessor's ``smspark-submit`` runs ``steps/prepare_spark_job.py`` on a cluster of
instances (a file apart, because the job calls steps.prepare, which calls this engine).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from models.events import InvalidEvent, parse_line
from models.progress import Progress
from steps import prepare_sql
from steps.prepare_duckdb import SPLITS, engine_result, file_lines, split_queries, split_result
from steps.prepare_io import BadFile, EngineResult, RecordWriter, Window

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

# One row per event, quarantined line or file (``record``), so one task pass yields all three.
RECORD_SCHEMA = pa.schema([
    ("record", pa.string()),  # event | bad_line | file
    ("source", pa.int32()), ("line", pa.int64()),
    ("event_id", pa.string()), ("kind", pa.int8()), ("ts_us", pa.int64()), ("app_id", pa.string()),
    ("user_id", pa.string()), ("positive", pa.bool_()), ("attributed", pa.bool_()), ("revenue", pa.float64()),
    ("raw", pa.string()),
    ("reason", pa.string()), ("detail", pa.string()),  # bad_line: parse_line's reason; file: the read error
    ("lines", pa.int64()),  # file: its complete lines
])
_RECORD_DDL = ("record string, source int, line bigint, event_id string, kind tinyint, ts_us bigint, app_id string, "
               "user_id string, positive boolean, attributed boolean, revenue double, raw string, reason string, "
               "detail string, lines bigint")
TASKS_PER_CORE = 2
FILES_PER_QUERY = 8  # files per DuckDB query in a task (Firehose objects are up to 128 MB: bounded memory)


@lru_cache(maxsize=None)
def spark_sql(duckdb_sql: str) -> str:
    """A statement of steps/prepare_sql.py in Spark SQL's dialect."""
    import sqlglot

    return sqlglot.transpile(duckdb_sql, read="duckdb", write="spark")[0]


def _batch_records(batch: list[tuple[int, str]], catalog: pa.Table) -> pa.Table:
    """Some files' events, bad lines and file records (``RECORD_SCHEMA``): the per-file half of the engine.

    One DuckDB query for the whole batch: the fast path's fixed cost (~0.1 s) is per query, not per line.
    """
    import duckdb

    files = [file_lines(source, uri) for source, uri in batch]
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False,
                                 "threads": 1})  # Spark runs the tasks in parallel
    try:
        con.register("raw_lines", pa.concat_tables([lines.table for lines in files]))
        con.register("catalog", catalog)
        typed = con.execute(prepare_sql.typed_sql("raw_lines", "catalog")).arrow()
    finally:
        con.close()
    if isinstance(typed, pa.RecordBatchReader):
        typed = typed.read_all()
    undecodable = {(lines.source, line): raw for lines in files for line, raw in lines.undecodable.items()}
    is_accepted = pc.fill_null(typed["accepted"], False)
    accepted = typed.filter(is_accepted)
    fast = _widen(pa.table({
        "record": pa.array(["event"] * accepted.num_rows, pa.string()),
        **{name: accepted[name].cast(RECORD_SCHEMA.field(name).type) for name in prepare_sql.EVENT_COLUMNS},
    }))
    rows: list[dict] = []
    for row in typed.filter(pc.invert(is_accepted)).select(["source", "line", "raw"]).to_pylist():
        # The slow path: the reference validator on the line's original bytes.
        source, line = row["source"], row["line"]
        original = undecodable.get((source, line)) or row["raw"].encode("utf-8")
        try:
            event = parse_line(original)
        except InvalidEvent as invalid:
            rows.append({"record": "bad_line", "source": source, "line": line, "reason": invalid.reason,
                         "detail": invalid.detail, "raw": original.decode("utf-8", errors="replace")})
            continue
        rows.append(dict(zip(("record", *prepare_sql.EVENT_COLUMNS),
                             ("event", source, line, *prepare_sql.event_row(event), row["raw"]))))
    rows += [{"record": "file", "source": lines.source, "lines": lines.table.num_rows, "detail": lines.error}
             for lines in files]
    return pa.concat_tables([fast, pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)])


def _widen(table: pa.Table) -> pa.Table:
    """A table with some of RECORD_SCHEMA's columns, the others null."""
    n = table.num_rows
    return pa.table([table[f.name] if f.name in table.column_names else pa.nulls(n, f.type) for f in RECORD_SCHEMA],
                    schema=RECORD_SCHEMA)


def _records(spark: "SparkSession", files: Sequence[str], app_ids: np.ndarray) -> "DataFrame":
    """Every file's records, computed once in parallel tasks and kept (memory, then disk) for the SQL."""
    from pyspark import StorageLevel

    catalog = spark.sparkContext.broadcast(list(app_ids))

    def per_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        table = pa.table({"app_id": pa.array(catalog.value, pa.string())})
        for batch in batches:
            pairs = list(zip(batch["source"].to_pylist(), batch["uri"].to_pylist()))
            for start in range(0, len(pairs), FILES_PER_QUERY):
                yield from _batch_records(pairs[start:start + FILES_PER_QUERY], table).to_batches()

    # A few tasks per core, files in arrival order: enough to balance, few enough to keep Python workers busy.
    tasks = max(1, min(len(files), spark.sparkContext.defaultParallelism * TASKS_PER_CORE))
    inputs = spark.createDataFrame(spark.sparkContext.parallelize(list(enumerate(files)), tasks),
                                   "source int, uri string")
    return inputs.mapInArrow(per_task, _RECORD_DDL).persist(StorageLevel.MEMORY_AND_DISK)


def read(files: Sequence[str], window: Window, app_ids: np.ndarray, quarantine: RecordWriter, kept: RecordWriter,
         use_attributed_clicks: bool, progress: Progress) -> EngineResult:
    """Read, validate, dedupe and aggregate the window's files with Spark (see the module docstring).

    Runs on the active session (the cluster's, made by ``main``), else on the local-mode one.
    """
    from pyspark.sql import SparkSession

    from steps.spark_session import local_session

    spark = SparkSession.getActiveSession() or local_session()
    records = _records(spark, files, app_ids)
    try:
        return _read(spark, records, files, window, app_ids, quarantine, kept, use_attributed_clicks, progress)
    finally:
        records.unpersist()
        for view in ("events", "catalog", "classified"):
            spark.catalog.dropTempView(view)


def _read(spark: "SparkSession", records: "DataFrame", files: Sequence[str], window: Window, app_ids: np.ndarray,
          quarantine: RecordWriter, kept: RecordWriter, use_attributed_clicks: bool, progress: Progress) -> EngineResult:
    file_rows = records.where("record = 'file'").select("source", "lines", "detail").collect()
    lines_per_file: dict[str, int] = {}
    bad_files: dict[int, BadFile] = {}
    for source, lines, error in sorted(file_rows):
        lines_per_file[files[source]] = int(lines)
        if error is not None:
            bad_files[int(source)] = BadFile(files[source], error, int(lines))
        progress.update(int(lines))

    # The quarantine in arrival order; a bad file's record follows its last line read, as in the other engines.
    bad_left = sorted(bad_files.items())
    for source, line, reason, detail, raw in records.where("record = 'bad_line'").select(
            "source", "line", "reason", "detail", "raw").orderBy("source", "line").toLocalIterator():
        while bad_left and bad_left[0][0] < source:
            quarantine.add_bad_file(bad_left.pop(0)[1])
        quarantine.add(reason, detail, files[source], line, raw)
    for _, bad in bad_left:
        quarantine.add_bad_file(bad)

    records.where("record = 'event'").select(*prepare_sql.EVENT_COLUMNS).createOrReplaceTempView("events")
    spark.createDataFrame(pd.DataFrame({"app_id": list(app_ids)}), "app_id string").createOrReplaceTempView("catalog")
    start_us, end_us, cut_us = window.microseconds()
    classified = spark.sql(spark_sql(prepare_sql.classified_sql(start_us, end_us, cut_us, "events", "catalog")))
    classified.persist().createOrReplaceTempView("classified")
    try:
        outcomes = spark.sql(spark_sql(prepare_sql.outcome_counts_sql("classified"))).toPandas()
        for reason, source, line, raw in spark.sql(spark_sql(prepare_sql.kept_rows_sql("classified"))).toLocalIterator():
            kept.add(reason, None, files[source], line, raw)
        tables = {name: _arrow(spark.sql(spark_sql(sql))) for name, sql in split_queries(use_attributed_clicks).items()}
        splits = {part: split_result(tables, outcomes, holdout) for part, holdout in SPLITS.items()}
        users = int(spark.sql(spark_sql(prepare_sql.users_sql("classified"))).first()[0])
    finally:
        classified.unpersist()
    return engine_result(outcomes, splits, kept, users, lines_per_file, list(bad_files.values()))


def _arrow(frame: "DataFrame") -> pa.Table:
    """A (driver-sized) result as an Arrow table with Spark's column types (pyspark 3.5 has no ``toArrow``)."""
    from pyspark.sql.pandas.types import to_arrow_schema

    return pa.Table.from_pandas(frame.toPandas(), schema=to_arrow_schema(frame.schema), preserve_index=False)
