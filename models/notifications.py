"""Operator notifications: gate decisions, A/B decisions and rollbacks, published to an SNS topic.

One message shape for every publisher (the evaluate step on SageMaker, the local runner, the
daily A/B decision): a subject line a human reads in a mail or Slack client, and a JSON body
that carries the numbers behind the decision, so a subscriber (Lambda, Chatbot, a script) can
act on them without reading the store. The ``kind`` is also a message attribute, so a
subscription can filter (``{"kind": ["rollback"]}`` pages on-call, the rest goes to a channel).

This lives in ``models`` (the lowest layer) because both ``steps`` and ``pipelines`` publish.
Nothing is published when no topic is configured; a topic that cannot be reached raises
``NotificationError``: a decision that was taken is never undone because its message failed,
so callers publish after acting and report the failure beside the decision.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TOPIC_ENV = "APPSIM_SNS_TOPIC_ARN"
NotificationKind = Literal["gate", "ab_start", "ab_decision", "rollback", "archive"]
_SUBJECT_LIMIT = 100  # SNS refuses longer subjects


class NotificationError(RuntimeError):
    """The configured topic refused or could not take a message."""


class Notification(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: NotificationKind
    subject: str = Field(min_length=1)
    summary: str
    numbers: dict[str, Any] = Field(default_factory=dict)
    at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    def body(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True, default=str)


def topic_arn(configured: str = "") -> str:
    """The topic to publish to: ``$APPSIM_SNS_TOPIC_ARN`` (containers, SageMaker jobs), else the config's."""
    return os.environ.get(TOPIC_ENV) or configured


def publish(notification: Notification, topic: str, client: Any = None, region: str | None = None) -> str | None:
    """Publish to ``topic`` (an SNS topic ARN); returns the message id, or None when no topic is set."""
    if not topic:
        return None
    if not topic.startswith("arn:"):
        raise NotificationError(f"notifications topic '{topic}' is not an SNS topic ARN "
                                "(arn:aws:sns:REGION:ACCOUNT:NAME); fix notifications.sns_topic_arn or $" + TOPIC_ENV)
    if client is None:
        import boto3

        client = boto3.client("sns", region_name=region or topic.split(":")[3] or None)
    subject = notification.subject if len(notification.subject) <= _SUBJECT_LIMIT else \
        notification.subject[:_SUBJECT_LIMIT - 3] + "..."
    try:
        response = client.publish(
            TopicArn=topic, Subject=subject, Message=notification.body(),
            MessageAttributes={"kind": {"DataType": "String", "StringValue": notification.kind}})
    except Exception as error:  # botocore raises many unrelated classes; all mean "not delivered"
        raise NotificationError(f"could not publish the {notification.kind} notification to {topic}: {error}") from error
    return response["MessageId"]
