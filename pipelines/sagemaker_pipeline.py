"""The retraining graph (pipelines/graph.py) as a SageMaker pipeline, with the SageMaker Python SDK v3.

This is the one module that imports the SDK (1.2 GB, pinned to sagemaker==3.27.0 in the `aws`
extra); everything else talks to AWS with boto3, and the embedded mode never loads it.

    PrepareFeedback (Processing: python -m steps.prepare; with prepare_engine=spark a PySparkProcessor
                     on processing_instance_count instances submitting steps/prepare_spark_job.py)
      -> TrainEmbeddings (Training: python -m steps.train)
      -> EvaluateCandidate (Processing: python -m steps.evaluate; evaluation.json is a PropertyFile)
      -> CheckImprovement (JsonGet(evaluation.json, "improved") == True)
           true  -> RegisterCandidate (approval_status parameter: Approved | PendingManualApproval)
           false -> RegisterRejected  (Rejected: recorded, and the execution still succeeds)

Building the definition is offline: every S3 location is explicit (the store's
``runs/<execution id>/<prepare|train|evaluate>``, as local runs), no code is uploaded (the job
image already holds the appsim packages), and the SDK's telemetry is switched off, so
``appsim pipeline definition`` needs neither credentials nor network. (The spark engine's entry
point is submitted from S3; deployment, not the build, copies it there: pipelines/aws.py.)

The prepare engine is fixed when the definition is built: the two engines are different step
types, so ``prepare_engine`` is not an execution parameter (graph.BUILD_PARAMETERS).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

import boto3

from models import layout, storage
from models.notifications import TOPIC_ENV
from models.registry_sagemaker import LINEAGE_PREFIX, METRIC_PREFIX, NUMBER_PREFIX, STRING_PREFIX
from pipelines import graph
from pipelines.config import PipelineConfig, PipelineParameters
from pipelines.sagemaker_target import INFRASTRUCTURE_PARAMETERS, Target

# Importing the SDK creates boto3 clients at import time, which needs a region (no network).
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# ModelTrainer checks the role with IAM policy simulation while the definition is built (a
# network call that needs credentials); SageMaker checks it anyway when the jobs start.
os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")

from sagemaker.core.processing import Processor  # noqa: E402
from sagemaker.core.spark.processing import PySparkProcessor  # noqa: E402
from sagemaker.core.shapes import (  # noqa: E402
    MetricsSource,
    ModelMetrics,
    ModelQuality,
    ProcessingInput,
    ProcessingOutput,
    ProcessingS3Input,
    ProcessingS3Output,
)
from sagemaker.core.training.configs import Compute, InputData, OutputDataConfig  # noqa: E402
from sagemaker.core.workflow.conditions import ConditionEquals  # noqa: E402
from sagemaker.core.workflow.execution_variables import ExecutionVariables  # noqa: E402
from sagemaker.core.workflow.functions import Join, JsonGet  # noqa: E402
from sagemaker.core.workflow.parameters import (  # noqa: E402
    Parameter,
    ParameterBoolean,
    ParameterFloat,
    ParameterInteger,
    ParameterString,
)
from sagemaker.core.workflow.pipeline_context import PipelineSession  # noqa: E402
from sagemaker.core.workflow.properties import PropertyFile  # noqa: E402
from sagemaker.mlops.workflow.condition_step import ConditionStep  # noqa: E402
from sagemaker.mlops.workflow.model_step import ModelStep  # noqa: E402
from sagemaker.mlops.workflow.pipeline import Pipeline  # noqa: E402
from sagemaker.mlops.workflow.retry import (  # noqa: E402
    SageMakerJobExceptionTypeEnum,
    SageMakerJobStepRetryPolicy,
    StepExceptionTypeEnum,
    StepRetryPolicy,
)
from sagemaker.mlops.workflow.steps import CacheConfig, ProcessingStep, TrainingStep  # noqa: E402
from sagemaker.serve.model_builder import ModelBuilder  # noqa: E402
from sagemaker.train import ModelTrainer  # noqa: E402

# SageMaker's container paths (the entry points' defaults read the same ones).
PROCESSING_INPUT = "/opt/ml/processing/input"
PROCESSING_OUTPUT = "/opt/ml/processing/output"

REPORT_PROPERTY_FILE = "EvaluationReport"
# Run parameters a registered version records as lineage (besides the execution and training job).
LINEAGE_PARAMETERS: tuple[str, ...] = ("feedback_uri", "window_end", "window_days", "seed")
# What the registry (models/registry_sagemaker.py) reads back as a version's metrics.
REGISTERED_METRICS: tuple[str, ...] = (
    "recall_at_10", "precision_at_10", "ndcg_at_10", "map_at_10", "coverage", "ctr_mae",
)
REGISTERED_COMPARISON: tuple[str, ...] = ("relative_improvement", "ci_low", "ci_high")

def parameter_defaults(config: PipelineConfig, store: str) -> dict[str, Any]:
    """Every pipeline parameter's default, in graph.PARAMETERS order, then the infrastructure ones."""
    defaults: dict[str, Any] = {
        "feedback_uri": layout.feedback_uri(store),
        "catalog_uri": layout.catalog_uri(store),
        **config.parameters.model_dump(exclude=set(graph.BUILD_PARAMETERS)),
    }
    settings = config.sagemaker
    defaults.update({name: getattr(settings, name) for name in INFRASTRUCTURE_PARAMETERS})
    return defaults


