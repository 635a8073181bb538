"""What every PrepareFeedback engine shares: the window, its files, reading them, and where lines go.

- ``Window``: the window, the split's cut, and (through ``models.layout``, the one definition of
  the hour folders and of how late an event may arrive) which arrival hours it reads.
- ``read_file``: a feedback object's bytes, gunzipped when its name ends in ``.gz``. A file that is not
  a readable gzip (truncated: EOFError; not gzip or corrupt: zlib-ng's errors, worded as zlib's) is *data*, not a
  crash: the complete lines decompressed before the break are kept and read like any others, the rest
  is lost, and the file is reported as a ``BadFile`` that prepare quarantines by name and counts.
- ``RecordWriter``: the quarantine (bad lines and bad files, with reason, source and line) and the kept
  file (valid events prepare keeps but does not train on), deterministic gzip JSON lines.
- ``EngineResult``: what an engine (the pure-Python reference, DuckDB, Spark) hands back to
  ``steps.prepare.run``, which turns it into the manifest and the tables.
"""

from __future__ import annotations

import gzip
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import numpy as np
import orjson
import pandas as pd
from zlib_ng import zlib_ng

from models import dataset, layout, storage
from models.events import format_ts

RAW_LINE_LIMIT = 2000  # characters of a bad line kept in the quarantine
GUNZIP_BLOCK = 1 << 20  # compressed bytes per decompress call: how much of a corrupt file's tail can be lost
BAD_FILE_REASON = "unreadable_file"


class PrepareError(RuntimeError):
    """PrepareFeedback cannot produce valid prepared data; the manifest says why."""


class InvalidWindow(PrepareError, ValueError):
    """window_days or holdout_fraction out of range."""


@dataclass(frozen=True)
class Window:
    start: datetime
    end: datetime
    cut: datetime

    @classmethod
    def ending_at(cls, window_end: datetime, window_days: int, holdout_fraction: float) -> "Window":
        if window_days < 1:
            raise InvalidWindow(f"window_days must be at least 1, not {window_days}")
        if not 0.0 < holdout_fraction < 1.0:
            raise InvalidWindow(f"holdout_fraction must be between 0 and 1 (exclusive), not {holdout_fraction}")
        end = window_end.replace(tzinfo=timezone.utc) if window_end.tzinfo is None else window_end.astimezone(timezone.utc)
        return cls(end - timedelta(days=window_days), end, end - timedelta(days=holdout_fraction * window_days))

    def arrival_hours(self) -> list[datetime]:
        """The hour folders that can hold this window's events (``models.layout.arrival_hours``)."""
        return layout.arrival_hours(self.start, self.end)

    def microseconds(self) -> tuple[int, int, int]:
        """(start, end, cut) as UTC epoch microseconds, the unit events are compared in."""
        return epoch_us(self.start), epoch_us(self.end), epoch_us(self.cut)

    def to_json(self) -> dict[str, str]:
        return {"start": format_ts(self.start), "end": format_ts(self.end), "cut": format_ts(self.cut)}


