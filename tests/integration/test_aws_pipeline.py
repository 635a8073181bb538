"""The SageMaker pipeline: its definition (offline, golden, equal to the local graph) and its
deployment, start and schedule against moto.

The definition is built once per module and prepare engine (the SDK import and build take ~15 s),
through the `appsim pipeline definition` command with no credentials and every non-loopback
connection refused. The spark engine's definition differs in PrepareFeedback alone (a PySparkProcessor).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import yaml
from click.testing import CliRunner
from moto import mock_aws

from pipelines import aws, graph, sagemaker_target
from pipelines.config import REPOSITORY_CONFIG, load_config
from tests.conftest import set_aws_env

GOLDEN = {
    "duckdb": Path(__file__).parent / "golden" / "sagemaker_definition.json",
    "spark": Path(__file__).parent / "golden" / "sagemaker_definition_spark.json",
}
STORE = "s3://appsim-test-store/appsim"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim:1.0.0"
SPARK_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim-spark:1.0.0"
ROLE = "arn:aws:iam::123456789012:role/AppsimSageMakerExecution"
SCHEDULER_ROLE = "arn:aws:iam::123456789012:role/AppsimScheduler"
# SDK-generated names carry a timestamp (e.g. base job names, code prefixes): normalised.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d{3}")
KIND_OF_TYPE = {"Processing": "processing", "Training": "training", "Condition": "condition", "RegisterModel": "register"}


def _config_file(tmp_path: Path, prepare_engine: str = "duckdb") -> Path:
    raw = yaml.safe_load(REPOSITORY_CONFIG.read_text())
    raw["sagemaker"].update(image_uri=IMAGE, role_arn=ROLE)
    raw["backends"] = {"store": STORE, "registry": "sagemaker://appsim-app-embeddings"}
    if prepare_engine == "spark":
        raw["parameters"]["prepare_engine"] = "spark"
        raw["sagemaker"]["spark_image_uri"] = SPARK_IMAGE
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def config_path(tmp_path_factory) -> Path:
    return _config_file(tmp_path_factory.mktemp("config"))


@pytest.fixture(scope="module")
def spark_config_path(tmp_path_factory) -> Path:
    return _config_file(tmp_path_factory.mktemp("config"), "spark")


def _build_definition(tmp_path_factory, config_path: Path) -> Iterator[dict[str, Any]]:
    """`appsim pipeline definition --out FILE`, offline: no credentials, no network."""
    from pipelines.cli import cli

    tmp = tmp_path_factory.mktemp("definition")
    with pytest.MonkeyPatch.context() as monkeypatch:
        set_aws_env(monkeypatch, tmp)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name)
        out = tmp / "definition.json"
        result = CliRunner().invoke(cli, ["pipeline", "definition", "--config", str(config_path), "--out", str(out)])
        assert result.exit_code == 0, result.output + repr(result.exception)
        yield json.loads(out.read_text())


@pytest.fixture(scope="module")
def definition(tmp_path_factory, config_path: Path) -> Iterator[dict[str, Any]]:
    yield from _build_definition(tmp_path_factory, config_path)


@pytest.fixture(scope="module")
def spark_definition(tmp_path_factory, spark_config_path: Path) -> Iterator[dict[str, Any]]:
    yield from _build_definition(tmp_path_factory, spark_config_path)


@pytest.fixture(params=["duckdb", "spark"])
def engine_definition(request) -> tuple[str, dict[str, Any]]:
    """(prepare_engine, its definition): for the checks both definitions must pass."""
    fixture = "definition" if request.param == "duckdb" else "spark_definition"
    return request.param, request.getfixturevalue(fixture)


def normalised(definition: dict[str, Any]) -> dict[str, Any]:
    return json.loads(TIMESTAMP.sub("<timestamp>", json.dumps(definition, sort_keys=True)))


def all_steps(definition: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step by name, the condition's branches included."""
    steps: dict[str, dict[str, Any]] = {}
    pending = list(definition["Steps"])
    while pending:
        step = pending.pop()
        steps[step["Name"]] = step
        if step["Type"] == "Condition":
            pending += step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]
    return steps


