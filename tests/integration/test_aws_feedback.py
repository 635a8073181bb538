"""Feedback on AWS, against a moto server: the Kinesis and Firehose sinks, the Kinesis reader,
and prepare reading what they delivered to S3, with nothing lost or doubled."""

from __future__ import annotations

import io
import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import boto3
import pandas as pd
import pytest

from models import layout, storage
from pipelines import kinesis_source
from models.events import ClickEvent
from serving.batcher import EventBatcher, SpillDir
from serving.sinks import SinkError, encode_line
from serving.sinks_aws import FIREHOSE_LIMITS, KINESIS_LIMITS, FirehoseSink, KinesisSink, batches
from steps import prepare
from tests.serving.helpers import wait_for

APPS = [f"app-{i}" for i in range(6)]
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def clicks(n: int) -> list[dict[str, Any]]:
    """n click events spread over the last 40 hours, as the serving batcher hands them to a sink."""
    return [
        ClickEvent(event_id=f"click-{uuid.uuid4().hex}", ts=NOW - timedelta(minutes=47 * i % 2400),
                   app_id=APPS[i % len(APPS)], campaign_id=f"camp-{i % 3}", partner_id="partner-1",
                   user_id=f"user-{i % 9}", clicked=i % 4 != 0).to_json_dict()
        for i in range(n)
    ]


@pytest.fixture
def store(aws_server_env) -> str:
    bucket = f"appsim-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    catalog = pd.DataFrame({
        "app_id": APPS, "name": APPS, "category": ["games", "finance"] * 3, "region": ["us"] * 6,
        "pricing_model": ["free"] * 6, "features": [["ads"]] * 6, "description": ["an app"] * 6,
        "avg_rating": [4.0] * 6,
    })
    buffer = io.BytesIO()
    catalog.to_parquet(buffer, index=False)
    storage.write_bytes(layout.catalog_uri(store), buffer.getvalue())
    return store


