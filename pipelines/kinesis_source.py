"""Read a Kinesis data stream directly into the store's feedback layout, for prepare to read.

The alternative to a Firehose delivery stream: every shard is read from just after its
checkpointed sequence number (from the start of retention the first time), and records are
written as gzip JSON-lines objects under ``<store>/feedback/YYYY/MM/DD/HH/`` by their arrival
hour, exactly as Firehose would. The checkpoint (``<store>/checkpoints/kinesis-<stream>.json``)
is rewritten after each object, so no record is read twice; an object is named after its shard
and first sequence number, so a pull that dies between the two writes rewrites the same object
instead of adding a copy.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import groupby
from typing import Any

import boto3

from models import layout, storage

GET_RECORDS_LIMIT = 10_000


@dataclass(frozen=True)
class PullResult:
    records: int
    objects: int
    shards: int
    checkpoint_uri: str


def checkpoint_uri(store: str, stream: str) -> str:
    # Outside feedback/: prepare reads every file there as events.
    return storage.join(store, "checkpoints", f"kinesis-{stream}.json")


def _arrival_hour(record: dict[str, Any]) -> datetime:
    arrived = record.get("ApproximateArrivalTimestamp") or datetime.now(timezone.utc)
    return arrived.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _object_uri(store: str, stream: str, shard_id: str, hour: datetime, first_sequence: str) -> str:
    name = f"kinesis-{stream}-{shard_id}-{first_sequence}.gz"
    return layout.feedback_object_uri(layout.feedback_uri(store), hour, name)


def _lines(records: list[dict[str, Any]]) -> bytes:
    # Producers put newline-terminated JSON (serving/sinks_aws.py); tolerate ones that did not.
    return b"".join(r["Data"] if r["Data"].endswith(b"\n") else r["Data"] + b"\n" for r in records)


def _shards(client: Any, stream: str) -> list[str]:
    shards: list[str] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        shards += [s["ShardId"] for s in page["Shards"]]
        if not page.get("NextToken"):
            return shards
        kwargs = {"NextToken": page["NextToken"]}


def pull(stream: str, store: str, *, client: Any = None, region: str | None = None) -> PullResult:
    """Copy every record not read before from ``stream`` into ``store``'s feedback folders."""
    client = client or boto3.client("kinesis", region_name=region)
    checkpoint_at = checkpoint_uri(store, stream)
    checkpoint: dict[str, str] = storage.read_json(checkpoint_at)["shards"] if storage.exists(checkpoint_at) else {}
    shard_ids = _shards(client, stream)
    total_records = total_objects = 0
    for shard_id in shard_ids:
        if shard_id in checkpoint:
            iterator_args = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "StartingSequenceNumber": checkpoint[shard_id]}
        else:
            iterator_args = {"ShardIteratorType": "TRIM_HORIZON"}
        iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard_id, **iterator_args)["ShardIterator"]
        while iterator:
            response = client.get_records(ShardIterator=iterator, Limit=GET_RECORDS_LIMIT)
            records = response["Records"]
            for hour, group in groupby(records, key=_arrival_hour):
                chunk = list(group)
                uri = _object_uri(store, stream, shard_id, hour, chunk[0]["SequenceNumber"])
                storage.write_bytes(uri, gzip.compress(_lines(chunk), mtime=0))
                checkpoint[shard_id] = chunk[-1]["SequenceNumber"]
                storage.write_json(checkpoint_at, {"stream": stream, "shards": checkpoint})
                total_records += len(chunk)
                total_objects += 1
            if not records and response.get("MillisBehindLatest", 0) == 0:
                break  # caught up with the open end of the shard
            iterator = response.get("NextShardIterator")  # None once a closed shard is read to its end
    return PullResult(total_records, total_objects, len(shard_ids), checkpoint_at)
