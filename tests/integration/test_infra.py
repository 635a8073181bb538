"""infra/appsim.yaml: cfn-lint clean, created by moto's CloudFormation, and holding the seed's rules.

moto's CloudFormation skips the resource types it cannot create (with a warning). The stack test
asserts that the skipped types are exactly MOTO_UNSUPPORTED, so a template change that moto
cannot check, or a moto upgrade that can check more, shows up here; those resources are checked
on the template instead (the tests named ``test_template_*``). moto also ignores some properties
of the types it does create (S3 versioning, public access block and lifecycle; DynamoDB PITR):
those are checked on the template too.
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import boto3
import pytest
from cfnlint.api import lint_file
from cfnlint.decode import cfn_yaml
from moto import mock_aws

from pipelines.aws import CREATE_PROCESSING_JOB_TARGET, SCHEDULED_TIME, START_PIPELINE_TARGET, decision_job
from pipelines.config import load_config
from pipelines.monitoring import cloudwatch_dashboard

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "appsim.yaml"
REGION = "us-east-1"
BUCKET = "appsim-store-test"
IMAGE_URI = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team/appsim:1.2.0"
MODEL_DATA_URL = f"s3://{BUCKET}/runs/20261102T030000Z/TrainEmbeddings/model.tar.gz"

MOTO_UNSUPPORTED = {
    "AWS::S3::BucketPolicy",
    "AWS::Logs::LogStream",
    "AWS::KinesisFirehose::DeliveryStream",
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::Scheduler::Schedule",
    "AWS::SNS::Subscription",
    "AWS::CloudWatch::Alarm",
}
SKIPPED = re.compile(r"Tried to parse (\S+) but it's not supported")
# Actions without resource-level permissions: the only ones allowed on Resource "*".
UNSCOPED_ACTIONS = {"ecr:GetAuthorizationToken", "sagemaker:ListModelPackages", "cloudwatch:PutMetricData",
                    "cloudwatch:GetMetricData"}  # none of these has resource-level permissions


class Stack(NamedTuple):
    outputs: dict[str, str]
    resources: dict[str, tuple[str, str]]  # logical id -> (type, physical id)
    skipped_types: set[str]


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return cfn_yaml.load(str(TEMPLATE))


def _create_stack(name: str, parameters: dict[str, str]) -> Stack:
    cfn = boto3.client("cloudformation", region_name=REGION)
    # moto parses resources lazily, on create and again on describe: record warnings around all
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfn.create_stack(
            StackName=name,
            TemplateBody=TEMPLATE.read_text(),
            Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        )
        described = cfn.describe_stacks(StackName=name)["Stacks"][0]
        summaries = cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    return Stack(
        outputs={o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])},
        resources={
            s["LogicalResourceId"]: (s["ResourceType"], s["PhysicalResourceId"])
            for s in summaries if s["LogicalResourceId"]
        },
        skipped_types={m.group(1) for w in caught if (m := SKIPPED.search(str(w.message)))},
    )


@pytest.fixture(scope="module")
def aws() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as env, mock_aws():
        env.setenv("AWS_DEFAULT_REGION", REGION)
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        yield


@pytest.fixture(scope="module")
def stack(aws: None) -> Stack:
    """The full stack: second-phase deployment, with an approved model to serve."""
    return _create_stack("appsim", {
        "BucketName": BUCKET,
        "ImageUri": IMAGE_URI,
        "ModelDataUrl": MODEL_DATA_URL,
        "ModelVersion": "3",
        "ServingInstanceType": "ml.c5.large",
        "AlertEmail": "ops@example.com",
    })


def _statements(document: Any) -> list[dict[str, Any]]:
    if isinstance(document, str):
        # moto (5.2) returns the inline policies of a CloudFormation-made role as a Python repr
        document = ast.literal_eval(document) if document.startswith("{'") else json.loads(document)
    statements = document["Statement"]
    return statements if isinstance(statements, list) else [statements]


def _listed(value: str | list[str]) -> list[str]:
    return value if isinstance(value, list) else [value]


def _inline_statements(stack: Stack, role: str) -> list[dict[str, Any]]:
    iam = boto3.client("iam")
    role_name = stack.resources[role][1]
    return [s for name in iam.list_role_policies(RoleName=role_name)["PolicyNames"]
            for s in _statements(iam.get_role_policy(RoleName=role_name, PolicyName=name)["PolicyDocument"])]


def _managed_statements(stack: Stack, policy: str) -> list[dict[str, Any]]:
    # moto does not attach a CloudFormation role's ManagedPolicyArns: read the policy itself
    # (test_template_sagemaker_roles_share_the_container_policy checks the attachment).
    iam = boto3.client("iam")
    arn = stack.resources[policy][1]
    version_id = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
    return _statements(iam.get_policy_version(PolicyArn=arn, VersionId=version_id)["PolicyVersion"]["Document"])


# ------------------------------------------------------------------ lint


def test_cfn_lint_reports_nothing() -> None:
    findings = lint_file(TEMPLATE)
    assert [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in findings] == []


# ------------------------------------------------------------------ moto stack


def test_stack_creates_every_type_moto_supports(stack: Stack, template: dict[str, Any]) -> None:
    assert stack.skipped_types == MOTO_UNSUPPORTED
    expected = {name for name, r in template["Resources"].items() if r["Type"] not in MOTO_UNSUPPORTED}
    assert expected <= set(stack.resources)
    assert stack.outputs["StoreUri"] == f"s3://{BUCKET}"
    assert stack.outputs["RegistryUri"] == "sagemaker://appsim-app-embeddings"


def test_store_bucket_is_encrypted(stack: Stack) -> None:
    assert stack.resources["StoreBucket"][1] == BUCKET
    rules = boto3.client("s3").get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_feedback_stream_is_what_serving_writes_to(stack: Stack) -> None:
    name = stack.outputs["FeedbackStreamName"]
    summary = boto3.client("kinesis").describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    assert summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 1
    assert stack.outputs["FeedbackUri"] == f"kinesis://{name}"


def test_experiment_tables_have_the_ab_keys(stack: Stack) -> None:
    dynamodb = boto3.client("dynamodb")
    experiments = dynamodb.describe_table(TableName=stack.outputs["ExperimentsTableName"])["Table"]
    metrics = dynamodb.describe_table(TableName=stack.outputs["ExperimentMetricsTableName"])["Table"]
    assert experiments["TableName"] == "ab_experiments" and metrics["TableName"] == "ab_metrics"
    assert experiments["KeySchema"] == [{"AttributeName": "experiment_id", "KeyType": "HASH"}]
    assert metrics["KeySchema"] == [{"AttributeName": "experiment_id", "KeyType": "HASH"},
                                    {"AttributeName": "timestamp", "KeyType": "RANGE"}]
    for table in (experiments, metrics):
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_roles_trust_only_their_service(stack: Stack) -> None:
    iam = boto3.client("iam")
    services = {
        "PipelineRole": "sagemaker.amazonaws.com", "EndpointRole": "sagemaker.amazonaws.com",
        "ScheduleRole": "scheduler.amazonaws.com", "FeedbackDeliveryRole": "firehose.amazonaws.com",
    }
    for logical_id, service in services.items():
        role = iam.get_role(RoleName=stack.resources[logical_id][1])["Role"]
        trust = _statements(role["AssumeRolePolicyDocument"])
        assert [s["Principal"] for s in trust] == [{"Service": service}], logical_id
        assert all("Condition" in s for s in trust), f"{logical_id}: trust without a confused-deputy guard"
    assert stack.outputs["PipelineRoleArn"].endswith(stack.resources["PipelineRole"][1])


def test_roles_are_least_privilege(stack: Stack) -> None:
    bucket_arn = f"arn:aws:s3:::{BUCKET}"
    policies = {role: _inline_statements(stack, role)
                for role in ("PipelineRole", "EndpointRole", "ScheduleRole", "FeedbackDeliveryRole")}
    policies["ContainerBasicsPolicy"] = _managed_statements(stack, "ContainerBasicsPolicy")
    for name, statements in policies.items():
        assert statements, name
        for s in statements:
            actions, resources = _listed(s["Action"]), _listed(s["Resource"])
            assert s["Effect"] == "Allow"
            assert not any(a == "*" or a.endswith(":*") for a in actions), (name, actions)
            if "*" in resources:
                assert set(actions) <= UNSCOPED_ACTIONS, (name, actions)
            s3_resources = [r for r in resources if r.startswith("arn:aws:s3")]
            assert all(r == bucket_arn or r.startswith(bucket_arn + "/") for r in s3_resources), s3_resources
    registry = [s for s in policies["PipelineRole"] if "sagemaker:CreateModelPackage" in _listed(s["Action"])]
    assert [s["Resource"] for s in registry] == [[
        "arn:aws:sagemaker:us-east-1:123456789012:model-package-group/appsim-app-embeddings",
        "arn:aws:sagemaker:us-east-1:123456789012:model-package/appsim-app-embeddings/*",
    ]]


def test_image_pull_is_scoped_to_the_image_repository(stack: Stack) -> None:
    pulls = [s for s in _managed_statements(stack, "ContainerBasicsPolicy")
             if "ecr:BatchGetImage" in _listed(s["Action"])]
    # account, region and the namespaced repository, without the tag, all taken from ImageUri
    assert [s["Resource"] for s in pulls] == ["arn:aws:ecr:us-east-1:123456789012:repository/team/appsim"]


def test_pipeline_role_may_pass_only_itself_to_sagemaker(stack: Stack) -> None:
    passes = [s for s in _inline_statements(stack, "PipelineRole") if "iam:PassRole" in _listed(s["Action"])]
    assert [(s["Resource"], s["Condition"]) for s in passes] == [
        (stack.outputs["PipelineRoleArn"], {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}})]


def test_endpoint_serves_the_approved_artifact(stack: Stack) -> None:
    sagemaker = boto3.client("sagemaker")
    endpoint = sagemaker.describe_endpoint(EndpointName=stack.outputs["EndpointName"])
    config = sagemaker.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    [variant] = config["ProductionVariants"]
    assert variant["InstanceType"] == "ml.c5.large" and variant["InitialInstanceCount"] == 1
    model = sagemaker.describe_model(ModelName=variant["ModelName"])
    assert model["ExecutionRoleArn"] == stack.outputs["EndpointRoleArn"]
    container = model["PrimaryContainer"]
    assert (container["Image"], container["ModelDataUrl"]) == (IMAGE_URI, MODEL_DATA_URL)
    assert container["Environment"]["APPSIM_FEEDBACK_URI"] == stack.outputs["FeedbackUri"]
    assert container["Environment"]["APPSIM_MODEL_VERSION"] == "3"


def test_alert_topic_exists(stack: Stack) -> None:
    attributes = boto3.client("sns").get_topic_attributes(TopicArn=stack.outputs["AlertTopicArn"])["Attributes"]
    assert attributes["TopicArn"] == stack.outputs["AlertTopicArn"]


def test_notification_topic_and_dashboard_exist(stack: Stack) -> None:
    topic = stack.outputs["NotificationTopicArn"]
    assert boto3.client("sns").get_topic_attributes(TopicArn=topic)["Attributes"]["TopicArn"] == topic
    body = json.loads(boto3.client("cloudwatch").get_dashboard(DashboardName=stack.outputs["DashboardName"])["DashboardBody"])
    assert body == cloudwatch_dashboard(region=REGION)


def test_feedback_lifecycle_rule_is_accepted_by_s3(stack: Stack, template: dict[str, Any]) -> None:
    """moto's CloudFormation ignores a bucket's lifecycle: put the template's rules with the S3 API."""
    days = load_config(ROOT / "pipeline.yaml").retention.feedback_days
    rules = []
    for rule in template["Resources"]["StoreBucket"]["Properties"]["LifecycleConfiguration"]["Rules"]:
        converted: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"], "Filter": {"Prefix": rule.get("Prefix", "")}}
        if "Transitions" in rule:
            converted["Transitions"] = [{"Days": t["TransitionInDays"], "StorageClass": t["StorageClass"]}
                                        for t in rule["Transitions"]]
        if "ExpirationInDays" in rule:
            converted["Expiration"] = {"Days": days if rule["ExpirationInDays"] == {"Ref": "FeedbackRetentionDays"}
                                       else rule["ExpirationInDays"]}
        rules.append(converted)
    s3 = boto3.client("s3")
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": rules})
    stored = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    feedback = stored["archive-then-delete-feedback"]
    assert feedback["Filter"] == {"Prefix": "feedback/"} and feedback["Expiration"] == {"Days": days}


