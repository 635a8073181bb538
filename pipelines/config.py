"""pipeline.yaml, typed and validated once at the edge.

``load_config`` reads the file, ``with_overrides`` applies ``--param NAME=VALUE`` strings with
the parameter's own type, and every mistake raises ``ConfigError`` naming the key and the fix.

Which pipeline.yaml is read, first found wins (``config_source`` says which and why):

1. ``--config PATH``;
2. ``$APPSIM_CONFIG``;
3. the repository's ``pipeline.yaml``, when the code runs from a checkout (an editable install or
   ``python -m pipelines.cli`` in the repository: the file beside ``setup.py``);
4. the defaults shipped inside the package (``pipelines/pipeline.yaml``, package data copied from
   the repository's file when the wheel is built), so ``pip install appsim`` works anywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from models import layout, storage
from models.events import parse_utc

CONFIG_FILE = "pipeline.yaml"
CONFIG_ENV = "APPSIM_CONFIG"
STORE_ENV = "APPSIM_STORE"
PACKAGE_DIR = Path(__file__).resolve().parent
# In a checkout the repository's file is the one to edit; setup.py beside it marks a checkout (an installed
# package's parent is site-packages, which must never be searched for a stray pipeline.yaml).
REPOSITORY_CONFIG = PACKAGE_DIR.parent / CONFIG_FILE
PACKAGED_CONFIG = PACKAGE_DIR / CONFIG_FILE


# Feedback timestamps are stored as datetime64[ns] (which ends in 2262); a window outside this range
# can hold no event and would fail in a step instead of here.
WINDOW_END_RANGE = (datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc))


class ConfigError(ValueError):
    """pipeline.yaml or a --param override that is not valid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PipelineParameters(_Strict):
    window_end: str = ""
    window_days: int = Field(28, ge=1, le=366)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    max_bad_fraction: float = Field(0.05, ge=0, le=1)
    use_attributed_clicks: bool = False
    embedding_dim: int = Field(64, ge=2, le=1024)
    seed: int = Field(42, ge=0, le=2**31 - 1)  # every RNG the steps use takes a 32-bit signed seed
    index_type: Literal["auto", "flat", "hnsw", "ivf"] = "auto"
    exact_index_max_apps: int = Field(100_000, ge=1, le=1_000_000_000)
    min_relative_improvement: float = Field(0.03, ge=0, le=10)
    bootstrap_samples: int = Field(1000, ge=50, le=100_000)
    approval_status: Literal["Approved", "PendingManualApproval"] = "Approved"
    # The PrepareFeedback engine: a build-time choice on SageMaker (see pipelines/graph.py).
    prepare_engine: Literal["duckdb", "spark"] = "duckdb"

    @field_validator("window_end")
    @classmethod
    def _iso_or_empty(cls, value: str) -> str:
        if value:
            try:
                end = parse_utc(value)
            except ValueError:
                raise ValueError(f"'{value}' is not an ISO date-time such as 2026-01-31T00:00:00Z (or leave it empty for now)")
            if not WINDOW_END_RANGE[0] <= end < WINDOW_END_RANGE[1]:
                low, high = (bound.date().isoformat() for bound in WINDOW_END_RANGE)
                raise ValueError(f"'{value}' is outside the dates feedback can have; give one from {low} "
                                 f"to before {high}, such as 2026-01-31T00:00:00Z (or leave it empty for now)")
        return value

    def resolved_window_end(self) -> datetime:
        return parse_utc(self.window_end) if self.window_end else datetime.now(timezone.utc)