def references(node: Any, prefix: str) -> set[str]:
    """Names after ``prefix`` in every {"Get": "<prefix><name>..."} below ``node``."""
    found: set[str] = set()
    if isinstance(node, dict):
        get = node.get("Get")
        if isinstance(get, str) and get.startswith(prefix):
            found.add(re.split(r"[.\[]", get[len(prefix):], maxsplit=1)[0])
        for key, value in node.items():
            if key not in ("IfSteps", "ElseSteps"):
                found |= references(value, prefix)
    elif isinstance(node, list):
        for item in node:
            found |= references(item, prefix)
    return found


def definition_edges(definition: dict[str, Any]) -> set[tuple[str, str]]:
    edges = set()
    for name, step in all_steps(definition).items():
        for upstream in references(step, "Steps.") | set(step.get("DependsOn", [])):
            edges.add((upstream, name))
        if step["Type"] == "Condition":
            for branch in step["Arguments"]["IfSteps"] + step["Arguments"]["ElseSteps"]:
                edges.add((name, branch["Name"]))
    return edges


def closure(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    reached = set(edges)
    while True:
        more = {(a, d) for a, b in reached for c, d in reached if b == c} - reached
        if not more:
            return reached
        reached |= more


# -- the definition -----------------------------------------------------------------------
def test_definition_has_the_five_steps_and_every_parameter(engine_definition):
    _, definition = engine_definition
    steps = all_steps(definition)
    assert {name: KIND_OF_TYPE[step["Type"]] for name, step in steps.items()} == {s.name: s.kind for s in graph.STEPS}
    names = [p["Name"] for p in definition["Parameters"]]
    assert names == list(graph.PARAMETERS) + list(sagemaker_target.INFRASTRUCTURE_PARAMETERS)
    assert "prepare_engine" in graph.BUILD_PARAMETERS and "prepare_engine" not in names  # fixed at build time
    config = load_config()
    defaults = {p["Name"]: p["DefaultValue"] for p in definition["Parameters"]}
    expected = config.parameters.model_dump(exclude=set(graph.BUILD_PARAMETERS))
    assert {k: defaults[k] for k in expected} == expected
    assert defaults["feedback_uri"] == f"{STORE}/feedback"
    assert defaults["catalog_uri"] == f"{STORE}/catalog/apps.parquet"
    approval = next(p for p in definition["Parameters"] if p["Name"] == "approval_status")
    assert approval["EnumValues"] == ["Approved", "PendingManualApproval"]


def test_definition_matches_the_golden_file(engine_definition):
    engine, definition = engine_definition
    golden = GOLDEN[engine]
    if os.environ.get("APPSIM_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(json.dumps(normalised(definition), indent=2, sort_keys=True) + "\n")
    assert golden.is_file(), f"{golden} is missing: run with APPSIM_UPDATE_GOLDEN=1 once and review it"
    assert normalised(definition) == json.loads(golden.read_text()), (
        "the pipeline definition changed: review the diff, then APPSIM_UPDATE_GOLDEN=1 to accept it")


def test_local_graph_equals_the_definition(engine_definition):
    from pipelines.sagemaker_pipeline import LINEAGE_PARAMETERS, PROCESSING_INPUT

    engine, definition = engine_definition
    steps = all_steps(definition)
    # Every edge of the graph is in the definition; the definition adds only data references
    # that the graph already orders (the register steps read Train's model and Evaluate's report).
    assert graph.edges() <= definition_edges(definition)
    assert closure(definition_edges(definition)) == closure(graph.edges())
    for spec in graph.steps(engine):
        step = steps[spec.name]
        if spec.entry_module:
            arguments = step["Arguments"]
            entry = (arguments.get("AppSpecification") or arguments.get("AlgorithmSpecification"))["ContainerEntrypoint"]
            if spec.entry_module == sagemaker_target.SPARK_APP_MODULE:
                # PySparkProcessor: smspark-submit runs the module's file, delivered as the `code` input.
                app = spec.entry_module.rsplit(".", 1)[-1] + ".py"
                assert entry == ["smspark-submit", f"{PROCESSING_INPUT}/code/{app}"]
                (code,) = [i for i in arguments["ProcessingInputs"] if i["InputName"] == "code"]
                assert code["S3Input"]["S3Uri"] == f"{STORE}/code/{spec.entry_module.replace('.', '/')}.py"
                assert arguments["AppSpecification"]["ImageUri"] == SPARK_IMAGE
            else:
                assert entry == ["python", "-m", spec.entry_module]
            if spec.kind == "processing":
                assert arguments["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == {
                    "Get": "Parameters.processing_instance_count"}
        used = references(step, "Parameters.") - set(sagemaker_target.INFRASTRUCTURE_PARAMETERS)
        expected = set(spec.parameters) | (set(LINEAGE_PARAMETERS) if spec.kind == "register" else set())
        assert used == expected, spec.name
    condition = steps["CheckImprovement"]["Arguments"]
    (check,) = condition["Conditions"]
    assert check["Type"] == "Equals" and check["RightValue"] is graph.CONDITION.equals
    json_get = check["LeftValue"]["Std:JsonGet"]
    assert json_get["Path"] == graph.CONDITION.json_path
    assert json_get["PropertyFile"]["Get"].startswith(f"Steps.{graph.CONDITION.step}.PropertyFiles.")
    (property_file,) = steps[graph.CONDITION.step]["PropertyFiles"]
    assert property_file["FilePath"] == graph.CONDITION.report_file
    assert tuple(s["Name"] for s in condition["IfSteps"]) == graph.CONDITION.if_true
    assert tuple(s["Name"] for s in condition["ElseSteps"]) == graph.CONDITION.if_false


def test_registration_records_metrics_lineage_and_status(definition):
    steps = all_steps(definition)
    candidate, rejected = steps["RegisterCandidate"]["Arguments"], steps["RegisterRejected"]["Arguments"]
    assert candidate["ModelApprovalStatus"] == {"Get": "Parameters.approval_status"}
    assert rejected["ModelApprovalStatus"] == "Rejected"
    for arguments in (candidate, rejected):
        statistics = arguments["ModelMetrics"]["ModelQuality"]["Statistics"]
        assert statistics["S3Uri"]["Std:Join"]["Values"][-1] == "evaluation.json"
        assert references(statistics, "Steps.") == {"EvaluateCandidate"}
        assert arguments["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == {
            "Get": "Steps.TrainEmbeddings.ModelArtifacts.S3ModelArtifacts"}
        metadata = arguments["CustomerMetadataProperties"]
        assert {"metric.recall_at_10", "metric.relative_improvement", "lineage.pipeline_execution_arn",
                "lineage.window_end", "lineage.training_job"} <= set(metadata)


def test_job_steps_are_cached_and_retried(definition):
    for name in ("PrepareFeedback", "TrainEmbeddings", "EvaluateCandidate"):
        step = all_steps(definition)[name]
        assert step["CacheConfig"] == {"Enabled": True, "ExpireAfter": "P30D"}
        kinds = {kind for policy in step["RetryPolicies"] for kind in policy["ExceptionType"]}
        assert {"SageMaker.CAPACITY_ERROR", "Step.THROTTLING"} <= kinds


def test_outputs_follow_the_store_layout(definition):
    steps = all_steps(definition)
    output = steps["PrepareFeedback"]["Arguments"]["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    assert output["Std:Join"]["Values"] == [f"{STORE}/runs", {"Get": "Execution.PipelineExecutionId"}, "prepare"]


def test_preview_placeholders_are_named_and_refused_for_deployment(tmp_path):
    config = load_config(store=str(tmp_path / "local-store"))
    target = sagemaker_target.Target.from_config(config, preview=True)
    assert len(target.placeholders()) == 3
    with pytest.raises(sagemaker_target.PipelineBuildError, match="store must be on S3.*image_uri.*execution role"):
        sagemaker_target.check_deployable(target)
    spark = sagemaker_target.Target.from_config(config.with_overrides(["prepare_engine=spark"]), preview=True)
    assert len(spark.placeholders()) == 4
    with pytest.raises(sagemaker_target.PipelineBuildError, match="prepare_engine is spark but sagemaker.spark_image_uri is empty"):
        sagemaker_target.check_deployable(spark)


def test_prepare_engine_is_chosen_at_deployment_not_at_start(config_path):
    config = load_config(config_path)
    assert "prepare_engine" not in aws.execution_parameters(config, {"prepare_engine": "spark", "seed": "3"})
    with pytest.raises(sagemaker_target.PipelineBuildError, match="prepare_engine is chosen when the pipeline is deployed"):
        aws.schedule_target(config, SCHEDULER_ROLE, {"prepare_engine": "spark"})


def test_spark_deployment_uploads_the_job_it_submits(aws_server_env, spark_config_path, spark_definition):
    import importlib.util

    config = load_config(spark_config_path)
    target = sagemaker_target.Target.from_config(config)
    bucket, key = target.spark_app_uri.removeprefix("s3://").split("/", 1)
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=bucket)  # the moto server (s3fs writes the upload: in-process mocks miss it)
    aws.upsert_pipeline(config, client=boto3.client("sagemaker"), definition=spark_definition)
    uploaded = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    source = Path(importlib.util.find_spec(sagemaker_target.SPARK_APP_MODULE).origin).read_bytes()
    assert uploaded == source
    (code,) = [i for i in all_steps(spark_definition)["PrepareFeedback"]["Arguments"]["ProcessingInputs"]
               if i["InputName"] == "code"]
    assert code["S3Input"]["S3Uri"] == target.spark_app_uri


# -- against moto -------------------------------------------------------------------------
def test_upsert_creates_then_updates(aws_env, config_path, definition):
    config = load_config(config_path)
    with mock_aws():
        client = boto3.client("sagemaker")
        arn = aws.upsert_pipeline(config, client=client, definition=definition)
        stored = client.describe_pipeline(PipelineName=config.pipeline_name)
        assert stored["PipelineArn"] == arn and stored["RoleArn"] == ROLE
        assert json.loads(stored["PipelineDefinition"]) == definition
        client.describe_model_package_group(ModelPackageGroupName=config.sagemaker.model_package_group)
        changed = {**definition, "Parameters": definition["Parameters"][:-1]}
        assert aws.upsert_pipeline(config, client=client, definition=changed) == arn
        assert json.loads(client.describe_pipeline(PipelineName=config.pipeline_name)["PipelineDefinition"]) == changed


def test_retrain_on_sagemaker_deploys_and_starts_with_overrides(aws_env, config_path, definition):
    config = load_config(config_path)
    messages: list[str] = []
    with mock_aws():
        client = boto3.client("sagemaker")
        result = aws.retrain_on_sagemaker(
            config, {"window_days": "14", "training_instance_type": "ml.c5.xlarge"}, wait=False,
            echo=messages.append, client=client)
        stored = json.loads(client.describe_pipeline(PipelineName=config.pipeline_name)["PipelineDefinition"])
        sent = client.list_pipeline_parameters_for_execution(
            PipelineExecutionArn=result["execution_arn"])["PipelineParameters"]
    assert normalised(stored) == normalised(definition)  # the same definition, built again from the config
    sent = {p["Name"]: p["Value"] for p in sent}
    assert sent["window_days"] == "14" and sent["training_instance_type"] == "ml.c5.xlarge"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sent["window_end"])  # "now", made explicit
    assert result["parameters"] == sent
    assert any(result["execution_arn"] in m for m in messages)


def test_start_refuses_an_invalid_override(config_path):
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match="window_days"):
        aws.execution_parameters(load_config(config_path), {"window_days": "0"})


