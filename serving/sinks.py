"""Where prediction and feedback events go: the sink protocol and the Firehose-layout file sink.

A sink takes a batch of JSON-ready event dicts and either delivers all of them or raises
``SinkError``; it encodes the whole batch before delivering any of it (so an event that cannot be
encoded fails the write before anything is sent, and the batcher rejects just that event); the batcher (``serving/batcher.py``) spills a failed batch to local disk and
replays it later, so a sink never has to buffer or retry by itself.

- ``FirehoseFileSink``: gzip JSON-lines objects under ``<feedback>/YYYY/MM/DD/HH/``, exactly
  what Firehose delivers to S3, on any store URI (a local folder or ``s3://``), so prepare
  reads the embedded mode's feedback and the AWS mode's the same way.
- Kinesis Data Streams / Firehose sinks live in ``serving/sinks_aws.py`` (boto3), chosen by a
  ``kinesis://stream`` or ``firehose://stream`` feedback URI in ``serving/sink_backends.py``
  (``open_sink``), which imports the backends, so no backend imports back (no cycle).
"""

from __future__ import annotations

import gzip
import os
import socket
import uuid
from datetime import datetime, timezone
from typing import Callable, Protocol, Sequence

import orjson

from models import layout, storage


class SinkError(RuntimeError):
    """A batch of events the sink could not deliver (the batcher spills and replays it)."""


class FeedbackSink(Protocol):
    def write(self, events: Sequence[dict]) -> None:
        """Deliver every event (JSON-ready dicts) or raise ``SinkError``."""

    def close(self) -> None:
        """Release connections; called once, after the last write."""


def encode_line(event: dict) -> bytes:
    """One event as a JSON line (newline-terminated); orjson's JSONEncodeError (a TypeError) when it cannot
    be encoded, e.g. a string holding a lone surrogate."""
    return orjson.dumps(event) + b"\n"


def encode_lines(events: Sequence[dict]) -> bytes:
    """Newline-joined JSON objects, one event a line (Firehose's record framing)."""
    return b"".join(map(encode_line, events))


class FirehoseFileSink:
    """One gzip JSON-lines object per batch, in Firehose's hour folders and naming."""

    def __init__(self, feedback_uri: str, stream_name: str = "appsim-serving",
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.feedback_uri = storage.normalize(feedback_uri)
        # Host and pid in the name: several workers and replicas write the same folders.
        self.stream_name = f"{stream_name}-{socket.gethostname()}-{os.getpid()}"
        self.clock = clock

    def object_uri(self, received: datetime) -> str:
        # Firehose's object names: <stream>-<version>-YYYY-MM-DD-HH-MM-SS-<uuid>.
        name = f"{self.stream_name}-1-{received:%Y-%m-%d-%H-%M-%S}-{uuid.uuid4()}.gz"
        return layout.feedback_object_uri(self.feedback_uri, received, name)

    def write(self, events: Sequence[dict]) -> None:
        if not events:
            return
        uri = self.object_uri(self.clock().astimezone(timezone.utc))
        # Level 1: 10x less CPU than gzip's default 9 on event batches, for files 10% larger (measured on
        # 500 prediction events: 1.8 ms vs 17.9 ms, 111 KB vs 101 KB); this runs beside the request path.
        body = gzip.compress(encode_lines(events), compresslevel=1, mtime=0)
        try:
            storage.write_bytes(uri, body)
        except Exception as error:  # any storage failure: the batch must be spilled, not lost
            raise SinkError(f"could not write {len(events)} events to {uri}: {error}") from error

    def close(self) -> None:
        return None
