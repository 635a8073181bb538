"""Each job of the SageMaker definition, run as SageMaker runs it: the entry point and arguments
taken from the definition (the golden file, parameters resolved), in a subprocess, with
SageMaker's directories mapped to temporary folders (inputs downloaded from S3 first, outputs
uploaded after, as the platform does) and the store and registry on a moto server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3

from models import layout, storage
from models.registry_sagemaker import SageMakerRegistry
from models.events import parse_utc
from pipelines.simulators.marketplace import simulate

ROOT = Path(__file__).resolve().parents[2]
DEFINITION = json.loads((Path(__file__).parent / "golden" / "sagemaker_definition.json").read_text())
END = "2026-11-02T00:00:00Z"
DAYS = 7
GROUP = "appsim-jobs"
EXECUTION_ID = "exec0001"
GOLDEN_STORE = "s3://appsim-test-store/appsim"  # the store the golden definition was built for


def resolve(node: Any, parameters: dict[str, Any], folders: dict[str, Any]) -> Any:
    """A definition value as the service resolves it; mapped prefixes (/opt/ml paths, the golden
    file's store) are replaced."""
    if isinstance(node, dict) and "Get" in node:
        name = node["Get"]
        if name.startswith("Parameters."):
            return parameters[name[len("Parameters."):]]
        if name == "Execution.PipelineExecutionId":
            return EXECUTION_ID
        raise AssertionError(f"unexpected reference {name}")
    if isinstance(node, dict) and "Std:Join" in node:
        join = node["Std:Join"]
        return join["On"].join(_text(resolve(v, parameters, folders)) for v in join["Values"])
    if isinstance(node, str):
        for prefix, replacement in folders.items():
            if node.startswith(prefix):
                return str(replacement) + node[len(prefix):]
    return node


def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def run_job(command: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONHASHSEED": "0", **env})
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}\n{proc.stderr[-3000:]}"


def step(name: str) -> dict[str, Any]:
    return next(s for s in DEFINITION["Steps"] if s["Name"] == name)


def test_every_job_runs_its_entry_point_in_the_sagemaker_layout(aws_server_env, tmp_path, monkeypatch):
    bucket = f"appsim-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store = f"s3://{bucket}/store"
    simulate(store, apps=80, users=300, days=DAYS, events_per_day=1000, seed=5, fault_rate=0.0, end=parse_utc(END))
    parameters = {p["Name"]: p["DefaultValue"] for p in DEFINITION["Parameters"]}
    parameters.update(feedback_uri=layout.feedback_uri(store), catalog_uri=layout.catalog_uri(store),
                      window_end=END, window_days=DAYS, bootstrap_samples=200)
    # The platform's channels: S3 in, S3 out, by the definition's own URIs (on this test's bucket).
    run_prefix = f"{store}/runs/{EXECUTION_ID}"
    on_this_store = {GOLDEN_STORE: store}

    def processing(name: str) -> None:
        arguments = step(name)["Arguments"]
        folders = {"/opt/ml/processing": tmp_path / name / "processing", **on_this_store}
        for channel in arguments["ProcessingInputs"]:
            source = resolve(channel["S3Input"]["S3Uri"], parameters, folders)
            target = Path(resolve(channel["S3Input"]["LocalPath"], parameters, folders))
            target.mkdir(parents=True)
            if source.endswith((".parquet", ".tar.gz")):
                (target / source.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(source))
            else:
                storage.download_dir(source, target)
        app = arguments["AppSpecification"]
        command = [sys.executable if part == "python" else part for part in app["ContainerEntrypoint"]]
        run_job(command + [_text(resolve(a, parameters, folders)) for a in app["ContainerArguments"]], {})
        for output in arguments["ProcessingOutputConfig"]["Outputs"]:
            storage.upload_dir(resolve(output["S3Output"]["LocalPath"], parameters, folders),
                               resolve(output["S3Output"]["S3Uri"], parameters, folders))

    processing("PrepareFeedback")
    assert storage.exists(f"{run_prefix}/prepare/manifest.json")

    training = step("TrainEmbeddings")["Arguments"]
    channels = {}
    for channel in training["InputDataConfig"]:
        source = channel["DataSource"]["S3DataSource"]["S3Uri"]
        uri = f"{run_prefix}/prepare" if source["Get"].startswith("Steps.") else resolve(source, parameters, on_this_store)
        folder = tmp_path / "train" / "input" / "data" / channel["ChannelName"]
        folder.mkdir(parents=True)
        if uri.endswith(".parquet"):
            (folder / uri.rsplit("/", 1)[1]).write_bytes(storage.read_bytes(uri))
        else:
            storage.download_dir(uri, folder)
        channels[f"SM_CHANNEL_{channel['ChannelName'].upper()}"] = str(folder)
    hyperparameters = {k: _text(resolve(v, parameters, {})) for k, v in training["HyperParameters"].items()}
    model_dir = tmp_path / "train" / "model"
    model_dir.mkdir()
    entry = [sys.executable if p == "python" else p for p in training["AlgorithmSpecification"]["ContainerEntrypoint"]]
    run_job(entry, {**channels, "SM_MODEL_DIR": str(model_dir), "SM_HPS": json.dumps(hyperparameters)})
    # SageMaker tars SM_MODEL_DIR into <S3OutputPath>/<job>/output/model.tar.gz.
    output_path = resolve(training["OutputDataConfig"]["S3OutputPath"], parameters, on_this_store)
    model_uri = f"{output_path}/appsim-train-job/output/model.tar.gz"
    storage.write_bytes(model_uri, storage.make_tarball(model_dir))

    monkeypatch.setenv("APPSIM_IMAGE_URI", "123456789012.dkr.ecr.us-east-1.amazonaws.com/appsim:1.0.0")
    SageMakerRegistry(GROUP)  # the group the pipeline's registry argument names
    evaluate = step("EvaluateCandidate")["Arguments"]
    for channel in evaluate["ProcessingInputs"]:  # the upstream steps' outputs, as the service resolves them
        ref = channel["S3Input"]["S3Uri"]["Get"]
        channel["S3Input"]["S3Uri"] = f"{run_prefix}/prepare" if ref.startswith("Steps.PrepareFeedback") else model_uri
    args = evaluate["AppSpecification"]["ContainerArguments"]
    args[args.index("--registry") + 1] = f"sagemaker://{GROUP}"
    processing("EvaluateCandidate")
    report = storage.read_json(f"{run_prefix}/evaluate/evaluation.json")
    assert report["decision"] in ("approved", "pending", "rejected")
    assert report["champion_version"] is None  # an empty registry: compared with the popularity baseline
    assert set(report["candidate"]) >= {"recall_at_10", "ndcg_at_10", "coverage"}
