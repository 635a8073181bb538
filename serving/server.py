"""Run the serving app on uvicorn (uvloop + httptools), locally or in the container (`appsim serve`,
pipelines/cli/serve.py, parses the command line and calls ``build_settings`` and ``run_server``).

With ``--workers N`` (N > 1) the workers must act as one server: the command prepares a fresh
folder for the run, with Prometheus's multiprocess files (one scrape covers every worker) and
the SQLite file of the rate limits they share (unless Redis shares them across hosts), and
removes it when the server stops.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from serving.metrics import MULTIPROCESS_DIR_ENV, prepare_multiprocess_dir
from serving.settings import (
    SETTINGS_ENV, ServingSettings, SettingsError, describe_validation, settings_from_env,
)

# uvicorn kills a worker that does not answer its supervisor's ping in time (5 s by default); a
# worker busy importing FAISS and loading a large model on a loaded host can take longer.
WORKER_HEALTHCHECK_SECONDS = 30


def build_settings(overrides: Mapping[str, Any],
                   store_defaults: Callable[[str | None], Mapping[str, str]] | None = None) -> ServingSettings:
    """Environment settings, then ``overrides`` (the command line's), then, when no artifact folder is
    served, ``store_defaults(store)``: the caller's store and registry (`appsim serve` reads them from
    pipeline.yaml; serving itself never reads the pipeline's config)."""
    base = settings_from_env(
        {k: v for k, v in os.environ.items() if k != SETTINGS_ENV}
    ).model_dump(exclude_unset=True)
    values = base | {k: v for k, v in overrides.items() if v is not None}
    if not values.get("model_dir") and store_defaults is not None:
        defaults = store_defaults(values.get("store"))
        values["store"] = defaults["store"]
        values.setdefault("registry", defaults["registry"])
    try:
        settings = ServingSettings.model_validate(values)
        if not settings.endpoint_mode:
            settings.registry_uri()
    except ValidationError as error:
        raise SettingsError(describe_validation(error)) from None
    return settings


def run_server(settings: ServingSettings, *, host: str, port: int, workers: int, log_level: str,
               access_log: bool) -> None:
    """Serve until stopped (SIGTERM drains in-flight requests and flushes queued events)."""
    import uvicorn

    from serving.logs import log_config

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
