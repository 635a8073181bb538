"""Serving settings: one typed object, from the CLI or from the environment (the container).

Environment variables (all optional):

- ``SM_MODEL_DIR`` / ``APPSIM_MODEL_DIR``: serve one extracted artifact folder (endpoint mode,
  SageMaker extracts ``model.tar.gz`` to ``/opt/ml/model``); ``APPSIM_MODEL_VERSION`` numbers it.
  Without either, ``/opt/ml/model`` is used when it holds a manifest.
- ``APPSIM_REGISTRY`` (``sqlite:///...`` or ``sagemaker://group``) or ``APPSIM_STORE`` (the registry
  then defaults to ``<store>/registry.db``): serve the registry's champion, watching for new ones.
- ``APPSIM_EXPERIMENTS`` (``sqlite:///...`` or ``dynamodb://ab_experiments``; default
  ``<store>/experiments.db`` for a local store): the A/B experiment state; an active experiment
  sets the challenger and its weight.
- ``APPSIM_CHALLENGER_VERSION`` + ``APPSIM_CHALLENGER_WEIGHT``: a static challenger and its share,
  used when no experiment is active.
- ``APPSIM_FEEDBACK_URI``: where events go (default ``<store>/feedback``; ``none`` turns logging off).
- ``APPSIM_SPILL_DIR``: local folder for events the sink could not take (replayed later).
- ``APPSIM_API_KEYS``: ``partner:key,partner2:key2``; empty = no authentication (local use).
- ``APPSIM_RATE_LIMIT`` / ``APPSIM_RATE_BURST``: token bucket per API key (requests/s, burst).
- ``APPSIM_AUTH_FAILURES_PER_MINUTE`` / ``APPSIM_AUTH_FAILURE_BURST``: requests with a missing or
  invalid key allowed per client address; past them the address gets 429 whatever key it sends.
- ``APPSIM_REDIS_URL``: ``redis://host:6379/0`` (``rediss://`` for TLS): rate limits shared by every
  host (ElastiCache). Without it, ``APPSIM_RATE_LIMIT_FILE`` (a SQLite file that ``appsim serve
  --workers N`` sets up) shares them between the workers of one host; without either, each
  process has its own.
- ``APPSIM_SAGEMAKER_MODE``: ``true`` on a SageMaker endpoint, whose IAM auth is in front of
  ``/invocations``: it then needs no API key (``/v1`` still does).
- ``APPSIM_POLL_SECONDS``: how often the registry is checked for a new Approved version.
- ``APPSIM_QUEUE_SIZE`` / ``APPSIM_BATCH_SIZE`` / ``APPSIM_FLUSH_SECONDS``: the event batcher's
  bounded queue, batch size and the longest an event waits for its batch.
- ``APPSIM_STALL_SECONDS``: event logging that makes no progress this long fails /ping (503).
- ``APPSIM_JOURNAL_FSYNC``: ``false`` skips the fsync of the feedback journal (a 202 then survives a
  crash of the process, not of the machine); for benchmarks, not production.
- ``APPSIM_FEEDBACK_MAX_EVENTS``: the most events one ``/v1/feedback`` request may carry (more: 413).
- ``APPSIM_PSEUDONYM_KEY`` (``<key_id>:<secret>``, read by each worker, never copied into settings) or
  ``APPSIM_PSEUDONYM_SECRET_ID`` (a Secrets Manager secret): feedback ``user_id`` values are replaced
  by keyed pseudonyms before they are written (models/pseudonym.py). ``APPSIM_REQUIRE_PSEUDONYMS=true``
  refuses to start without a key.
- ``APPSIM_OTLP_ENDPOINT`` (e.g. ``http://127.0.0.1:4318/v1/traces``): OpenTelemetry spans of every
  request exported over OTLP/HTTP (serving/tracing.py); unset, tracing is off.
  ``APPSIM_TRACE_SAMPLE_RATIO``: the share of traces kept (a caller's sampled flag wins).
- ``APPSIM_POPULAR_APPS`` (default 0, off): answer ``/similar`` for this many most-shown apps from the
  served version's neighbour export instead of FAISS (serving/popular.py); the export is read from
  ``APPSIM_NEIGHBORS_URI`` when set, else ``<store>/neighbors/v<N>``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models import layout, storage
from models.experiments import default_uri as default_experiments_uri

SAGEMAKER_MODEL_DIR = "/opt/ml/model"
SAGEMAKER_MAX_BODY_BYTES = 6 * 1024 * 1024
SETTINGS_ENV = "APPSIM_SERVING_SETTINGS"


class SettingsError(ValueError):
    """Serving settings that cannot work together."""


class ServingSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    model_dir: str | None = None
    model_version: int = Field(0, ge=0)
    registry: str | None = None
    store: str | None = None
    experiments: str | None = None
    challenger_version: int | None = Field(None, ge=1)
    challenger_weight: float = Field(0.0, ge=0.0, le=1.0)
    poll_seconds: float = Field(30.0, gt=0)
    feedback_uri: str | None = None
    spill_dir: str = Field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "appsim-spill"))
    queue_size: int = Field(10_000, ge=1)
    batch_size: int = Field(500, ge=1)
    flush_seconds: float = Field(1.0, gt=0)
    replay_seconds: float = Field(10.0, gt=0)
    stall_seconds: float = Field(60.0, gt=0, description="no logging progress for this long fails /ping")
    journal_fsync: bool = Field(True, description="fsync the feedback journal before answering 202")
    journal_timeout_seconds: float = Field(10.0, gt=0, description="longest a feedback request waits for the journal")
    api_keys: dict[str, str] = Field(default_factory=dict, description="API key -> partner id")
    rate_per_second: float = Field(200.0, gt=0)
    rate_burst: float = Field(400.0, ge=1)
    auth_failures_per_minute: float = Field(10.0, gt=0)
    auth_failure_burst: float = Field(10.0, ge=1)
    redis_url: str | None = Field(None, pattern=r"^(redis|rediss|unix)://")
    rate_limit_file: str | None = None
    sagemaker_mode: bool = False
    max_body_bytes: int = Field(SAGEMAKER_MAX_BODY_BYTES, ge=1)
    feedback_max_events: int = Field(1000, ge=1)
    pseudonym_secret_id: str | None = Field(None, description="Secrets Manager secret holding the pseudonym key")
    require_pseudonyms: bool = Field(False, description="refuse to start without a pseudonym key")
    otlp_endpoint: str | None = Field(None, pattern=r"^https?://", description="OTLP/HTTP traces endpoint")
    trace_sample_ratio: float = Field(1.0, ge=0.0, le=1.0)
    popular_apps: int = Field(0, ge=0, description="most-shown apps answered from the neighbour export (0: off)")
    neighbors_uri: str | None = Field(None, description="the neighbour export folder (default <store>/neighbors/v<N>)")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        return parse_api_keys(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _batch_fits_the_queue(self) -> "ServingSettings":
        if self.feedback_max_events > self.queue_size:
            raise ValueError(f"feedback_max_events ({self.feedback_max_events}) is over queue_size ({self.queue_size}): "
                             "such a batch could never be queued; lower APPSIM_FEEDBACK_MAX_EVENTS or raise "
                             "APPSIM_QUEUE_SIZE")
        return self

    @model_validator(mode="after")
    def _popular_apps_have_an_export(self) -> "ServingSettings":
        if self.popular_apps and not self.neighbors_uri and (self.endpoint_mode or not self.store):
            raise ValueError("popular_apps needs the neighbour export's folder: set APPSIM_NEIGHBORS_URI (with "
                             "APPSIM_MODEL_DIR or a registry without a store), or APPSIM_POPULAR_APPS=0")
        return self

    @property
    def endpoint_mode(self) -> bool:
        return self.model_dir is not None

    def registry_uri(self) -> str:
        if self.registry:
            return self.registry
        if self.store and storage.is_local(self.store):
            return layout.default_registry_uri(self.store)
        raise SettingsError(
            "no model to serve: set APPSIM_MODEL_DIR (an extracted artifact), APPSIM_REGISTRY "
            "(sqlite:///path/registry.db or sagemaker://group) or a local --store holding registry.db"
        )

    def experiments_uri(self) -> str | None:
        """Where A/B experiment state is read; None when there is nowhere to read it from."""
        if self.experiments:
            return self.experiments
        return default_experiments_uri(self.store) if self.store and storage.is_local(self.store) else None

    def resolved_feedback_uri(self) -> str | None:
        """Where prediction and feedback events go; None when logging is off."""
        if self.feedback_uri:
            return None if self.feedback_uri == "none" else self.feedback_uri
        return layout.feedback_uri(self.store) if self.store else None

    def neighbors_export_uri(self, version: int) -> str | None:
        """Where the neighbour export of ``version`` is read when ``popular_apps`` is on."""
        if not self.popular_apps:
            return None
        return self.neighbors_uri or layout.neighbors_uri(self.store, version)  # type: ignore[arg-type]

    def to_env(self) -> str:
        """JSON for ``APPSIM_SERVING_SETTINGS``: how the CLI hands settings to uvicorn workers."""
        return self.model_dump_json()


def parse_api_keys(text: str) -> dict[str, str]:
    """``partner:key,partner2:key2`` -> {key: partner}."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        partner, sep, key = item.partition(":")
        if not sep or not partner or not key:
            raise SettingsError(f"API key entry '{item[:4]}...' must look like partner:key (e.g. acme:s3cr3t)")
        keys[key] = partner
    return keys