def test_schedule_create_update_show_delete(aws_env, config_path):
    config = load_config(config_path)
    with mock_aws():
        client = boto3.client("scheduler")
        assert aws.show_schedule(config, client) is None
        arn = aws.set_schedule(config, SCHEDULER_ROLE, {"embedding_dim": "32"}, client=client)
        shown = aws.show_schedule(config, client)
        assert shown["arn"] == arn
        assert (shown["cron"], shown["timezone"]) == (config.schedule.cron, config.schedule.timezone)
        assert shown["target"] == aws.START_PIPELINE_TARGET and shown["role_arn"] == SCHEDULER_ROLE
        assert shown["parameters"]["embedding_dim"] == "32"
        assert shown["parameters"]["window_end"] == aws.SCHEDULED_TIME
        assert set(shown["parameters"]) == set(type(config.parameters).model_fields) - set(graph.BUILD_PARAMETERS)
        assert aws.set_schedule(config, SCHEDULER_ROLE, {"embedding_dim": "48"}, client=client) == arn  # update
        assert aws.show_schedule(config, client)["parameters"]["embedding_dim"] == "48"
        assert aws.delete_schedule(config, client) is True
        assert aws.show_schedule(config, client) is None
        assert aws.delete_schedule(config, client) is False


def test_schedule_commands(aws_env, config_path):
    from pipelines.cli.schedule import schedule_group

    runner = CliRunner()
    config = ["--config", str(config_path)]
    with mock_aws():
        assert runner.invoke(schedule_group, ["show", *config]).exit_code == 1
        result = runner.invoke(schedule_group, ["set", "--role-arn", SCHEDULER_ROLE, "--param", "seed=7", *config])
        assert result.exit_code == 0, result.output
        schedule = load_config(config_path).schedule
        assert f"{schedule.cron} ({schedule.timezone})" in result.output
        shown = json.loads(runner.invoke(schedule_group, ["show", *config]).output)
        assert shown["parameters"]["seed"] == "7"
        assert "deleted" in runner.invoke(schedule_group, ["delete", *config]).output


