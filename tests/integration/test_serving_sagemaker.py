"""The SageMaker SDK's own local runtime client invokes the container contract (endpoint mode)."""

from __future__ import annotations

import json

import httpx
import pytest

from serving.app import create_app
from serving.settings import ServingSettings
from tests.serving.helpers import build_artifact, running_server, wait_for

local_session = pytest.importorskip("sagemaker.core.local.local_session")


def test_local_sagemaker_runtime_client_invokes_the_endpoint(tmp_path, monkeypatch):
    # What SageMaker does: extract model.tar.gz into the model folder and start the container.
    build_artifact().save(tmp_path / "opt-ml-model")
    settings = ServingSettings(model_dir=str(tmp_path / "opt-ml-model"), model_version=3, feedback_uri="none")
    # The client finds the container's host with `docker context inspect`; there is no docker
    # engine here, and the server runs on loopback.
    monkeypatch.setattr(local_session, "get_docker_host", lambda: "127.0.0.1")
    with running_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
        client = local_session.LocalSagemakerRuntimeClient(config={"local": {"serving_port": int(url.rsplit(":", 1)[1])}})
        response = client.invoke_endpoint(Body=json.dumps({"app_id": "app-00010", "k": 5}), EndpointName="appsim",
                                          ContentType="application/json", Accept="application/json",
                                          CustomAttributes="trace=1")
        body = json.loads(response["Body"].read())
        csv = client.invoke_endpoint(Body="app-00001\napp-00002\n", EndpointName="appsim", ContentType="text/csv")
        csv_body = json.loads(csv["Body"].read())
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert response["ContentType"].startswith("application/json")
    assert body["model_version"] == 3 and body["app_id"] == "app-00010" and len(body["neighbors"]) == 5
    assert [p["app_id"] for p in csv_body["predictions"]] == ["app-00001", "app-00002"]