class PrepareSettings(_Strict):
    """Resources of PrepareFeedback's DuckDB engine (see steps.prepare_duckdb.DuckDBSettings)."""

    memory_limit: str = Field("2GB", pattern=r"^\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
    spill_dir: str = ""
    threads: int = Field(0, ge=0, le=1024)


class Backends(_Strict):
    store: str = "./appsim-store"
    registry: str = ""
    experiments: str = ""


class SageMakerSettings(_Strict):
    region: str = "us-east-1"
    role_arn: str = ""
    model_package_group: str = "appsim-app-embeddings"
    image_uri: str = ""
    spark_image_uri: str = ""
    processing_instance_type: str = "ml.m5.xlarge"
    processing_instance_count: int = Field(1, ge=1)
    training_instance_type: str = "ml.m5.2xlarge"
    training_instance_count: int = Field(1, ge=1)
    cache_expire_after: str = "P30D"
    max_retries: int = Field(2, ge=0, le=10)


class ScheduleSettings(_Strict):
    name: str = "appsim-weekly-retrain"
    cron: str = "cron(0 3 ? * MON *)"
    timezone: str = "UTC"


class CloudWatchGuardrailSource(_Strict):
    """Where the CloudWatch agent publishes serving's metrics (pipelines/monitoring.py's conventions)."""

    namespace: str = "appsim"
    dimensions: dict[str, str] = Field(default_factory=lambda: {"service": "appsim"})  # the deployment's


class GuardrailSettings(_Strict):
    """Roll the challenger back when serving shows it failing more or answering slower than the champion."""

    # prometheus: serving's exposition at serving_metrics (empty = no guardrail, the A/B rules alone
    # decide); cloudwatch (AWS): the per-arm series the CloudWatch agent publishes from it.
    source: Literal["prometheus", "cloudwatch"] = "prometheus"
    # Serving's Prometheus exposition: http(s)://host:8080/metrics, or a file/S3 URI a scraper writes.
    serving_metrics: str = ""
    cloudwatch: CloudWatchGuardrailSource = Field(default_factory=CloudWatchGuardrailSource)
    max_error_rate_increase: float = Field(0.01, ge=0, le=1)  # absolute: 0.01 = one percentage point of 5xx
    max_p99_increase: float = Field(0.25, ge=0, le=100)       # relative: 0.25 = challenger p99 > 1.25x champion's
    min_requests: int = Field(500, ge=1)                      # per arm since the last decision, else no verdict

    @model_validator(mode="after")
    def _one_source(self) -> "GuardrailSettings":
        if self.source == "cloudwatch" and self.serving_metrics:
            raise ValueError("rollout.guardrails: source is cloudwatch but serving_metrics is set; empty "
                             "serving_metrics, or set source: prometheus to scrape it")
        return self

    @property
    def enabled(self) -> bool:
        return self.source == "cloudwatch" or bool(self.serving_metrics)


class RolloutSettings(_Strict):
    """The staged rollout: an A/B experiment per gate winner, walked by `appsim ab decide` daily."""

    auto_start: bool = False              # start an experiment for each new gate winner
    start_weight: float = Field(0.1, gt=0, lt=1)
    ramp_step: float = Field(0.1, gt=0, le=1)
    final_weight: float = Field(0.5, gt=0, le=1)
    min_days: float = Field(7.0, ge=0)
    min_requests: int = Field(10_000, ge=1)
    min_lift: float = Field(0.05, ge=0)
    stable_days: float = Field(3.0, ge=0)
    archive_after_days: float = Field(30.0, ge=0)  # replaced versions are archived after this long
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    schedule: ScheduleSettings = Field(default_factory=lambda: ScheduleSettings(
        name="appsim-daily-ab-decision", cron="cron(0 6 * * ? *)"))


class NotificationSettings(_Strict):
    sns_topic_arn: str = ""  # empty = no notifications; $APPSIM_SNS_TOPIC_ARN overrides it


class RetentionSettings(_Strict):
    feedback_days: int = Field(365, ge=1)  # `appsim store prune` and the S3 lifecycle rule
class NeighborsSettings(_Strict):
    """Bulk neighbours (steps/export_neighbors.py) after a run registers an Approved version."""

    export_on_approval: bool = False
    k: int = Field(100, ge=1, le=100)


class PipelineConfig(_Strict):
    pipeline_name: str = "appsim-retrain"
    parameters: PipelineParameters = Field(default_factory=PipelineParameters)
    prepare: PrepareSettings = Field(default_factory=PrepareSettings)
    backends: Backends = Field(default_factory=Backends)
    sagemaker: SageMakerSettings = Field(default_factory=SageMakerSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    notifications: NotificationSettings = Field(default_factory=NotificationSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @model_validator(mode="after")
    def _rollout_needs_pending_winners(self) -> "PipelineConfig":
        if self.rollout.auto_start and self.parameters.approval_status == "Approved":
            raise ValueError("rollout.auto_start needs parameters.approval_status: PendingManualApproval (a gate "
                             "winner must not become the champion before its experiment promotes it)")
        return self
    neighbors: NeighborsSettings = Field(default_factory=NeighborsSettings)

    @property
    def store(self) -> str:
        return storage.normalize(self.backends.store)

    @property
    def registry_uri(self) -> str:
        if self.backends.registry:
            return self.backends.registry
        if not storage.is_local(self.store):
            raise ConfigError(
                "the store is on S3 but backends.registry is empty; set it to sagemaker://<model-package-group>"
            )
        return layout.default_registry_uri(self.store)

    @property
    def experiments_uri(self) -> str:
        """A/B experiment state: backends.experiments, else ``<store>/experiments.db`` (local stores)."""
        if self.backends.experiments:
            return self.backends.experiments
        from models.experiments import default_uri

        return default_uri(self.store)

    def with_overrides(self, overrides: list[str] | dict[str, Any]) -> "PipelineConfig":
        """A copy with parameters replaced: ``["NAME=VALUE", ...]`` or a dict."""
        pairs = dict(parse_override(o) for o in overrides) if isinstance(overrides, list) else dict(overrides)
        unknown = sorted(set(pairs) - set(PipelineParameters.model_fields))
        if unknown:
            raise ConfigError(
                f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PipelineParameters.model_fields)}"
            )
        merged = self.parameters.model_dump() | pairs
        try:
            params = PipelineParameters.model_validate(_coerce(merged))
        except ValidationError as error:
            raise ConfigError(_describe(error, "--param")) from None
        return self.model_copy(update={"parameters": params})

    def with_store(self, store: str | None) -> "PipelineConfig":
        chosen = store or os.environ.get(STORE_ENV)
        if not chosen:
            return self
        return self.model_copy(update={"backends": self.backends.model_copy(update={"store": chosen})})


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"--param '{text}' must look like NAME=VALUE, e.g. --param window_days=14")
    name, value = text.split("=", 1)
    return name.strip(), value.strip()


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Strings from the command line take the parameter's type ('true' -> True, '14' -> 14)."""
    out = {}
    for name, value in values.items():
        annotation = PipelineParameters.model_fields[name].annotation
        if isinstance(value, str) and annotation is bool:
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"parameter {name} takes true or false, not '{value}'")
            value = lowered in ("true", "1", "yes")
        out[name] = value
    return out


