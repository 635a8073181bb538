"""An SNS topic with an SQS queue subscribed to it, to read what appsim published (moto, in-process or server)."""

from __future__ import annotations

import json
from typing import Callable

import boto3


def topic_with_inbox(name: str, raw: bool = True) -> tuple[str, Callable[[], list[dict]]]:
    """The topic's ARN, and a function returning every message received so far (the message body
    itself when ``raw``, else SNS's envelope with subject and attributes), parsed as JSON."""
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    topic = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{name}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn,
                  Attributes={"RawMessageDelivery": "true" if raw else "false"})

    def received() -> list[dict]:
        messages = []
        while batch := sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            messages += [json.loads(m["Body"]) for m in batch]
            sqs.delete_message_batch(QueueUrl=queue, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)])
        return messages

    return topic, received
