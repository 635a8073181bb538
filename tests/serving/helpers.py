"""Small real artifacts and a real uvicorn server on 127.0.0.1, for the serving tests."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import faiss
import httpx
import numpy as np
import pandas as pd
import uvicorn

from models import storage
from models.artifact import ModelArtifact
from models.features import MetadataEncoder, tokenize
from models.registry_sqlite import SQLiteRegistry

CATEGORIES = ("games", "finance", "health", "travel", "music", "shopping", "education", "news")
WORDS = {
    "games": "arcade racing puzzle adventure levels", "finance": "budget banking savings invest money",
    "health": "fitness workout sleep steps calories", "travel": "flights hotels trips booking maps",
    "music": "songs playlists radio artists streaming", "shopping": "deals cart store coupons fashion",
    "education": "lessons courses quiz language learning", "news": "headlines stories daily breaking local",
}


def app_id(i: int) -> str:
    return f"app-{i:05d}"


def catalog(n_apps: int) -> pd.DataFrame:
    rows = []
    for i in range(n_apps):
        category = CATEGORIES[i % len(CATEGORIES)]
        rows.append({
            "app_id": app_id(i), "name": f"App {i}", "category": category, "region": ("us", "eu", "apac")[i % 3],
            "pricing_model": ("free", "paid", "freemium")[i % 3], "features": [f"{category}-tag", f"tag{i % 5}"],
            "description": f"{WORDS[category]} app number {i}", "avg_rating": 3.0 + (i % 20) / 10,
        })
    return pd.DataFrame(rows)


def build_artifact(n_apps: int = 240, dim: int = 16, seed: int = 0, shift: float = 0.0) -> ModelArtifact:
    """Apps clustered by category (a category's apps are each other's neighbours), a fitted
    metadata encoder, an exact index and per-app statistics. ``shift`` perturbs the embeddings
    so that two versions give different answers."""
    rng = np.random.default_rng(seed)
    frame = catalog(n_apps)
    centers = rng.normal(size=(len(CATEGORIES), dim))
    labels = np.arange(n_apps) % len(CATEGORIES)
    embeddings = centers[labels] + 0.3 * rng.normal(size=(n_apps, dim)) + shift * rng.normal(size=(n_apps, dim))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    tokens = tokenize(frame)
    encoder = MetadataEncoder.fit_vocabulary(tokens)
    encoder.fit(encoder.features(tokens), embeddings.astype(np.float64), np.ones(n_apps))
    index = faiss.IndexFlatIP(dim)
    index.add(embeddings)
    impressions = rng.integers(100, 5000, size=n_apps)
    clicks = (impressions * (0.01 + 0.01 * labels)).astype(int)
    conversions = clicks // 10
    stats = pd.DataFrame({
        "app_id": frame["app_id"], "impressions": impressions, "clicks": clicks, "conversions": conversions,
        "revenue": conversions * 1.5, "ctr": clicks / impressions, "cvr": conversions / np.maximum(clicks, 1),
    })
    return ModelArtifact(app_ids=list(frame["app_id"]), embeddings=embeddings, index=index,
                         encoder=encoder.to_json(), encoder_weights=encoder.weights_array(), app_stats=stats,
                         manifest={"index": {"type": "flat", "params": {}}, "seed": seed})


def ivf_artifact(n_apps: int, nlist: int, nprobe: int, shift: float = 0.0) -> ModelArtifact:
    """``build_artifact`` with an inner-product IVF-Flat index (the index TrainEmbeddings builds above 100K apps)."""
    artifact = build_artifact(n_apps=n_apps, shift=shift)
    dim = artifact.embeddings.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.train(artifact.embeddings)
    index.add(artifact.embeddings)
    index.nprobe = nprobe
    artifact.index = index
    artifact.manifest["index"] = {"type": "ivf", "params": {"nlist": nlist, "nprobe": nprobe}}
    return artifact


def publish(registry: SQLiteRegistry, folder: Path, artifact: ModelArtifact, status: str = "Approved",
            corrupted: bool = False) -> int:
    """Save ``artifact`` as a tarball under ``folder`` (``corrupted``: with a damaged embeddings
    file) and register it; returns the version number."""
    uri = artifact.save_tarball(str(folder / f"model-{len(registry.list_versions()) + 1}" / "model.tar.gz"))
    if corrupted:
        corrupt(uri)
    return registry.register(uri, status, {"recall_at_10": 0.5}, {"test": True}).version


def corrupt(artifact_uri: str) -> None:
    """Zero the last bytes of the tarball's embeddings: only the checksum check can notice."""
    members = {}
    with tarfile.open(storage.local_path(artifact_uri), "r:gz") as tar:
        for member in tar.getmembers():
            members[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    data = bytearray(members["embeddings.npy"])
    data[-8:] = b"\x00" * 8
    members["embeddings.npy"] = bytes(data)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    storage.local_path(artifact_uri).write_bytes(buffer.getvalue())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn (uvloop + httptools, lifespan on) on a free loopback port; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                            lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for(predicate: Any, timeout: float = 20.0, every: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(every)


def read_feedback(folder: Path) -> list[dict]:
    """Every event in a Firehose-layout feedback folder."""
    import gzip
    import json

    events = []
    for path in sorted(folder.rglob("*.gz")):
        events.extend(json.loads(line) for line in gzip.decompress(path.read_bytes()).splitlines() if line.strip())
    return events


APPSIM = str(Path(sys.executable).with_name("appsim"))


@contextmanager
def appsim_serve(store: Path, env: dict[str, str] | None = None, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``appsim serve --store`` as a real process on a free loopback port, ready to answer; yields it and its
    base URL. Killed on exit if the test left it running (read its output with ``process.communicate``)."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPSIM_")} | (env or {})
    process = subprocess.Popen([APPSIM, "serve", "--store", str(store), "--port", str(port), *args], env=environment,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert process.poll() is None, process.communicate()[0].decode()
            try:
                return httpx.get(f"{url}/ping", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_for(ready, timeout=60, every=0.1)
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def metric(text: str, name: str) -> float:
    """One sample's value from a Prometheus text page, e.g. ``appsim_events_total{outcome="written"}``."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not on the metrics page")