def test_first_deployment_without_a_model_has_no_endpoint(stack: Stack) -> None:
    first = _create_stack("appsim-first", {
        "BucketName": "appsim-store-first", "ImageUri": IMAGE_URI, "ExperimentTablePrefix": "first-",
    })
    types = {resource_type for resource_type, _ in first.resources.values()}
    assert not types & {"AWS::SageMaker::Model", "AWS::SageMaker::EndpointConfig", "AWS::SageMaker::Endpoint"}
    assert "EndpointName" not in first.outputs
    assert first.outputs["ExperimentsTableName"] == "first-ab_experiments"
    assert first.skipped_types == MOTO_UNSUPPORTED - {"AWS::SNS::Subscription"}  # no alert e-mail


# ------------------------------------------------------------------ template (what moto skips)


def test_template_bucket_is_private_versioned_and_follows_the_seed_lifecycle(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["StoreBucket"]
    properties = bucket["Properties"]
    assert bucket["DeletionPolicy"] == "Retain"
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    by_prefix = {rule.get("Prefix", ""): rule for rule in properties["LifecycleConfiguration"]["Rules"]}
    assert by_prefix["runs/"]["Transitions"] == [{"StorageClass": "GLACIER_IR", "TransitionInDays": 90}]
    for prefix in ("feedback/", "logs/"):
        assert by_prefix[prefix]["Transitions"] == [{"StorageClass": "DEEP_ARCHIVE", "TransitionInDays": 180}]
    assert by_prefix["feedback/"]["ExpirationInDays"] == {"Ref": "FeedbackRetentionDays"}
    assert "ExpirationInDays" not in by_prefix["runs/"], "model artifacts must never expire"
    assert by_prefix[""]["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    policy = template["Resources"]["StoreBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert [s["Condition"] for s in policy] == [{"Bool": {"aws:SecureTransport": "false"}}]


def test_template_firehose_delivers_the_stream_to_the_feedback_layout(template: dict[str, Any]) -> None:
    properties = template["Resources"]["FeedbackDelivery"]["Properties"]
    assert properties["KinesisStreamSourceConfiguration"]["KinesisStreamARN"] == {"Fn::GetAtt": ["FeedbackStream", "Arn"]}
    destination = properties["ExtendedS3DestinationConfiguration"]
    assert destination["BucketARN"] == {"Fn::GetAtt": ["StoreBucket", "Arn"]}
    # no custom timestamp expression: Firehose appends YYYY/MM/DD/HH/ (UTC arrival hour)
    assert destination["Prefix"] == "feedback/" and "!{" not in destination["Prefix"]
    assert destination["CompressionFormat"] == "GZIP"


def test_template_defaults_match_pipeline_yaml(template: dict[str, Any]) -> None:
    config = load_config(ROOT / "pipeline.yaml")
    defaults = {name: p.get("Default") for name, p in template["Parameters"].items()}
    assert defaults["PipelineName"] == config.pipeline_name
    assert defaults["ModelPackageGroupName"] == config.sagemaker.model_package_group
    assert (defaults["ScheduleName"], defaults["ScheduleExpression"], defaults["ScheduleTimezone"]) == (
        config.schedule.name, config.schedule.cron, config.schedule.timezone)
    assert (defaults["DecisionScheduleName"], defaults["DecisionScheduleExpression"]) == (
        config.rollout.schedule.name, config.rollout.schedule.cron)
    assert defaults["FeedbackRetentionDays"] == config.retention.feedback_days


def test_template_schedule_starts_the_pipeline(template: dict[str, Any]) -> None:
    properties = template["Resources"]["RetrainSchedule"]["Properties"]
    assert properties["ScheduleExpression"] == {"Ref": "ScheduleExpression"}
    assert properties["ScheduleExpressionTimezone"] == {"Ref": "ScheduleTimezone"}
    target = properties["Target"]
    assert target["Arn"] == START_PIPELINE_TARGET
    start = json.loads(target["Input"]["Fn::Sub"])
    assert start["PipelineName"] == "${PipelineName}"
    # the fire time as window_end: a new window each week, so no cached step of last week is reused
    assert start["PipelineParameters"] == [{"Name": "window_end", "Value": SCHEDULED_TIME}]
    allowed = template["Resources"]["ScheduleRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert [(s["Action"], s["Resource"]["Fn::Sub"]) for s in allowed] == [
        ("sagemaker:StartPipelineExecution",
         "arn:${AWS::Partition}:sagemaker:${AWS::Region}:${AWS::AccountId}:pipeline/${PipelineName}")]
    group = template["Resources"]["ModelPackageGroup"]["Properties"]
    assert group["ModelPackageGroupName"] == {"Ref": "ModelPackageGroupName"}


def test_template_decision_schedule_runs_ab_decide_daily(template: dict[str, Any]) -> None:
    properties = template["Resources"]["DecisionSchedule"]["Properties"]
    assert properties["ScheduleExpression"] == {"Ref": "DecisionScheduleExpression"}
    target = properties["Target"]
    assert target["Arn"] == CREATE_PROCESSING_JOB_TARGET
    job = json.loads(target["Input"]["Fn::Sub"])
    config = load_config(ROOT / "pipeline.yaml", store="s3://${StoreBucket}")
    config = config.model_copy(update={"sagemaker": config.sagemaker.model_copy(update={"image_uri": "${ImageUri}"})})
    expected = decision_job(config, "${PipelineRole.Arn}")
    expected["Environment"]["APPSIM_SNS_TOPIC_ARN"] = "${NotificationTopic}"
    assert job == expected, "the template's job and `appsim schedule set-decision`'s must agree"
    allowed = template["Resources"]["DecisionScheduleRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    assert allowed[0]["Resource"]["Fn::Sub"].endswith(":processing-job/appsim-ab-decide-*")
    assert allowed[1] == {"Effect": "Allow", "Action": "iam:PassRole", "Resource": {"Fn::GetAtt": ["PipelineRole", "Arn"]},
                          "Condition": {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}}


def test_template_dashboard_is_the_generated_one(template: dict[str, Any]) -> None:
    body = template["Resources"]["ServiceDashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    assert json.loads(body) == cloudwatch_dashboard(region="${AWS::Region}"), (
        "regenerate the DashboardBody from pipelines/monitoring.py (appsim monitoring apply --dry-run)")


def test_template_tables_are_on_demand_with_point_in_time_recovery(template: dict[str, Any]) -> None:
    for name in ("ExperimentsTable", "ExperimentMetricsTable"):
        table = template["Resources"][name]
        assert table["DeletionPolicy"] == "Retain"
        assert table["Properties"]["BillingMode"] == "PAY_PER_REQUEST"
        assert table["Properties"]["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
        assert table["Properties"]["SSESpecification"] == {"SSEEnabled": True}


def test_template_sagemaker_roles_share_the_container_policy(template: dict[str, Any]) -> None:
    for role in ("PipelineRole", "EndpointRole"):
        assert template["Resources"][role]["Properties"]["ManagedPolicyArns"] == [{"Ref": "ContainerBasicsPolicy"}]
    assert template["Resources"]["PipelinePolicy"]["Properties"]["Roles"] == [{"Ref": "PipelineRole"}]


def test_template_alarms_are_the_seeds(template: dict[str, Any]) -> None:
    alarms = {name: r["Properties"] for name, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}

    def shape(alarm: dict[str, Any]) -> tuple[Any, ...]:
        period = alarm.get("Period") or {m["MetricStat"]["Period"] for m in alarm["Metrics"] if "MetricStat" in m}.pop()
        return alarm["ComparisonOperator"], alarm["Threshold"], period, alarm["EvaluationPeriods"]

    assert {name: shape(a) for name, a in alarms.items()} == {
        "HighErrorRateAlarm": ("GreaterThanThreshold", 5, 300, 2),        # 5xx > 5 %, 5 min x 2
        "HighLatencyAlarm": ("GreaterThanThreshold", 500000, 600, 2),     # p99 > 500 ms (in us), 10 min x 2
        "ZeroTrafficAlarm": ("LessThanThreshold", 1, 300, 1),             # no request for 5 min
        "FeedbackDeliveryLagAlarm": ("GreaterThanThreshold", 900, 300, 3),
    }
    assert alarms["HighLatencyAlarm"]["ExtendedStatistic"] == "p99"
    assert alarms["ZeroTrafficAlarm"]["TreatMissingData"] == "breaching"
    error_rate = next(m for m in alarms["HighErrorRateAlarm"]["Metrics"] if m.get("ReturnData"))
    assert "100 * errors / invocations" in error_rate["Expression"]
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlertTopic"}]