def epoch_us(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


@dataclass(frozen=True)
class BadFile:
    """A feedback object that could not be read to its end."""

    uri: str
    error: str  # the exception's type and message
    lines_kept: int = 0  # complete lines decompressed before the break (read as usual)

    @property
    def detail(self) -> str:
        return (f"{self.error}; the {self.lines_kept:,} complete lines before the break were read, the rest of "
                "the file is lost: re-deliver it from the producer (Firehose backup / source) if it matters")


def read_file(uri: str) -> tuple[bytes, str | None]:
    """A feedback object's content (gunzipped for ``.gz``) and, when it breaks, the error.

    On a break the content is cut after its last newline: a line the break cut short is not a line.
    Concatenated gzip members (Firehose may append) are read one after another, as gzip.open does.
    """
    data = storage.read_bytes(uri)
    if not uri.endswith(".gz"):
        return data, None
    out: list[bytes] = []
    error: str | None = None
    try:
        while data:
            decompressor = zlib_ng.decompressobj(wbits=31)
            for offset in range(0, len(data), GUNZIP_BLOCK):
                out.append(decompressor.decompress(data[offset:offset + GUNZIP_BLOCK]))
                if decompressor.eof:
                    break
            if not decompressor.eof:
                raise EOFError("Compressed file ended before the end-of-stream marker was reached")
            data = decompressor.unused_data.lstrip(b"\x00")  # gzip.open also skips zero padding
    except (EOFError, zlib_ng.error) as caught:
        error = f"{type(caught).__name__}: {caught}"
    content = b"".join(out)
    if error is not None:
        content = content[:content.rfind(b"\n") + 1]
    return content, error


def split_lines(content: bytes) -> list[bytes]:
    """Lines as storage.iter_lines yields them: split at newlines, trailing carriage returns dropped."""
    lines = content.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return [line.rstrip(b"\r") for line in lines]


class RecordWriter:
    """Streams records about lines (why, where, the raw text) to a gzip JSON-lines file (deterministic bytes)."""

    def __init__(self, uri: str, stack: ExitStack, raw_limit: int | None = None):
        handle = stack.enter_context(storage.open_uri(uri, "wb"))
        # mtime=0 and no file name in the header: the same records give the same bytes.
        self._out = stack.enter_context(gzip.GzipFile(filename="", fileobj=handle, mode="wb", compresslevel=6, mtime=0))
        self._raw_limit = raw_limit
        self.reasons: Counter[str] = Counter()

    def add(self, reason: str, detail: str | None, source: str, line_number: int, raw: bytes | str) -> None:
        text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
        record: dict = {"reason": reason}
        if detail is not None:
            record["detail"] = detail
        record |= {"source": source, "line": line_number}
        if self._raw_limit is None:
            record["raw"] = text
        else:
            record |= {"raw": text[:self._raw_limit], "raw_truncated": len(text) > self._raw_limit}
        self._out.write(orjson.dumps(record) + b"\n")
        self.reasons[reason] += 1

    def add_bad_file(self, bad: BadFile) -> None:
        """A file counts as one quarantined unit; ``line`` is where the break is (the first line not read)."""
        self.add(BAD_FILE_REASON, bad.detail, bad.uri, bad.lines_kept + 1, b"")

    @property
    def count(self) -> int:
        return sum(self.reasons.values())


@dataclass
class SplitResult:
    """One time split's aggregates, as every engine must produce them (exact values, reference dtypes)."""

    interactions: pd.DataFrame  # models.dataset.INTERACTION_COLUMNS, sorted by (user_id, app_id)
    app_totals: pd.DataFrame  # app_id (sorted), impressions, clicks, conversions, revenue: apps seen in the split
    events_by_type: dict[str, int]
    positives: int
    attributed_positives: int


@dataclass
class EngineResult:
    lines_read: int  # lines of every file, plus one per bad file (its unreadable rest)
    duplicates: int
    before_window: int
    after_window: int
    kept_reasons: dict[str, int]
    users: int
    lines_per_file: dict[str, int]
    splits: dict[str, SplitResult]  # "train", "holdout"
    bad_files: list[BadFile] = field(default_factory=list)

    @property
    def good(self) -> int:
        return sum(sum(split.events_by_type.values()) for split in self.splits.values())


def interactions_frame(user_ids: np.ndarray, app_ids: np.ndarray, clicks: np.ndarray, conversions: np.ndarray,
                       first_us: np.ndarray, last_us: np.ndarray) -> pd.DataFrame:
    """The interactions table exactly as written (one definition of its dtypes for every engine)."""
    return pd.DataFrame({
        "user_id": np.asarray(user_ids, dtype=object),
        "app_id": np.asarray(app_ids, dtype=object),
        "clicks": np.asarray(clicks, dtype=np.int64),
        "conversions": np.asarray(conversions, dtype=np.int64),
        "first_ts": _timestamps(np.asarray(first_us, dtype=np.int64)),
        "last_ts": _timestamps(np.asarray(last_us, dtype=np.int64)),
    }, columns=list(dataset.INTERACTION_COLUMNS))


def _timestamps(epoch_us: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(epoch_us.astype("datetime64[us]")).tz_localize("UTC")
