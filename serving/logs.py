"""Server logs: readable text lines on a terminal, one JSON object a line otherwise (CloudWatch, a
container's log driver and `jq` read them as they are).

The format follows where stderr goes (a TTY: text, else JSON); ``APPSIM_LOG_FORMAT=json|text``
overrides it, e.g. JSON in a terminal to try a log pipeline, or text in a CI log.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any, Literal, Mapping

import orjson

from serving.settings import SettingsError

LOG_FORMAT_ENV = "APPSIM_LOG_FORMAT"
LOG_FORMATS = ("json", "text")
LogFormat = Literal["json", "text"]
TEXT_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s [%(process)d] %(message)s"


class LogFormatError(SettingsError):
    """``APPSIM_LOG_FORMAT`` names no format."""


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    """``2026-11-29 08:12:10.123Z INFO    appsim.serving [4242] message`` (UTC, like the JSON lines)."""

    converter = time.gmtime

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, datefmt="%Y-%m-%d %H:%M:%S")


def log_format(environ: Mapping[str, str] = os.environ, stream: IO[str] | None = None) -> LogFormat:
    """``APPSIM_LOG_FORMAT`` when set, else text when ``stream`` (default stderr) is a terminal, else JSON."""
    chosen = environ.get(LOG_FORMAT_ENV, "").strip().lower()
    if chosen:
        if chosen not in LOG_FORMATS:
            raise LogFormatError(f"{LOG_FORMAT_ENV}={environ[LOG_FORMAT_ENV]!r} is not a log format: set it to "
                                 f"{' or '.join(LOG_FORMATS)}, or unset it (text on a terminal, JSON otherwise)")
        return chosen  # type: ignore[return-value]
    stream = stream if stream is not None else sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "text" if isatty is not None and isatty() else "json"


def log_config(level: str = "info", format: LogFormat | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and appsim on stderr, in ``format`` (default: ``log_format()``)."""
    level = level.upper()
    formatter = {"json": "serving.logs.JsonFormatter", "text": "serving.logs.TextFormatter"}[format or log_format()]
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"appsim": {"()": formatter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "appsim", "stream": "ext://sys.stderr"}},
        "loggers": {
            "appsim": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level, "propagate": False},
        },
    }
