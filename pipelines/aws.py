"""Running the retraining pipeline on AWS with boto3: deploy (upsert), start, watch, schedule.

The definition itself comes from pipelines/sagemaker_pipeline.py (the one module that imports
the SageMaker SDK, loaded only when a definition is needed); starting, watching and scheduling
an already deployed pipeline need boto3 alone.

The weekly schedule is an EventBridge Scheduler schedule whose target calls
``sagemaker:StartPipelineExecution`` with the pipeline parameters of pipeline.yaml, and with
``window_end`` set to the schedule's own fire time (``<aws.scheduler.scheduled-time>``), so each
weekly run trains on its own window and never reuses a cached step of the week before.
"""

from __future__ import annotations

import importlib.util
import json
import time
from datetime import datetime, timezone
from typing import Any, Callable

import boto3
from botocore.exceptions import ClientError

from models import storage
from models.notifications import TOPIC_ENV
from models.registry_sagemaker import SageMakerRegistry
from pipelines import graph, sagemaker_target
from pipelines.config import PipelineConfig
from pipelines.sagemaker_target import SPARK_APP_MODULE, PipelineBuildError, Target, check_deployable

Echo = Callable[[str], None]

TERMINAL_STATUSES = ("Succeeded", "Failed", "Stopped")
# EventBridge Scheduler's universal target for the SageMaker API, and its context attribute
# for the time the schedule fired (substituted into the target input on every run).
START_PIPELINE_TARGET = "arn:aws:scheduler:::aws-sdk:sagemaker:startPipelineExecution"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
# The daily A/B decision runs as a one-off Processing job; each firing needs a unique job name.
CREATE_PROCESSING_JOB_TARGET = "arn:aws:scheduler:::aws-sdk:sagemaker:createProcessingJob"
EXECUTION_ID = "<aws.scheduler.execution-id>"

def sagemaker_client(config: PipelineConfig) -> Any:
    return boto3.client("sagemaker", region_name=config.sagemaker.region)


