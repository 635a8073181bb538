"""Where the SageMaker pipeline runs, shared by the module that builds its definition
(``pipelines/sagemaker_pipeline.py``, the SageMaker SDK) and the one that deploys, starts and
schedules it (``pipelines/aws.py``, boto3): the ``Target`` (S3 store, job images, execution
role), the parameters only the SageMaker pipeline has, and the check that a target can be
deployed. Neither of those modules owns these, so both import them from here (no cycle); this
module needs neither boto3 nor the SDK.
"""

from __future__ import annotations

from dataclasses import dataclass

from models import storage
from pipelines import graph
from pipelines.config import ConfigError, PipelineConfig

# Parameters that only the SageMaker pipeline has: where and on what the jobs run.
INFRASTRUCTURE_PARAMETERS: tuple[str, ...] = (
    "processing_instance_type", "processing_instance_count", "training_instance_type", "training_instance_count",
)

# Placeholders that let `appsim pipeline definition` show the definition before an AWS
# account is set up; `check_deployable` refuses them, so they never reach SageMaker.
PREVIEW_STORE = "s3://your-appsim-bucket/appsim"
PREVIEW_IMAGE_URI = "000000000000.dkr.ecr.us-east-1.amazonaws.com/appsim:set-sagemaker-image-uri"
PREVIEW_ROLE_ARN = "arn:aws:iam::000000000000:role/set-sagemaker-role-arn"
PREVIEW_SPARK_IMAGE_URI = "000000000000.dkr.ecr.us-east-1.amazonaws.com/appsim-spark:set-sagemaker-spark-image-uri"
# prepare_engine=spark: PySparkProcessor submits a Python file from S3 (it cannot run a module of the
# image), so deploying copies the job's entry point here, beside the data it prepares.
SPARK_APP_MODULE = graph.PREPARE_ENTRY_MODULES["spark"]


class PipelineBuildError(ConfigError):
    """The SageMaker pipeline cannot be built, deployed or started from this configuration."""


@dataclass(frozen=True)
class Target:
    """Where the pipeline runs: the S3 store, the job image and the execution role."""

    store: str
    image_uri: str
    role_arn: str
    prepare_engine: str = "duckdb"
    spark_image_uri: str = ""  # prepare_engine=spark only

    @classmethod
    def from_config(cls, config: PipelineConfig, role_arn: str | None = None, preview: bool = False) -> "Target":
        """The deployment target; with ``preview`` missing values become labelled placeholders."""
        store = "" if storage.is_local(config.store) else config.store
        image = config.sagemaker.image_uri
        role = role_arn or config.sagemaker.role_arn
        engine = config.parameters.prepare_engine
        spark_image = config.sagemaker.spark_image_uri if engine == "spark" else ""
        if preview:
            spark_image = spark_image or (PREVIEW_SPARK_IMAGE_URI if engine == "spark" else "")
            return cls(store or PREVIEW_STORE, image or PREVIEW_IMAGE_URI, role or PREVIEW_ROLE_ARN, engine, spark_image)
        return cls(store, image, role, engine, spark_image)

    def placeholders(self) -> list[str]:
        """One note per placeholder in use (empty when deployable)."""
        notes = []
        if self.store == PREVIEW_STORE:
            notes.append(f"store {PREVIEW_STORE} (pass --store s3://bucket/prefix)")
        if self.image_uri == PREVIEW_IMAGE_URI:
            notes.append(f"image {PREVIEW_IMAGE_URI} (set sagemaker.image_uri in pipeline.yaml)")
        if self.role_arn == PREVIEW_ROLE_ARN:
            notes.append(f"role {PREVIEW_ROLE_ARN} (pass --role-arn or set sagemaker.role_arn)")
        if self.spark_image_uri == PREVIEW_SPARK_IMAGE_URI:
            notes.append(f"spark image {PREVIEW_SPARK_IMAGE_URI} (set sagemaker.spark_image_uri in pipeline.yaml)")
        return notes

    @property
    def spark_app_uri(self) -> str:
        """Where deployment puts the spark engine's entry point for PySparkProcessor to submit."""
        return storage.join(self.store, "code", SPARK_APP_MODULE.replace(".", "/") + ".py")


def check_deployable(target: Target) -> None:
    """Raise ``PipelineBuildError`` naming every missing setting before anything is sent to AWS."""
    problems = []
    if not target.store.startswith("s3://") or target.store == PREVIEW_STORE:
        problems.append("the store must be on S3: pass --store s3://bucket/prefix or set backends.store")
    if not target.image_uri or target.image_uri == PREVIEW_IMAGE_URI:
        problems.append("sagemaker.image_uri is empty: push the appsim image (serving/Dockerfile) to ECR and set it")
    if not target.role_arn or target.role_arn == PREVIEW_ROLE_ARN:
        problems.append("no execution role: pass --role-arn arn:aws:iam::<account>:role/<name> or set sagemaker.role_arn")
    if target.prepare_engine == "spark" and target.spark_image_uri in ("", PREVIEW_SPARK_IMAGE_URI):
        problems.append(
            "prepare_engine is spark but sagemaker.spark_image_uri is empty: build the SageMaker Spark 3.5 "
            "processing image with appsim installed (pip install '.[spark]'), push it to ECR and set it")
    if problems:
        raise PipelineBuildError("cannot deploy the SageMaker pipeline: " + "; ".join(problems))