def unique(name: str) -> str:
    """Stream names are per test: the moto server lives for the whole session."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def prepared_counts(store: str) -> dict[str, Any]:
    manifest = prepare.run(
        layout.feedback_uri(store), layout.catalog_uri(store), storage.join(store, "runs", "test", "prepare"),
        window_end=NOW + timedelta(hours=1), window_days=3, holdout_fraction=0.25, max_bad_fraction=0.0,
    )
    return manifest["counts"]


def test_kinesis_sink_to_stream_to_store_then_prepare(store):
    stream = unique("feedback")
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=2)
    events = clicks(120)
    sink = KinesisSink(stream, client=kinesis, sleep=lambda s: None)
    sink.write(events[:70])
    first = kinesis_source.pull(stream, store, client=kinesis)
    sink.write(events[70:])
    second = kinesis_source.pull(stream, store, client=kinesis)
    again = kinesis_source.pull(stream, store, client=kinesis)  # nothing new: the checkpoint holds
    assert (first.records, second.records, again.records) == (70, 50, 0)
    assert first.shards == 2
    counts = prepared_counts(store)
    assert (counts["lines_read"], counts["good"], counts["duplicates"], counts["quarantined"]) == (120, 120, 0, 0)


def test_firehose_sink_delivers_to_the_feedback_layout_then_prepare(store):
    stream = unique("feedback")
    bucket, prefix = store[len("s3://"):].split("/", 1)
    firehose = boto3.client("firehose")
    firehose.create_delivery_stream(
        DeliveryStreamName=stream, DeliveryStreamType="DirectPut",
        ExtendedS3DestinationConfiguration={
            "RoleARN": "arn:aws:iam::123456789012:role/firehose", "BucketARN": f"arn:aws:s3:::{bucket}",
            "Prefix": f"{prefix}/feedback/",
        },
    )
    events = clicks(90)
    sink = FirehoseSink(stream, client=firehose, sleep=lambda s: None)
    sink.write(events[:40])
    sink.write(events[40:])
    objects = storage.list_files(layout.feedback_uri(store))
    assert len(objects) == 2 and all(f"/feedback/{NOW:%Y/%m/%d}/" in uri for uri in objects)
    counts = prepared_counts(store)
    assert (counts["lines_read"], counts["good"], counts["duplicates"], counts["quarantined"]) == (90, 90, 0, 0)


class RejectSome:
    """Kinesis rejecting part of a batch, on the real (moto) client: the records of the chosen
    events are removed from the request before it is sent, so the stream never holds them, and
    come back in the response as ProvisionedThroughputExceededException failures at their
    positions, as Kinesis reports them. Call k rejects the events in ``schedule[k]`` (a strict
    subset of what it sends: an empty PutRecords is not a valid request); later calls accept all."""

    def __init__(self, client: Any, schedule: list[set[str]]):
        self.calls: list[list[str]] = []
        self.schedule = schedule
        client.meta.events.register("provide-client-params.kinesis.PutRecords", self.before)
        client.meta.events.register("after-call.kinesis.PutRecords", self.after)

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        records = params["Records"]
        self.calls.append([json.loads(r["Data"])["event_id"] for r in records])
        if len(self.calls) > len(self.schedule):
            return
        reject = self.schedule[len(self.calls) - 1]
        context["rejected"] = {i for i, event_id in enumerate(self.calls[-1]) if event_id in reject}
        assert len(context["rejected"]) < len(records), "reject a strict subset"
        params["Records"] = [r for i, r in enumerate(records) if i not in context["rejected"]]

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        rejected = context.get("rejected")
        if not rejected:
            return
        accepted = iter(parsed["Records"])
        total = len(parsed["Records"]) + len(rejected)
        parsed["Records"] = [
            {"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard"}
            if i in rejected else next(accepted) for i in range(total)
        ]
        parsed["FailedRecordCount"] = len(rejected)


def test_kinesis_partial_failure_retries_exactly_the_rejected_records(store):
    stream = unique("feedback")
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    events = clicks(30)
    ids = [e["event_id"] for e in events]
    first, second = [ids[i] for i in (0, 3, 4, 17, 29)], [ids[i] for i in (4, 29)]
    rejections = RejectSome(kinesis, [set(first), set(second)])
    delays: list[float] = []
    KinesisSink(stream, client=kinesis, sleep=delays.append, base_delay=0.1).write(events)

    # Exactly the rejected records are sent again, in order, until all are in.
    assert rejections.calls == [ids, first, second]
    assert delays == [0.1, 0.2]  # exponential backoff between attempts
    assert kinesis_source.pull(stream, store, client=kinesis).records == 30
    counts = prepared_counts(store)
    assert (counts["lines_read"], counts["good"], counts["duplicates"]) == (30, 30, 0)


def test_kinesis_sink_retries_a_rejected_record_and_gives_up_on_a_missing_stream(store):
    stream = unique("feedback")
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    events = clicks(4)
    RejectSome(kinesis, [{events[1]["event_id"]}])
    delays: list[float] = []
    KinesisSink(stream, client=kinesis, sleep=delays.append).write(events)  # rejected once, then in
    assert len(delays) == 1
    missing = KinesisSink(unique("no-such-stream"), client=kinesis, sleep=lambda s: None, max_attempts=3)
    with pytest.raises(SinkError, match="4 of 4 events still rejected after 3 attempts.*ResourceNotFoundException"):
        missing.write(events)


def test_batches_respect_record_and_byte_limits():
    def size(record: dict[str, Any]) -> int:
        return len(record["Data"])

    small = [{"Data": b"x" * 100}] * 1200
    assert [len(b) for b in batches(small, KINESIS_LIMITS, size)] == [500, 500, 200]
    large = [{"Data": b"x" * 900_000}] * 12  # 4 fit under Firehose's 4 MiB, 5 under Kinesis' 5 MB
    assert [len(b) for b in batches(large, FIREHOSE_LIMITS, size)] == [4, 4, 4]
    assert [len(b) for b in batches(large, KINESIS_LIMITS, size)] == [5, 5, 2]
    with pytest.raises(SinkError, match="at most"):
        batches([{"Data": b"x" * 1_100_000}], FIREHOSE_LIMITS, size)


def test_pull_kinesis_command_reports_what_it_copied(store):
    from click.testing import CliRunner

    from pipelines.cli.feedback import feedback_group

    stream = unique("feedback")
    kinesis = boto3.client("kinesis")
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    KinesisSink(stream, client=kinesis).write(clicks(12))
    result = CliRunner().invoke(feedback_group, ["pull-kinesis", "--stream", stream, "--store", store])
    assert result.exit_code == 0, result.output
    assert f"pulled 12 records from {stream} into 1 objects" in result.output
    assert kinesis_source.checkpoint_uri(store, stream) in result.output


def test_journaled_feedback_reaches_kinesis_once_the_stream_takes_it(store, tmp_path):
    stream = unique("feedback")
    kinesis = boto3.client("kinesis")
    spill = SpillDir(tmp_path / "spill")
    batcher = EventBatcher(KinesisSink(stream, client=kinesis, sleep=lambda s: None), spill, flush_seconds=0.05,
                           replay_seconds=0.1).start()
    events = clicks(60)
    batcher.journal.append([encode_line(e) for e in events]).result(timeout=10)  # acknowledged: on local disk
    wait_for(lambda: batcher.stats.sink_errors >= 1)  # the stream does not exist yet: the journal file stays
    assert spill.backlog() == 1
    kinesis.create_stream(StreamName=stream, ShardCount=1)
    wait_for(lambda: batcher.stats.replayed == 60)
    batcher.close()
    assert spill.backlog() == 0  # deleted only after the stream took it
    assert kinesis_source.pull(stream, store, client=kinesis).records == 60
    counts = prepared_counts(store)
    assert (counts["lines_read"], counts["good"], counts["duplicates"], counts["quarantined"]) == (60, 60, 0, 0)