def _describe(error: ValidationError, where: str) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        given = f"={item['input']}" if isinstance(item.get("input"), (str, int, float)) else ""
        parts.append(f"{key}{given}: {message}")
    return f"invalid {where}: " + "; ".join(parts)


@dataclass(frozen=True)
class ConfigSource:
    path: Path
    origin: str  # "--config", "$APPSIM_CONFIG", "repository" or "package"


def config_source(path: str | Path | None = None) -> ConfigSource:
    """The pipeline.yaml to read, by the precedence in the module docstring."""
    if path:
        return ConfigSource(Path(path), "--config")
    if os.environ.get(CONFIG_ENV):
        return ConfigSource(Path(os.environ[CONFIG_ENV]), f"${CONFIG_ENV}")
    if REPOSITORY_CONFIG.is_file() and (PACKAGE_DIR.parent / "setup.py").is_file():
        return ConfigSource(REPOSITORY_CONFIG, "repository")
    return ConfigSource(PACKAGED_CONFIG, "package")


def load_config(path: str | Path | None = None, store: str | None = None) -> PipelineConfig:
    """Read and validate pipeline.yaml (``config_source``'s choice), then apply the store choice."""
    source = config_source(path)
    config_path = source.path
    if not config_path.is_file():
        fix = ("reinstall appsim (the package's defaults are missing)" if source.origin == "package"
               else f"fix {source.origin} or leave it out to use the defaults")
        raise ConfigError(f"config file {config_path} (from {source.origin}) does not exist; {fix}")
    try:
        raw = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{config_path} is not valid YAML: {error}") from None
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_describe(error, str(config_path))) from None
    return config.with_store(store)
