"""`appsim serve`: run the serving app on uvicorn (uvloop + httptools), locally or in the container.

With ``--workers N`` (N > 1) the workers must act as one server: the command prepares a fresh
folder for the run, with Prometheus's multiprocess files (one scrape covers every worker) and
the SQLite file of the rate limits they share (unless Redis shares them across hosts), and
removes it when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import click

from serving.metrics import MULTIPROCESS_DIR_ENV, prepare_multiprocess_dir

# uvicorn kills a worker that does not answer its supervisor's ping in time (5 s by default); a
# worker busy importing FAISS and loading a large model on a loaded host can take longer.
WORKER_HEALTHCHECK_SECONDS = 30
from serving.settings import SETTINGS_ENV, ServingSettings, SettingsError, parse_api_keys, settings_from_env


def build_settings(overrides: dict[str, Any], config_path: str | None) -> ServingSettings:
    """Environment settings, then the command line's, then pipeline.yaml's store and registry as defaults."""
    base = settings_from_env(
        {k: v for k, v in os.environ.items() if k != SETTINGS_ENV}
    ).model_dump(exclude_unset=True)
    values = base | {k: v for k, v in overrides.items() if v is not None}
    if not values.get("model_dir"):
        from pipelines.config import load_config  # the CLI edge: pipeline.yaml supplies the defaults

        config = load_config(config_path, values.get("store"))
        values["store"] = config.store
        values.setdefault("registry", config.registry_uri)
    try:
        settings = ServingSettings.model_validate(values)
        if not settings.endpoint_mode:
            settings.registry_uri()
    except (SettingsError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    return settings


@click.command("serve")
@click.option("--store", default=None, help="Store folder or URI (default: $APPSIM_STORE, else pipeline.yaml's).")
@click.option("--config", "config_path", default=None, type=click.Path(dir_okay=False), help="pipeline.yaml to use.")
@click.option("--host", envvar="APPSIM_HOST", default="127.0.0.1", show_default=True,
              help="Interface to listen on (the container sets APPSIM_HOST=0.0.0.0).")
@click.option("--port", envvar="APPSIM_PORT", default=8080, show_default=True, type=int)
@click.option("--workers", envvar="APPSIM_WORKERS", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Worker processes (each loads the model; scale with cores).")
@click.option("--model-dir", default=None, help="Serve this extracted artifact folder (endpoint mode).")
@click.option("--model-version", default=None, type=int, help="Version number reported for --model-dir.")
@click.option("--registry", default=None, help="Registry URI (default: <store>/registry.db).")
@click.option("--challenger-version", default=None, type=int, help="Registry version to serve as the challenger.")
@click.option("--challenger-weight", default=None, type=click.FloatRange(0, 1), help="Challenger's share of traffic.")
@click.option("--feedback", "feedback_uri", default=None,
              help="Where events go: a folder/URI, kinesis://stream, firehose://stream or none (default <store>/feedback).")
@click.option("--spill-dir", default=None, help="Local folder for events the sink could not take.")
@click.option("--api-keys", default=None, help="partner:key,... (default $APPSIM_API_KEYS; none = open /v1).")
@click.option("--rate-limit", "rate_per_second", default=None, type=float, help="Requests/s per API key.")
@click.option("--rate-burst", default=None, type=float, help="Token bucket size per API key.")
@click.option("--poll-seconds", default=None, type=float, help="Registry polling interval for hot swaps.")
@click.option("--redis-url", default=None,
              help="Share rate limits across hosts through Redis, e.g. redis://cache:6379/0 (default $APPSIM_REDIS_URL).")
@click.option("--sagemaker-mode", is_flag=True, default=None,
              help="On a SageMaker endpoint: IAM guards /invocations, so it needs no API key ($APPSIM_SAGEMAKER_MODE).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
def serve_command(config_path: str | None, host: str, port: int, workers: int, log_level: str, access_log: bool,
                  api_keys: str | None, **overrides: Any) -> None:
    """Serve similar apps and performance predictions (SageMaker contract + /v1 API) on HOST:PORT."""
    import uvicorn

    from serving.logs import log_config

    if api_keys is not None:
        overrides["api_keys"] = parse_api_keys(api_keys)
    settings = build_settings(overrides, config_path)
    run_dir = None
    if workers > 1:
        run_dir, settings = prepare_shared_state(settings)
    # Workers are separate processes: they read the settings and the thread count from the environment.
    os.environ[SETTINGS_ENV] = settings.to_env()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        uvicorn.run("serving.app:app_from_env", factory=True, host=host, port=port, workers=workers,
                    loop="uvloop", http="httptools", log_config=log_config(log_level), access_log=access_log,
                    timeout_graceful_shutdown=30, timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS)
    finally:
        if run_dir is not None:
            shutil.rmtree(run_dir, ignore_errors=True)


def prepare_shared_state(settings: ServingSettings) -> tuple[str, ServingSettings]:
    """A fresh run folder (in memory, /dev/shm, where there is one) holding the Prometheus
    multiprocess files (or a given PROMETHEUS_MULTIPROC_DIR, emptied) and the host's rate-limit
    file; returns it and the settings that point the workers at the file."""
    shm = Path("/dev/shm")
    run_dir = tempfile.mkdtemp(prefix="appsim-serve-", dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None)
    os.environ[MULTIPROCESS_DIR_ENV] = prepare_multiprocess_dir(
        os.environ.get(MULTIPROCESS_DIR_ENV) or str(Path(run_dir) / "metrics"))
    if not settings.redis_url and not settings.rate_limit_file:
        settings = settings.model_copy(update={"rate_limit_file": str(Path(run_dir) / "rate-limits.db")})
    return run_dir, settings
