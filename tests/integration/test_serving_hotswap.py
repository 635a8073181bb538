"""A new version approved while requests flow: no request fails, answers switch version; a corrupt
version approved after it is refused while the good one keeps serving."""

from __future__ import annotations

import threading

import httpx

from models.registry_sqlite import SQLiteRegistry
from serving.app import create_app
from serving.settings import ServingSettings
from tests.integration.test_serving_api import HEADERS, settings_for
from tests.serving.helpers import build_artifact, publish, running_server, wait_for


def test_hot_swap_under_load_has_no_failed_request(tmp_path):
    registry = SQLiteRegistry(tmp_path / "registry.db")
    publish(registry, tmp_path, build_artifact())
    settings: ServingSettings = settings_for(tmp_path, poll_seconds=0.05)
    results: list[tuple[int, int | None]] = []  # (status, model_version) in the order each client saw them
    per_client: list[list[int]] = [[], []]
    stop = threading.Event()

    def client_loop(url: str, seen: list[int]) -> None:
        with httpx.Client(base_url=url, headers=HEADERS, timeout=10) as http:
            i = 0
            while not stop.is_set():
                i += 1
                if i % 3:
                    answer = http.get(f"/v1/apps/app-{i % 240:05d}/similar", params={"k": 5})
                else:
                    answer = http.post("/v1/predict", json={"app_id": f"app-{i % 240:05d}"})
                version = answer.json().get("model_version") if answer.status_code == 200 else None
                results.append((answer.status_code, version))
                if version is not None:
                    seen.append(version)

    with running_server(create_app(settings)) as url:
        with httpx.Client(base_url=url) as http:
            wait_for(lambda: http.get("/ping").status_code == 200)
            threads = [threading.Thread(target=client_loop, args=(url, seen)) for seen in per_client]
            for thread in threads:
                thread.start()
            try:
                wait_for(lambda: len(results) > 100)
                v2 = publish(registry, tmp_path, build_artifact(seed=2, shift=0.3))  # approved: the new champion
                wait_for(lambda: all(seen and seen[-1] == v2 for seen in per_client))
                bad = publish(registry, tmp_path, build_artifact(seed=3), corrupted=True)
                wait_for(lambda: str(bad) in http.get("/v1/models", headers=HEADERS).json()["refused_versions"])
                count = len(results)
                wait_for(lambda: len(results) > count + 100)
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            metrics = http.get("/metrics").text

    assert [status for status, _ in results if status != 200] == []
    for seen in per_client:
        switch = seen.index(v2)
        assert switch > 0 and set(seen[:switch]) == {1} and set(seen[switch:]) == {v2}  # switched once, for good
    assert "appsim_model_swaps_total 1.0" in metrics
    assert "appsim_model_load_failures_total 1.0" in metrics
