"""Keyed user-id pseudonyms: stable under one key, distinguishable across keys, keys from env or Secrets Manager."""

from __future__ import annotations

import json

import boto3
import pytest
from moto import mock_aws

from models.events import validate_event
from models.pseudonym import (
    KEY_ENV, PseudonymKey, PseudonymKeyError, key_id_of, load_key, parse_key, pseudonymize_event,
)

SECRET = "0123456789abcdef0123456789abcdef"


def test_same_user_same_pseudonym_under_one_key_and_different_users_differ():
    key = PseudonymKey("2026-01", SECRET.encode())
    again = parse_key(f"2026-01:{SECRET}")
    assert key.pseudonymize("user-42") == again.pseudonymize("user-42")
    assert key.pseudonymize("user-42") != key.pseudonymize("user-43")
    pseudonym = key.pseudonymize("user-42")
    assert pseudonym.startswith("pu1.2026-01.") and "user-42" not in pseudonym
    assert key_id_of(pseudonym) == "2026-01"
    assert key_id_of("user-42") is None


def test_a_rotated_key_gives_new_pseudonyms_that_name_their_key():
    old, new = PseudonymKey("k1", SECRET.encode()), PseudonymKey("k2", (SECRET + "x").encode())
    assert old.pseudonymize("user-1") != new.pseudonymize("user-1")
    assert {key_id_of(old.pseudonymize("user-1")), key_id_of(new.pseudonymize("user-1"))} == {"k1", "k2"}


def test_the_pseudonym_is_the_hmac_sha256_of_the_user_id():
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), "usér-7".encode(), hashlib.sha256).hexdigest()[:32]
    assert PseudonymKey("k", SECRET.encode()).pseudonymize("usér-7") == f"pu1.k.{expected}"


@pytest.mark.parametrize(("text", "problem"), [
    ("no-colon-here", "<key_id>:<secret>"),
    ("k1:short", "at least 16"),
    (f"bad id!:{SECRET}", "letters, digits"),
])
def test_bad_keys_name_the_problem_and_the_fix(text, problem):
    with pytest.raises(PseudonymKeyError, match=problem):
        parse_key(text)


def test_the_secret_never_shows_in_repr():
    assert SECRET not in repr(PseudonymKey("k1", SECRET.encode()))


def test_key_from_the_environment_or_none():
    assert load_key({}) is None
    assert load_key({KEY_ENV: f"k9:{SECRET}"}).key_id == "k9"


def test_key_from_secrets_manager_follows_rotation(aws_env):
    with mock_aws():
        client = boto3.client("secretsmanager")
        arn = client.create_secret(Name="appsim/pseudonym-key",
                                   SecretString=json.dumps({"key_id": "2026-01", "key": SECRET}))["ARN"]
        first = load_key({}, arn, client=client)
        assert first.key_id == "2026-01"
        # Rotation: a new version becomes AWSCURRENT; serving picks it up at its next start.
        client.put_secret_value(SecretId=arn, SecretString=json.dumps({"key_id": "2026-02", "key": SECRET[::-1]}))
        second = load_key({KEY_ENV: f"ignored:{SECRET}"}, "appsim/pseudonym-key", client=client)
        assert second.key_id == "2026-02"
        assert first.pseudonymize("user-1") != second.pseudonymize("user-1")
        client.create_secret(Name="appsim/not-json", SecretString="just-a-string")
        with pytest.raises(PseudonymKeyError, match="must be JSON"):
            load_key({}, "appsim/not-json", client=client)
        with pytest.raises(PseudonymKeyError, match="cannot read pseudonym key secret appsim/missing"):
            load_key({}, "appsim/missing", client=client)


def test_pseudonymize_event_replaces_only_the_user_id():
    key = PseudonymKey("k1", SECRET.encode())
    event = validate_event({"event_type": "click", "event_id": "e1", "ts": "2026-01-31T12:00:00Z", "app_id": "app-1",
                            "campaign_id": "c1", "partner_id": "acme", "user_id": "user-42", "clicked": True})
    changed = pseudonymize_event(event, key)
    assert changed.user_id == key.pseudonymize("user-42")
    assert changed.model_dump(exclude={"user_id"}) == event.model_dump(exclude={"user_id"})
    assert validate_event(changed.to_json_dict()) == changed  # still a valid event for prepare