_ENV_FIELDS = {
    "APPSIM_MODEL_VERSION": "model_version",
    "APPSIM_REGISTRY": "registry",
    "APPSIM_STORE": "store",
    "APPSIM_EXPERIMENTS": "experiments",
    "APPSIM_CHALLENGER_VERSION": "challenger_version",
    "APPSIM_CHALLENGER_WEIGHT": "challenger_weight",
    "APPSIM_POLL_SECONDS": "poll_seconds",
    "APPSIM_FEEDBACK_URI": "feedback_uri",
    "APPSIM_SPILL_DIR": "spill_dir",
    "APPSIM_API_KEYS": "api_keys",
    "APPSIM_RATE_LIMIT": "rate_per_second",
    "APPSIM_RATE_BURST": "rate_burst",
    "APPSIM_AUTH_FAILURES_PER_MINUTE": "auth_failures_per_minute",
    "APPSIM_AUTH_FAILURE_BURST": "auth_failure_burst",
    "APPSIM_REDIS_URL": "redis_url",
    "APPSIM_RATE_LIMIT_FILE": "rate_limit_file",
    "APPSIM_SAGEMAKER_MODE": "sagemaker_mode",
    "APPSIM_QUEUE_SIZE": "queue_size",
    "APPSIM_BATCH_SIZE": "batch_size",
    "APPSIM_FLUSH_SECONDS": "flush_seconds",
    "APPSIM_STALL_SECONDS": "stall_seconds",
    "APPSIM_JOURNAL_FSYNC": "journal_fsync",
    "APPSIM_FEEDBACK_MAX_EVENTS": "feedback_max_events",
    "APPSIM_PSEUDONYM_SECRET_ID": "pseudonym_secret_id",
    "APPSIM_REQUIRE_PSEUDONYMS": "require_pseudonyms",
    "APPSIM_OTLP_ENDPOINT": "otlp_endpoint",
    "APPSIM_TRACE_SAMPLE_RATIO": "trace_sample_ratio",
    "APPSIM_POPULAR_APPS": "popular_apps",
    "APPSIM_NEIGHBORS_URI": "neighbors_uri",
}


def settings_from_env(environ: Mapping[str, str] | None = None) -> ServingSettings:
    """Settings for a worker: the CLI's JSON when present, else the individual variables."""
    env = os.environ if environ is None else environ
    try:
        if env.get(SETTINGS_ENV):
            return ServingSettings.model_validate_json(env[SETTINGS_ENV])
        values: dict[str, Any] = {field: env[name] for name, field in _ENV_FIELDS.items() if env.get(name)}
        model_dir = env.get("APPSIM_MODEL_DIR") or env.get("SM_MODEL_DIR")
        if not model_dir and not values.get("registry") and not values.get("store") \
                and (Path(SAGEMAKER_MODEL_DIR) / "manifest.json").is_file():
            model_dir = SAGEMAKER_MODEL_DIR
        if model_dir:
            values["model_dir"] = model_dir
        return ServingSettings.model_validate(values)
    except ValidationError as error:
        raise SettingsError(describe_validation(error)) from None


def describe_validation(error: ValidationError) -> str:
    """One line naming every setting that is wrong and why."""
    problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg'].removeprefix('Value error, ')}"
                         for e in error.errors())
    return f"invalid serving settings: {problems}"
