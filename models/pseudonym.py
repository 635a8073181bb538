"""Keyed pseudonyms for user ids: HMAC-SHA256, so raw user ids never reach the store.

A pseudonym is ``pu1.<key_id>.<32 hex digits>``: the first 128 bits of
HMAC-SHA256(key, user_id). The same user gets the same pseudonym under one key (training
learns co-engagement from it), nobody without the key can recompute or reverse it, and the
key id inside tells pseudonyms of an old key from those of a new one after a rotation.

The key comes from the environment (``APPSIM_PSEUDONYM_KEY=<key_id>:<secret>``) or from AWS
Secrets Manager (a secret whose string is ``{"key_id": "...", "key": "..."}``). Serving applies
it at the edge and any AWS ingestion path that takes events from other producers applies the
same function, so both give one user one pseudonym. Rotation: docs/runbook.md, "Pseudonymised
user ids".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PREFIX = "pu1"
KEY_ENV = "APPSIM_PSEUDONYM_KEY"
KEY_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MIN_SECRET_BYTES = 16
DIGEST_HEX_CHARS = 32  # 128 bits: collision-free at any realistic user count, half the bytes of the full digest
_PSEUDONYM = re.compile(rf"^{PREFIX}\.([A-Za-z0-9_-]{{1,32}})\.[0-9a-f]{{{DIGEST_HEX_CHARS}}}$")


class PseudonymKeyError(ValueError):
    """A pseudonymisation key that is missing, malformed or too short."""


@dataclass(frozen=True, repr=False)
class PseudonymKey:
    key_id: str
    secret: bytes

    def __post_init__(self) -> None:
        if not KEY_ID_PATTERN.match(self.key_id):
            raise PseudonymKeyError(f"pseudonym key id {self.key_id!r} must be 1-32 letters, digits, '_' or '-' "
                                    "(e.g. 2026-01): it is written into every pseudonym")
        if len(self.secret) < MIN_SECRET_BYTES:
            raise PseudonymKeyError(f"the pseudonym key '{self.key_id}' has {len(self.secret)} bytes; use at least "
                                    f"{MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -hex 32`)")

    def __repr__(self) -> str:  # never print the secret
        return f"PseudonymKey(key_id={self.key_id!r})"

    def pseudonymize(self, user_id: str) -> str:
        digest = hmac.new(self.secret, user_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{PREFIX}.{self.key_id}.{digest[:DIGEST_HEX_CHARS]}"


def key_id_of(value: str) -> str | None:
    """The key id of a pseudonym, or None when ``value`` is not one."""
    match = _PSEUDONYM.match(value)
    return match.group(1) if match else None


def parse_key(text: str) -> PseudonymKey:
    """``<key_id>:<secret>`` (the environment form) as a key."""
    key_id, sep, secret = text.partition(":")
    if not sep:
        raise PseudonymKeyError(f"{KEY_ENV} must look like <key_id>:<secret>, e.g. 2026-01:$(openssl rand -hex 32)")
    return PseudonymKey(key_id.strip(), secret.strip().encode("utf-8"))


def key_from_secret_string(secret_string: str, secret_id: str) -> PseudonymKey:
    """A Secrets Manager secret ``{"key_id": "...", "key": "..."}`` as a key."""
    try:
        data = json.loads(secret_string)
        key_id, secret = str(data["key_id"]), str(data["key"])
    except (ValueError, KeyError, TypeError) as error:
        raise PseudonymKeyError(f"secret {secret_id} must be JSON {{\"key_id\": \"2026-01\", \"key\": \"<random>\"}}; "
                                f"it is not ({type(error).__name__})") from None
    return PseudonymKey(key_id, secret.encode("utf-8"))


def load_key(environ: Mapping[str, str], secret_id: str | None = None, *, client: Any = None) -> PseudonymKey | None:
    """The key from ``secret_id`` in Secrets Manager (its current version) when given, else from
    ``APPSIM_PSEUDONYM_KEY``; None when neither is set."""
    if secret_id:
        if client is None:
            import boto3

            client = boto3.client("secretsmanager")
        try:
            secret_string = client.get_secret_value(SecretId=secret_id)["SecretString"]
        except Exception as error:  # botocore's ClientError and connection errors: name the secret and the cause
            raise PseudonymKeyError(f"cannot read pseudonym key secret {secret_id}: {error}; check the secret id, "
                                    "the region and secretsmanager:GetSecretValue on the role") from None
        return key_from_secret_string(secret_string, secret_id)
    text = environ.get(KEY_ENV)
    return parse_key(text) if text else None


def pseudonymize_event(event: Any, key: PseudonymKey) -> Any:
    """A click or conversion event (a frozen pydantic model) with its ``user_id`` replaced by its pseudonym."""
    return event.model_copy(update={"user_id": key.pseudonymize(event.user_id)})
