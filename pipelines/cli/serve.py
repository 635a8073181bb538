"""`appsim serve`: the serving app (serving/server.py) with pipeline.yaml's store and registry as defaults.

The command line is parsed here and serving is handed typed settings: serving never imports
`pipelines`, so the container and a SageMaker endpoint run it without the pipeline's config.
"""

from __future__ import annotations

from typing import Any

import click

from pipelines.cli.options import config_option, load


@click.command("serve")
@click.option("--store", default=None, metavar="PATH|URI",
              help="Store folder or URI whose champion is served. Default: $APPSIM_STORE, else backends.store in "
                   "pipeline.yaml.")
@config_option
@click.option("--host", envvar="APPSIM_HOST", default="127.0.0.1", show_default=True,
              help="Interface to listen on (the container sets APPSIM_HOST=0.0.0.0).")
@click.option("--port", envvar="APPSIM_PORT", default=8080, show_default=True, type=int, help="Port to listen on.")
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
              type=click.Choice(["debug", "info", "warning", "error"]), help="Server log level.")
@click.option("--access-log/--no-access-log", default=False, show_default=True, help="Log every request.")
def serve_command(config_path: str | None, host: str, port: int, workers: int, log_level: str, access_log: bool,
                  api_keys: str | None, **overrides: Any) -> None:
    """Serve similar apps and performance predictions (SageMaker contract + /v1 API) on HOST:PORT."""
    from serving.server import build_settings, run_server
    from serving.settings import parse_api_keys

    def store_defaults(store: str | None) -> dict[str, str]:
        config = load(config_path, store, writing=False)  # serving only reads the store
        return {"store": config.store, "registry": config.registry_uri}

    if api_keys is not None:
        overrides["api_keys"] = parse_api_keys(api_keys)
    settings = build_settings(overrides, store_defaults)
    run_server(settings, host=host, port=port, workers=workers, log_level=log_level, access_log=access_log)