def _parameter(name: str, default: Any) -> Parameter:
    """A pipeline parameter of the config field's type (a Literal becomes a String with enum values)."""
    field = PipelineParameters.model_fields.get(name)
    kind = field.annotation if field is not None else type(default)
    if kind is bool:
        return ParameterBoolean(name=name, default_value=default)
    if kind is int:
        return ParameterInteger(name=name, default_value=default)
    if kind is float:
        return ParameterFloat(name=name, default_value=float(default))
    choices = getattr(kind, "__args__", None)
    return ParameterString(name=name, default_value=default, enum_values=list(choices) if choices else None)


def _session(region: str) -> PipelineSession:
    """A session that never calls AWS while the definition is built: telemetry off, explicit region.

    (A non-empty SDK config costs ~0.2 s a lookup, ~10 s a build: the SDK re-validates it
    against its JSON schema every time. Offline beats fast here.)
    """
    config = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}
    return PipelineSession(boto_session=boto3.Session(region_name=region), sagemaker_config=config)


def _cli_args(params: dict[str, Parameter], names: tuple[str, ...]) -> list[Any]:
    """``--window-days <parameter>`` pairs; every value as a string, as container arguments must be."""
    args: list[Any] = []
    for name in names:
        args += [f"--{name.replace('_', '-')}", params[name].to_string()]
    return args