# -- deploy ----------------------------------------------------------------------------
def upsert_pipeline(config: PipelineConfig, role_arn: str | None = None, client: Any = None,
                    definition: dict[str, Any] | None = None) -> str:
    """Create or update the pipeline; returns its ARN.

    ``definition``: a definition built before (`appsim pipeline definition --out`, reviewed or
    archived by CI); default: build it now from ``config``.
    """
    target = Target.from_config(config, role_arn)
    check_deployable(target)
    if definition is None:
        from pipelines import sagemaker_pipeline  # the SDK is loaded only here

        definition = sagemaker_pipeline.definition(config, target)
    body = json.dumps(definition)
    client = client or sagemaker_client(config)
    if target.prepare_engine == "spark":
        storage.write_bytes(target.spark_app_uri, _module_source(SPARK_APP_MODULE))
    # The register steps need the model package group to exist; creating it here means the
    # execution role never needs to.
    SageMakerRegistry(config.sagemaker.model_package_group, client=client)
    request = {
        "PipelineName": config.pipeline_name,
        "PipelineDefinition": body,
        "PipelineDescription": "appsim: prepare feedback, train app embeddings, evaluate, register",
        "RoleArn": target.role_arn,
    }
    try:
        client.describe_pipeline(PipelineName=config.pipeline_name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in ("ResourceNotFound", "ValidationException"):
            raise
        return client.create_pipeline(**request)["PipelineArn"]
    return client.update_pipeline(**request)["PipelineArn"]


def _module_source(module: str) -> bytes:
    with open(importlib.util.find_spec(module).origin, "rb") as handle:
        return handle.read()


# -- start and watch -------------------------------------------------------------------
def parameter_value(value: Any) -> str:
    """A pipeline parameter value as SageMaker takes it (booleans as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def execution_parameters(config: PipelineConfig, overrides: dict[str, Any], now: datetime | None = None) -> dict[str, str]:
    """The parameters to start a run with: the overrides (validated), and an explicit window end.

    An empty ``window_end`` means "now" to the steps, but it would also give every run the same
    arguments, and a cached PrepareFeedback of an earlier run would be reused: so it is resolved
    here. Data locations and instance types and counts pass through as given. Build parameters
    (prepare_engine) are not execution parameters: ``retrain_on_sagemaker`` deploys with them.
    """
    model, passthrough = _split(overrides)
    model = {k: v for k, v in model.items() if k not in graph.BUILD_PARAMETERS}
    params = config.with_overrides(model).parameters
    chosen = {name: getattr(params, name) for name in model}
    if not params.window_end:
        moment = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        chosen["window_end"] = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {name: parameter_value(value) for name, value in {**chosen, **passthrough}.items()}


def _split(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model parameters, validated by the config; data locations and instances, passed as given)."""
    passthrough_names = set(graph.DATA_PARAMETERS) | set(sagemaker_target.INFRASTRUCTURE_PARAMETERS)
    model = {k: v for k, v in overrides.items() if k not in passthrough_names}
    passthrough = {k: v for k, v in overrides.items() if k in passthrough_names}
    return model, passthrough


def start_execution(pipeline_name: str, parameters: dict[str, str], client: Any, display_name: str = "") -> str:
    request: dict[str, Any] = {
        "PipelineName": pipeline_name,
        "PipelineParameters": [{"Name": k, "Value": v} for k, v in sorted(parameters.items())],
    }
    if display_name:
        request["PipelineExecutionDisplayName"] = display_name
    return client.start_pipeline_execution(**request)["PipelineExecutionArn"]


def execution_steps(execution_arn: str, client: Any) -> list[dict[str, Any]]:
    """Step name, status and failure reason of an execution, in the order they started."""
    steps: list[dict[str, Any]] = []
    for page in client.get_paginator("list_pipeline_execution_steps").paginate(
        PipelineExecutionArn=execution_arn, SortOrder="Ascending",
    ):
        for step in page["PipelineExecutionSteps"]:
            steps.append({
                "name": step["StepName"], "status": step.get("StepStatus", ""),
                "failure_reason": step.get("FailureReason", ""),
                "cache_hit": bool(step.get("CacheHitResult")),
            })
    return steps


def wait_for_execution(execution_arn: str, client: Any, echo: Echo, poll_seconds: float = 30.0,
                       sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Poll until the execution ends, printing every step status change; returns the final state."""
    seen: dict[str, str] = {}
    while True:
        status = client.describe_pipeline_execution(PipelineExecutionArn=execution_arn)["PipelineExecutionStatus"]
        steps = execution_steps(execution_arn, client)
        for step in steps:
            if seen.get(step["name"]) != step["status"]:
                seen[step["name"]] = step["status"]
                extra = " (cached)" if step["cache_hit"] else ""
                extra += f": {step['failure_reason']}" if step["failure_reason"] else ""
                echo(f"  {step['name']}: {step['status']}{extra}")
        if status in TERMINAL_STATUSES:
            echo(f"execution {status}: {execution_arn}")
            return {"status": status, "steps": steps}
        sleep(poll_seconds)


def retrain_on_sagemaker(config: PipelineConfig, overrides: dict, wait: bool, echo: Echo,
                         client: Any = None, poll_seconds: float = 30.0) -> dict:
    """`appsim retrain --on sagemaker`: upsert the pipeline, start it with the overrides, maybe wait."""
    client = client or sagemaker_client(config)
    config = config.with_overrides({k: v for k, v in overrides.items() if k in graph.BUILD_PARAMETERS})
    parameters = execution_parameters(config, overrides)
    pipeline_arn = upsert_pipeline(config, client=client)
    echo(f"pipeline {config.pipeline_name} deployed: {pipeline_arn}")
    execution_arn = start_execution(config.pipeline_name, parameters, client)
    echo(f"started {execution_arn} with " + ", ".join(f"{k}={v}" for k, v in sorted(parameters.items())))
    result: dict[str, Any] = {"pipeline_arn": pipeline_arn, "execution_arn": execution_arn, "parameters": parameters}
    if wait:
        result.update(wait_for_execution(execution_arn, client, echo, poll_seconds))
    return result


# -- schedule --------------------------------------------------------------------------
def scheduler_client(config: PipelineConfig) -> Any:
    return boto3.client("scheduler", region_name=config.sagemaker.region)


def schedule_target(config: PipelineConfig, role_arn: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The schedule's target: StartPipelineExecution with every parameter of pipeline.yaml."""
    model, passthrough = _split(overrides or {})
    chosen_at_deployment = sorted(set(model) & set(graph.BUILD_PARAMETERS))
    if chosen_at_deployment:
        raise PipelineBuildError(
            f"{', '.join(chosen_at_deployment)} is chosen when the pipeline is deployed, not by the schedule: "
            "set it in pipeline.yaml (or pass it to `appsim retrain --on sagemaker`), which redeploys the pipeline")
    params = config.with_overrides(model).parameters.model_dump(exclude=set(graph.BUILD_PARAMETERS))
    params["window_end"] = SCHEDULED_TIME
    params.update(passthrough)
    body = {
        "PipelineName": config.pipeline_name,
        "PipelineExecutionDescription": f"weekly retrain by schedule {config.schedule.name}",
        "PipelineParameters": [{"Name": k, "Value": parameter_value(v)} for k, v in sorted(params.items())],
    }
    return {"Arn": START_PIPELINE_TARGET, "RoleArn": role_arn, "Input": json.dumps(body, sort_keys=True)}


def set_schedule(config: PipelineConfig, role_arn: str, overrides: dict[str, Any] | None = None, client: Any = None) -> str:
    """Create or update the weekly schedule (cron and timezone from pipeline.yaml); returns its ARN."""
    if not role_arn:
        raise PipelineBuildError(
            "the schedule needs a role EventBridge Scheduler can assume with sagemaker:StartPipelineExecution: "
            "pass --role-arn arn:aws:iam::<account>:role/<name>"
        )
    client = client or scheduler_client(config)
    request = {
        "Name": config.schedule.name,
        "ScheduleExpression": config.schedule.cron,
        "ScheduleExpressionTimezone": config.schedule.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": schedule_target(config, role_arn, overrides),
        "State": "ENABLED",
        "Description": f"appsim: start SageMaker pipeline {config.pipeline_name}",
    }
    return _upsert_schedule(client, request)


def _upsert_schedule(client: Any, request: dict[str, Any]) -> str:
    try:
        return client.create_schedule(**request)["ScheduleArn"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") != "ConflictException":
            raise
    return client.update_schedule(**request)["ScheduleArn"]


def show_schedule(config: PipelineConfig, client: Any = None) -> dict[str, Any] | None:
    """The schedule as stored (target input decoded), or None when there is none."""
    client = client or scheduler_client(config)
    try:
        schedule = client.get_schedule(Name=config.schedule.name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return None
        raise
    target = schedule.get("Target", {})
    parameters = {}
    if target.get("Input"):
        parameters = {p["Name"]: p["Value"] for p in json.loads(target["Input"]).get("PipelineParameters", [])}
    return {
        "name": schedule["Name"], "arn": schedule.get("Arn"), "state": schedule.get("State"),
        "cron": schedule.get("ScheduleExpression"), "timezone": schedule.get("ScheduleExpressionTimezone"),
        "target": target.get("Arn"), "role_arn": target.get("RoleArn"), "parameters": parameters,
    }


def delete_schedule(config: PipelineConfig, client: Any = None) -> bool:
    """Delete the schedule; False when there was none."""
    client = client or scheduler_client(config)
    try:
        client.delete_schedule(Name=config.schedule.name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise
    return True


# -- the daily A/B decision -------------------------------------------------------------
def decision_job(config: PipelineConfig, job_role_arn: str, job_name: str = f"appsim-ab-decide-{EXECUTION_ID}") -> dict[str, Any]:
    """CreateProcessingJob arguments that run `appsim ab decide` once in the appsim image (the
    image's pipeline.yaml supplies the backends; the store and the topic come from here)."""
    environment = {"APPSIM_STORE": config.store}
    if config.notifications.sns_topic_arn:
        environment[TOPIC_ENV] = config.notifications.sns_topic_arn
    return {
        "ProcessingJobName": job_name,
        "RoleArn": job_role_arn,
        "AppSpecification": {"ImageUri": config.sagemaker.image_uri,
                             "ContainerEntrypoint": ["appsim", "ab", "decide", "--json"]},
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": config.sagemaker.processing_instance_type,
                                                  "VolumeSizeInGB": 5}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "Environment": environment,
    }


def set_decision_schedule(config: PipelineConfig, role_arn: str, job_role_arn: str, client: Any = None) -> str:
    """Create or update the daily decision schedule (``rollout.schedule``): each firing runs
    `appsim ab decide` as a small SageMaker Processing job; returns the schedule's ARN."""
    if not role_arn or not job_role_arn:
        raise PipelineBuildError("the decision schedule needs --role-arn (assumed by EventBridge Scheduler, with "
                                 "sagemaker:CreateProcessingJob and iam:PassRole on the job role) and --job-role-arn "
                                 "(the SageMaker execution role the job runs as)")
    if not config.sagemaker.image_uri:
        raise PipelineBuildError("the decision job runs the appsim image: set sagemaker.image_uri or pass --image-uri")
    settings = config.rollout.schedule
    return _upsert_schedule(client or scheduler_client(config), {
        "Name": settings.name,
        "ScheduleExpression": settings.cron,
        "ScheduleExpressionTimezone": settings.timezone,
        "FlexibleTimeWindow": {"Mode": "OFF"},
        "Target": {"Arn": CREATE_PROCESSING_JOB_TARGET, "RoleArn": role_arn,
                   "Input": json.dumps(decision_job(config, job_role_arn), sort_keys=True),
                   "RetryPolicy": {"MaximumRetryAttempts": 3, "MaximumEventAgeInSeconds": 3600}},
        "State": "ENABLED",
        "Description": "appsim: daily A/B decision (`appsim ab decide`)",
    })
