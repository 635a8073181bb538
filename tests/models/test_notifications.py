"""Notifications published to SNS (moto): the subject, the numbers and the kind attribute."""

import json

import pytest
from moto import mock_aws

from models.notifications import TOPIC_ENV, Notification, NotificationError, publish, topic_arn
from steps.evaluate import gate_notification
from tests.models.sns_inbox import topic_with_inbox


@pytest.fixture
def inbox(aws_env):
    with mock_aws():
        yield topic_with_inbox("appsim-decisions", raw=False)  # SNS's envelope: subject and attributes


REPORT = {"decision": "approved", "decision_reason": "recall@10 +6.1% vs champion v2 (95% CI +2.0%, +9.9%) >= +3%",
          "improved": True, "champion_version": 2, "threshold": {"min_relative_improvement": 0.03},
          "comparison": {"against": "champion", "relative_improvement": 0.061, "ci_low": 0.02, "ci_high": 0.099},
          "candidate": {"recall_at_10": 0.35}, "champion": {"recall_at_10": 0.33}, "holdout": {"users": 900}}


def test_the_gate_decision_reaches_the_topic_with_its_numbers(inbox):
    topic, received = inbox
    assert publish(gate_notification(REPORT, version=3), topic)
    (envelope,) = received()
    assert envelope["Subject"] == "appsim gate: v3 approved (recall@10 +6.1% vs champion)"
    assert envelope["MessageAttributes"]["kind"]["Value"] == "gate"
    body = json.loads(envelope["Message"])
    assert body["numbers"]["comparison"]["ci_low"] == 0.02 and body["numbers"]["version"] == 3
    assert body["summary"] == REPORT["decision_reason"]


def test_nothing_is_sent_without_a_topic_and_a_bad_topic_is_named(inbox, monkeypatch):
    topic, received = inbox
    note = Notification(kind="rollback", subject="x" * 150, summary="s")
    assert publish(note, "") is None
    with pytest.raises(NotificationError, match="not an SNS topic ARN"):
        publish(note, "appsim-decisions")
    with pytest.raises(NotificationError, match="could not publish the rollback"):
        publish(note, topic.replace("appsim-decisions", "missing"))
    publish(note, topic)
    assert len(received()[0]["Subject"]) == 100
    monkeypatch.setenv(TOPIC_ENV, "arn:aws:sns:us-east-1:123456789012:from-env")
    assert topic_arn("arn:aws:sns:us-east-1:123456789012:configured").endswith("from-env")