class _EntryPointTrainingStep(TrainingStep):
    """A TrainingStep whose container runs ``python -m steps.train``.

    ModelTrainer only sets a container entry point together with ``SourceCode``, which uploads the
    SDK's driver scripts to S3 while the definition is built (a network call, and a timestamped
    path in the definition). The appsim image already holds the code, so the entry point is set
    on the request instead, the field CreateTrainingJob documents for it.
    """

    def __init__(self, *args: Any, entry_point: list[str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.entry_point = entry_point

    @property
    def arguments(self) -> dict[str, Any]:
        request = super().arguments
        request["AlgorithmSpecification"]["ContainerEntrypoint"] = self.entry_point
        return request


def _entry_point(step_name: str) -> list[str]:
    module = graph.step(step_name).entry_module
    return ["python", "-m", module]


def build_pipeline(config: PipelineConfig, target: Target) -> Pipeline:
    """The SageMaker pipeline for this config, built offline (nothing is sent to AWS)."""
    settings = config.sagemaker
    session = _session(settings.region)
    defaults = parameter_defaults(config, target.store)
    params = {name: _parameter(name, value) for name, value in defaults.items()}
    run_prefix = storage.join(target.store, "runs")

    def step_output(step_name: str) -> Join:
        # <store>/runs/<execution id>/<prepare|train|evaluate>: the local runner's layout.
        return Join(on="/", values=[run_prefix, ExecutionVariables.PIPELINE_EXECUTION_ID, graph.step(step_name).folder])

    cache = CacheConfig(enable_caching=True, expire_after=settings.cache_expire_after)
    job_retries = [
        SageMakerJobStepRetryPolicy(
            exception_types=[SageMakerJobExceptionTypeEnum.CAPACITY_ERROR, SageMakerJobExceptionTypeEnum.INTERNAL_ERROR],
            max_attempts=settings.max_retries + 1, interval_seconds=60, backoff_rate=2.0,
        ),
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
            max_attempts=settings.max_retries + 1, interval_seconds=30, backoff_rate=2.0,
        ),
    ]
    register_retries = [job_retries[1]]  # model steps accept only step-level retry policies

    def processor(step_name: str, env: dict[str, str] | None = None) -> Processor:
        return Processor(
            role=target.role_arn, image_uri=target.image_uri, entrypoint=_entry_point(step_name),
            instance_type=params["processing_instance_type"], instance_count=params["processing_instance_count"],
            base_job_name=f"appsim-{step_name.lower()}", sagemaker_session=session, env=env,
        )

    def s3_input(name: str, uri: Any) -> ProcessingInput:
        return ProcessingInput(input_name=name, s3_input=ProcessingS3Input(
            s3_uri=uri, local_path=f"{PROCESSING_INPUT}/{name}", s3_data_type="S3Prefix", s3_input_mode="File",
        ))

    def s3_output(name: str, uri: Any) -> ProcessingOutput:
        return ProcessingOutput(output_name=name, s3_output=ProcessingS3Output(
            s3_uri=uri, local_path=f"{PROCESSING_OUTPUT}/{name}", s3_upload_mode="EndOfJob",
        ))

    # PrepareFeedback reads the feedback prefix by URI instead of a ProcessingInput: the window
    # selects a few hour folders of an ever-growing prefix, which a download would copy whole.
    prepare_spec = graph.step("PrepareFeedback")
    prepare_run: dict[str, Any] = dict(
        inputs=[s3_input("catalog", params["catalog_uri"])],
        outputs=[s3_output("prepared", step_output(prepare_spec.name))],
        arguments=[
            "--feedback", params["feedback_uri"],
            "--catalog", f"{PROCESSING_INPUT}/catalog",
            "--output", f"{PROCESSING_OUTPUT}/prepared",
            *_cli_args(params, graph.run_keywords(prepare_spec)),
        ],
    )
    if target.prepare_engine == "spark":
        # smspark-submit makes the instances one YARN cluster; the job reads feedback with s3a.
        spark = PySparkProcessor(
            role=target.role_arn, image_uri=target.spark_image_uri,
            instance_type=params["processing_instance_type"], instance_count=params["processing_instance_count"],
            base_job_name=f"appsim-{prepare_spec.name.lower()}", sagemaker_session=session,
        )
        prepare_args = spark.run(submit_app=target.spark_app_uri, **prepare_run)
    else:
        prepare_args = processor(prepare_spec.name).run(**prepare_run)
    prepare = ProcessingStep(
        name=prepare_spec.name, step_args=prepare_args, cache_config=cache, retry_policies=job_retries,
    )
    prepared_uri = prepare.properties.ProcessingOutputConfig.Outputs["prepared"].S3Output.S3Uri

    train_spec = graph.step("TrainEmbeddings")
    trainer = ModelTrainer(
        training_image=target.image_uri, role=target.role_arn, sagemaker_session=session,
        base_job_name="appsim-train",
        compute=Compute(instance_type=params["training_instance_type"],
                        instance_count=params["training_instance_count"]),
        output_data_config=OutputDataConfig(s3_output_path=step_output(train_spec.name)),
        # Hyperparameters reach the job as strings (SM_HPS); steps.train coerces them back.
        hyperparameters={n: params[n].to_string() for n in graph.run_keywords(train_spec)},
    )
    train = _EntryPointTrainingStep(
        name=train_spec.name,
        step_args=trainer.train(input_data_config=[
            InputData(channel_name="prepared", data_source=prepared_uri),
            InputData(channel_name="catalog", data_source=params["catalog_uri"]),
        ]),
        entry_point=_entry_point(train_spec.name),
        cache_config=cache, retry_policies=job_retries,
    )
    model_uri = train.properties.ModelArtifacts.S3ModelArtifacts

    evaluate_spec = graph.step("EvaluateCandidate")
    report = PropertyFile(name=REPORT_PROPERTY_FILE, output_name="evaluation", path=graph.CONDITION.report_file)
    evaluation_dir = step_output(evaluate_spec.name)
    evaluate = ProcessingStep(
        name=evaluate_spec.name,
        # EvaluateCandidate announces the gate's decision when a topic is configured (models/notifications.py).
        step_args=processor(evaluate_spec.name, {TOPIC_ENV: config.notifications.sns_topic_arn}
                            if config.notifications.sns_topic_arn else None).run(
            inputs=[s3_input("prepared", prepared_uri), s3_input("model", model_uri)],
            outputs=[s3_output("evaluation", evaluation_dir)],
            arguments=[
                "--prepared", f"{PROCESSING_INPUT}/prepared",
                "--model", f"{PROCESSING_INPUT}/model",
                "--output", f"{PROCESSING_OUTPUT}/evaluation",
                "--registry", f"sagemaker://{settings.model_package_group}",
                *_cli_args(params, graph.run_keywords(evaluate_spec)),
            ],
        ),
        property_files=[report], cache_config=cache, retry_policies=job_retries,
    )
    evaluation_uri = Join(on="/", values=[
        evaluate.properties.ProcessingOutputConfig.Outputs["evaluation"].S3Output.S3Uri, graph.CONDITION.report_file,
    ])

    def report_value(path: str) -> JsonGet:
        return JsonGet(step_name=evaluate.name, property_file=report, json_path=path)

    # Customer metadata in the encoding models/registry_sagemaker.py reads back (values are
    # restricted to letters, digits and _.:/=+-@, so numbers carry a prefix, not JSON quotes).
    metadata: dict[str, Any] = {
        **{f"{METRIC_PREFIX}{name}": Join(on="", values=[NUMBER_PREFIX, report_value(f"candidate.{name}")])
           for name in REGISTERED_METRICS},
        **{f"{METRIC_PREFIX}{name}": Join(on="", values=[NUMBER_PREFIX, report_value(f"comparison.{name}")])
           for name in REGISTERED_COMPARISON},
        f"{LINEAGE_PREFIX}pipeline_execution_arn": ExecutionVariables.PIPELINE_EXECUTION_ARN,
        f"{LINEAGE_PREFIX}training_job": train.properties.TrainingJobName,
        f"{LINEAGE_PREFIX}image_uri": Join(on="", values=[STRING_PREFIX, target.image_uri]),
        **{f"{LINEAGE_PREFIX}{name}": Join(on="", values=[
            STRING_PREFIX if isinstance(params[name], ParameterString) else NUMBER_PREFIX, params[name].to_string(),
        ]) for name in LINEAGE_PARAMETERS},
    }
    metrics = ModelMetrics(model_quality=ModelQuality(
        statistics=MetricsSource(content_type="application/json", s3_uri=evaluation_uri),
    ))

    def register_step(step_name: str, approval_status: Any) -> ModelStep:
        builder = ModelBuilder(
            image_uri=target.image_uri, s3_model_data_url=model_uri, role_arn=target.role_arn,
            sagemaker_session=session,
            dependencies=None,  # the default {"auto": True} uploads code to the default bucket
        )
        return ModelStep(
            name=step_name,
            step_args=builder.register(
                model_package_group_name=settings.model_package_group,
                content_types=["application/json"], response_types=["application/json"],
                approval_status=approval_status, model_metrics=metrics,
                customer_metadata_properties=metadata,
            ),
            retry_policies=register_retries,
        )

    condition = graph.CONDITION
    register_candidate = register_step("RegisterCandidate", params["approval_status"])
    register_rejected = register_step("RegisterRejected", "Rejected")
    check = ConditionStep(
        name="CheckImprovement",
        conditions=[ConditionEquals(left=report_value(condition.json_path), right=condition.equals)],
        if_steps=[register_candidate],
        else_steps=[register_rejected],
    )
    return Pipeline(
        name=config.pipeline_name,
        parameters=list(params.values()),
        steps=[prepare, train, evaluate, check],
        sagemaker_session=session,
    )


def definition(config: PipelineConfig, target: Target) -> dict[str, Any]:
    """The pipeline definition JSON as a dict (what CreatePipeline receives)."""
    with _quiet_sdk():
        return json.loads(build_pipeline(config, target).definition())


@contextmanager
def _quiet_sdk() -> Iterator[None]:
    """Building logs every default the SDK applies and every field it drops (~20 lines, all
    expected); errors still show."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Running within a PipelineSession")
            yield
    finally:
        logging.disable(previous)
