"""`appsim feedback`: feedback events on AWS (models/kinesis_source.py; the `aws` extra)."""

from __future__ import annotations

import click

from pipelines.cli.options import dump, json_option, load, store_and_config


@click.group("feedback")
def feedback_group() -> None:
    """Feedback events on AWS: copy Kinesis records into the store."""


@feedback_group.command("pull-kinesis")
@click.option("--stream", required=True, help="Kinesis data stream name.")
@store_and_config
@json_option
def pull_kinesis_command(stream: str, store: str | None, config_path: str | None, as_json: bool) -> None:
    """Read new records from a Kinesis stream into <store>/feedback (a checkpoint skips what was read)."""
    from pipelines import kinesis_source

    config = load(config_path, store)
    result = kinesis_source.pull(stream, config.store, region=config.sagemaker.region)
    if as_json:
        dump({"stream": stream, "records": result.records, "objects": result.objects, "shards": result.shards,
              "checkpoint_uri": result.checkpoint_uri})
        return
    click.echo(f"pulled {result.records:,} records from {stream} into {result.objects} objects "
               f"({result.shards} shards; checkpoint {result.checkpoint_uri})")
