"""Shared fixtures for the tests that talk to AWS APIs: always moto, never the network.

``aws_env`` gives fake credentials and a region, switches off the SageMaker SDK's role
validation and telemetry, and refuses every connection that is not to 127.0.0.1, so a test
that would reach AWS fails instead. ``moto_server`` is a ThreadedMotoServer on 127.0.0.1 for
clients that moto's in-process patching does not reach (s3fs/aiobotocore, subprocesses);
``AWS_ENDPOINT_URL`` points every boto3/botocore client at it.
"""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

LOOPBACK = ("127.0.0.1", "::1", "localhost")
REGION = "us-east-1"


def _guard_network(monkeypatch: pytest.MonkeyPatch) -> None:
    connect = socket.socket.connect
    getaddrinfo = socket.getaddrinfo

    def local_connect(sock: socket.socket, address, *args):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise ConnectionRefusedError(f"test tried to reach {address[0]}:{address[1]}; tests stay on 127.0.0.1")
        return connect(sock, address, *args)

    def local_getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK and host is not None:
            raise socket.gaierror(f"test tried to resolve {host}; tests stay on 127.0.0.1")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_connect)
    monkeypatch.setattr(socket, "getaddrinfo", local_getaddrinfo)


def set_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_dir) -> None:
    telemetry_off = tmp_dir / "sagemaker-config.yaml"
    telemetry_off.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    for name, value in {
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_CONFIG_FILE": str(tmp_dir / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_dir / "no-aws-credentials"),
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(telemetry_off), "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(telemetry_off),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # boto3's default session keeps the credentials it resolved first: each test starts from a fresh one
    import boto3

    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    _guard_network(monkeypatch)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    set_aws_env(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory) -> Iterator[str]:
    """A moto server on a free 127.0.0.1 port for the whole session; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_server_env(aws_env, moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """``aws_env`` with every AWS client (boto3, s3fs, subprocesses) pointed at the moto server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    return moto_server


@pytest.fixture(scope="session")
def spark():
    """The one local-mode SparkSession of the test run (a JVM start costs seconds: every Spark test shares it)."""
    from steps.spark_session import local_session

    session = local_session()
    yield session
    session.stop()