def test_decision_schedule_runs_ab_decide_as_a_processing_job(aws_env, config_path):
    from pipelines.cli.schedule import schedule_group

    config = load_config(config_path)
    topic = "arn:aws:sns:us-east-1:123456789012:appsim-decisions"
    config = config.model_copy(update={"notifications": config.notifications.model_copy(update={"sns_topic_arn": topic})})
    with mock_aws():
        client = boto3.client("scheduler")
        arn = aws.set_decision_schedule(config, SCHEDULER_ROLE, ROLE, client=client)
        stored = client.get_schedule(Name=config.rollout.schedule.name)
        assert stored["Arn"] == arn and stored["ScheduleExpression"] == config.rollout.schedule.cron
        assert stored["Target"]["Arn"] == aws.CREATE_PROCESSING_JOB_TARGET
        job = json.loads(stored["Target"]["Input"])
        assert job["AppSpecification"]["ContainerEntrypoint"] == ["appsim", "ab", "decide", "--json"]
        assert job["AppSpecification"]["ImageUri"] == config.sagemaker.image_uri and job["RoleArn"] == ROLE
        assert job["ProcessingJobName"] == f"appsim-ab-decide-{aws.EXECUTION_ID}"
        assert job["Environment"] == {"APPSIM_STORE": config.store, "APPSIM_SNS_TOPIC_ARN": topic}
        # the job the schedule starts is one SageMaker accepts (its name filled in as the scheduler does)
        job["ProcessingJobName"] = "appsim-ab-decide-0f8e2d3c-5b7a-4c1e-9d2f-1a2b3c4d5e6f"
        boto3.client("sagemaker").create_processing_job(**job)
        assert aws.set_decision_schedule(config, SCHEDULER_ROLE, ROLE, client=client) == arn  # update
        result = CliRunner().invoke(schedule_group, ["set-decision", "--role-arn", SCHEDULER_ROLE, "--job-role-arn", ROLE,
                                                     "--config", str(config_path)])
        assert result.exit_code == 0 and "appsim ab decide" in result.output, result.output
    with pytest.raises(sagemaker_target.PipelineBuildError, match="--job-role-arn"):
        aws.set_decision_schedule(config, SCHEDULER_ROLE, "")
