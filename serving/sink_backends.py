"""Which feedback sink a feedback URI names: ``open_sink``.

Apart from ``serving/sinks.py`` (the protocol and the file sink) so that the AWS sinks, which
build on that protocol, are imported by this module only: the imports point one way.
"""

from __future__ import annotations

from serving.sinks import FeedbackSink, FirehoseFileSink


def open_sink(uri: str) -> FeedbackSink:
    """A sink from a feedback URI: a store folder (file:// or s3://), kinesis:// or firehose://."""
    if uri.startswith(("kinesis://", "firehose://")):
        from serving import sinks_aws  # boto3, for AWS only

        return sinks_aws.open_sink(uri)
    return FirehoseFileSink(uri)
