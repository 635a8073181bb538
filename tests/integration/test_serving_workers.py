"""Several workers are one server: `appsim serve --workers 2` on 127.0.0.1, and two servers sharing Redis.

Each request goes on a new connection, so the kernel hands it to either worker; the per-worker
files of Prometheus's multiprocess mode tell which worker answered what.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from tests.integration.test_serving_api import settings_for
from tests.serving.helpers import build_artifact, free_port, publish, running_server, wait_for
from tests.serving.redis_server import redis_server

APPSIM = shutil.which("appsim") or str(Path(os.sys.executable).parent / "appsim")
BURST = 10
FAILURE_BURST = 4


def per_worker(metrics_dir: Path, endpoint: str) -> dict[str, float]:
    """Requests to ``endpoint`` answered by each worker (pid), from the worker's own counter file."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        total = sum(sample.value for metric in MultiProcessCollector.merge([str(path)], accumulate=True)
                    for sample in metric.samples
                    if sample.name == "appsim_requests_total" and sample.labels.get("endpoint") == endpoint)
        counts[path.stem.split("_")[1]] = total
    return counts


def serving_pids(text: str) -> set[str]:
    return set(re.findall(r'^appsim_model_version{arm="champion",pid="(\d+)"} 1.0$', text, re.M))


def scraped(text: str, endpoint: str, status: str) -> float:
    """Requests to ``endpoint`` answered ``status`` in one scrape, over every other label (the arm)."""
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "appsim_requests_total" and sample.labels.get("endpoint") == endpoint
               and sample.labels.get("status") == status)


@pytest.fixture
def two_workers(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"left by an earlier server")  # must be cleared
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPSIM_")} | {
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), "APPSIM_FEEDBACK_URI": "none",
        "APPSIM_API_KEYS": "acme:key-acme,globex:key-globex", "APPSIM_RATE_LIMIT": "0.001",
        "APPSIM_RATE_BURST": str(BURST), "APPSIM_AUTH_FAILURE_BURST": str(FAILURE_BURST),
        "APPSIM_AUTH_FAILURES_PER_MINUTE": "0.01"}
    server = subprocess.Popen([APPSIM, "serve", "--store", str(tmp_path), "--port", str(port), "--workers", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # Connection: close: every request is a new connection, accepted by whichever worker the kernel picks.
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Connection": "close"}, timeout=10)
    try:
        def ready() -> bool:
            """Both workers have a model: each reports its own model_version (the gauge's pid label)."""
            try:
                return len(serving_pids(http.get("/metrics").text)) == 2
            except httpx.TransportError:
                assert server.poll() is None, server.stdout.read().decode()
                return False
        wait_for(ready, timeout=90, every=0.2)
        yield http, metrics_dir
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0].decode()
        assert "Application shutdown complete" in output
        assert not list(metrics_dir.glob("gauge_live*.db"))  # each worker's live gauges left with it
    finally:
        http.close()
        if server.poll() is None:
            server.kill()
            server.wait()


def test_two_workers_are_one_server(two_workers):
    http, metrics_dir = two_workers
    assert "counter_999999.db" not in os.listdir(metrics_dir)

    # One scrape covers every worker: a counter both workers increment reads the total every time.
    with ThreadPoolExecutor(8) as pool:  # concurrent connections, so that the idle worker accepts some
        for _ in range(30):
            assert set(pool.map(lambda _: http.get("/ping").status_code, range(16))) == {200}
            if len([n for n in per_worker(metrics_dir, "/ping").values() if n > 0]) == 2:
                break
    served = per_worker(metrics_dir, "/ping")
    assert len([n for n in served.values() if n > 0]) == 2, served
    total = sum(served.values())
    wait_for(lambda: scraped(http.get("/metrics").text, "/ping", "200") >= total)
    reads = [scraped(http.get("/metrics").text, "/ping", "200") for _ in range(6)]
    assert reads == [total] * 6
    # Per-worker gauges carry the worker's pid; both workers report, whichever answers the scrape.
    assert all(len(serving_pids(http.get("/metrics").text)) == 2 for _ in range(4))
    assert re.search(r"^appsim_model_ready 1.0$", http.get("/metrics").text, re.M)

    # One key's bucket, shared by both workers: the burst, not twice the burst.
    codes: Counter[int] = Counter()
    with ThreadPoolExecutor(8) as pool:
        for _ in range(20):
            codes.update(pool.map(lambda _: http.get("/v1/models", headers={"X-API-Key": "key-acme"}).status_code,
                                  range(16)))
            if len(per_worker(metrics_dir, "/v1/models")) == 2 and min(per_worker(metrics_dir, "/v1/models").values()):
                break
    assert min(per_worker(metrics_dir, "/v1/models").values()) > 0  # both workers answered the key
    assert codes[200] == BURST and codes[429] == sum(codes.values()) - BURST

    # Failed authentications from one address, across both workers; then even a right key is refused.
    failures = [http.get("/v1/models", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(10)]
    assert failures == [401] * FAILURE_BURST + [429] * (10 - FAILURE_BURST)
    refused = http.get("/v1/models", headers={"X-API-Key": "key-globex"})
    assert refused.status_code == 429 and refused.json()["error"] == "too_many_failed_authentications"
    assert int(refused.headers["Retry-After"]) > 60
    text = http.get("/metrics").text
    assert 'appsim_rate_limited_total{limit="too_many_failed_authentications"} 7.0' in text
    assert f'appsim_rate_limited_total{{limit="rate_limited"}} {float(codes[429])}' in text


def test_two_hosts_share_one_key_limit_through_redis(tmp_path):
    publish(SQLiteRegistry(tmp_path / "registry.db"), tmp_path, build_artifact())
    with redis_server(tmp_path) as redis_url:
        settings = settings_for(tmp_path, redis_url=redis_url, rate_per_second=0.001, rate_burst=6, feedback_uri="none")
        with running_server(create_app(settings)) as first, running_server(create_app(settings)) as second:
            clients = [httpx.Client(base_url=url, headers={"X-API-Key": "key-acme"}) for url in (first, second)]
            for client in clients:
                wait_for(lambda: client.get("/ping").status_code == 200)
            codes = [clients[i % 2].get("/v1/models").status_code for i in range(14)]
            assert codes.count(200) == 6 and codes[6:] == [429] * 8
            assert clients[1].get("/v1/models", headers={"X-API-Key": "key-globex"}).status_code == 200
            for client in clients:
                client.close()
