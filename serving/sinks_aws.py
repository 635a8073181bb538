"""Feedback sinks for AWS: Kinesis Data Streams (``put_records``) and Firehose (``put_record_batch``).

Both implement serving.sinks.FeedbackSink: ``write`` delivers every event or raises ``SinkError``.
Each event is one record of newline-terminated JSON, so Firehose's concatenation of records is
exactly the JSON-lines layout prepare reads. Batches respect the API limits (500 records and
5 MB per PutRecords, 500 records and 4 MiB per PutRecordBatch). Both APIs can accept a batch
and still reject some of its records (throttling, internal errors): exactly those records are
sent again, with exponential backoff, until all are in or the attempts run out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from serving.sinks import SinkError, encode_lines


@dataclass(frozen=True)
class BatchLimits:
    records: int
    bytes: int
    record_bytes: int


KINESIS_LIMITS = BatchLimits(records=500, bytes=5 * 1024 * 1024, record_bytes=1024 * 1024)
FIREHOSE_LIMITS = BatchLimits(records=500, bytes=4 * 1024 * 1024, record_bytes=1000 * 1024)


def batches(records: Sequence[dict[str, Any]], limits: BatchLimits, size: Callable[[dict[str, Any]], int]) -> list[list[dict[str, Any]]]:
    """Split records into consecutive batches within the record-count and byte limits."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    current_bytes = 0
    for record in records:
        record_size = size(record)
        if record_size > limits.record_bytes:
            raise SinkError(f"one event is {record_size:,} bytes; a record may hold at most {limits.record_bytes:,}")
        if current and (len(current) == limits.records or current_bytes + record_size > limits.bytes):
            out.append(current)
            current, current_bytes = [], 0
        current.append(record)
        current_bytes += record_size
    if current:
        out.append(current)
    return out


class _RetryingSink:
    """Shared delivery loop: send a batch, re-send exactly the records the service rejected."""

    limits: BatchLimits
    name: str

    def __init__(self, max_attempts: int = 6, base_delay: float = 0.1, max_delay: float = 5.0,
                 sleep: Callable[[float], None] = time.sleep):
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.sleep = sleep

    def _records(self, events: Sequence[dict]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def _size(self, record: dict[str, Any]) -> int:
        raise NotImplementedError

    def _put(self, records: list[dict[str, Any]]) -> list[str | None]:
        """Send one batch; the error code of each record, None for the ones accepted."""
        raise NotImplementedError

    def write(self, events: Sequence[dict]) -> None:
        if not events:
            return
        for batch in batches(self._records(events), self.limits, self._size):
            self._deliver(batch)

    def _deliver(self, batch: list[dict[str, Any]]) -> None:
        pending = batch
        last_codes: list[str] = []
        for attempt in range(self.max_attempts):
            if attempt:
                self.sleep(min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))
            try:
                codes = self._put(pending)
            except (BotoCoreError, ClientError) as error:  # the whole call failed: retry every pending record
                codes = [f"{type(error).__name__}: {error}"] * len(pending)
            pending_codes = [(record, code) for record, code in zip(pending, codes) if code]
            if not pending_codes:
                return
            pending = [record for record, _ in pending_codes]
            last_codes = sorted({str(code) for _, code in pending_codes})
        raise SinkError(
            f"{self.name}: {len(pending)} of {len(batch)} events still rejected after {self.max_attempts} attempts "
            f"({', '.join(last_codes)[:300]})"
        )

    def close(self) -> None:
        return None


class KinesisSink(_RetryingSink):
    """Events to a Kinesis data stream, partitioned by app id (one app's events stay in order)."""

    limits = KINESIS_LIMITS

    def __init__(self, stream_name: str, client: Any = None, **retry: Any):
        super().__init__(**retry)
        self.stream_name = stream_name
        self.name = f"kinesis://{stream_name}"
        self.client = client or boto3.client("kinesis")

    def _records(self, events: Sequence[dict]) -> list[dict[str, Any]]:
        return [{"Data": encode_lines([event]), "PartitionKey": str(event.get("app_id") or event["event_id"])[:256]}
                for event in events]

    def _size(self, record: dict[str, Any]) -> int:
        return len(record["Data"]) + len(record["PartitionKey"].encode())

    def _put(self, records: list[dict[str, Any]]) -> list[str | None]:
        response = self.client.put_records(StreamName=self.stream_name, Records=records)
        return [entry.get("ErrorCode") for entry in response["Records"]]


class FirehoseSink(_RetryingSink):
    """Events to a Firehose delivery stream (which writes them to S3 in the feedback layout)."""

    limits = FIREHOSE_LIMITS

    def __init__(self, delivery_stream: str, client: Any = None, **retry: Any):
        super().__init__(**retry)
        self.delivery_stream = delivery_stream
        self.name = f"firehose://{delivery_stream}"
        self.client = client or boto3.client("firehose")

    def _records(self, events: Sequence[dict]) -> list[dict[str, Any]]:
        return [{"Data": encode_lines([event])} for event in events]

    def _size(self, record: dict[str, Any]) -> int:
        return len(record["Data"])

    def _put(self, records: list[dict[str, Any]]) -> list[str | None]:
        response = self.client.put_record_batch(DeliveryStreamName=self.delivery_stream, Records=records)
        return [entry.get("ErrorCode") for entry in response["RequestResponses"]]


def open_sink(uri: str) -> KinesisSink | FirehoseSink:
    """``kinesis://stream`` or ``firehose://delivery-stream``."""
    scheme, _, name = uri.partition("://")
    if not name:
        raise SinkError(f"feedback URI '{uri}' names no stream; use kinesis://<stream> or firehose://<delivery-stream>")
    if scheme == "kinesis":
        return KinesisSink(name)
    if scheme == "firehose":
        return FirehoseSink(name)
    raise SinkError(f"feedback URI '{uri}' is not kinesis:// or firehose://")
