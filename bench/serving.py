"""Serving throughput and latency on loopback: `appsim serve` with a 100K-app and a 1M-app model.

    .venv/bin/python bench/serving.py --apps 100000 --apps 1000000 --workers 2

For each model size: builds (or reuses, under ``--workdir``) a synthetic artifact of clustered
64-d embeddings with the index the trainer would choose (exact up to 100K apps, IVF above,
recall@10 against exact search measured and printed), times the search in-process on one
thread, starts ``appsim serve --model-dir`` on 127.0.0.1 (feedback logging on, to a scratch
folder), and drives it with ``wrk`` when it is installed (Debian: ``apt-get install wrk``) for
the saturation runs, else with a small asyncio HTTP/1.1 keep-alive load generator:

- saturation: ``--connections`` closed-loop connections on /ping, /v1/apps/{id}/similar and
  /v1/predict, each bounded by ``--requests`` and ``--seconds``;
- steady rate: ``--rate`` req/s open-loop on /similar for ``--seconds``; latency counts from the
  scheduled send time, so queueing behind a slow answer is included (no coordinated omission);
- before those, the handlers in-process: CPU per request with the ASGI app called directly, one
  request at a time (``--asgi-requests``; no sockets, so a busy machine disturbs it far less).

Prints req/s, p50 and p99 per run, and /similar's throughput and p99 as a ratio to /ping's in the
same run (how close the handler gets to the framework floor: the figure to compare across changes
on a noisy machine). ``--tracing`` runs the same load again with tracing on
(``APPSIM_OTLP_ENDPOINT`` pointed at a local OTLP/HTTP sink on 127.0.0.1 that counts what it
receives) and prints each run's throughput and p99 with tracing on as a ratio to off.

``--feedback`` (on by default) measures what "acknowledged means durable" costs: /v1/feedback
(``FEEDBACK_EVENTS`` clicks a request) on one connection and on ``--connections``, with the
journal's fsync on and off (``APPSIM_JOURNAL_FSYNC=false``, same run, same machine), and prints the
ratio. ``--kill9`` measures the prediction-event loss bound: a steady /similar load, the server's
process group killed with SIGKILL mid-load, then 200 answers counted against the prediction events
that reached the store or the spill folder. The load generator shares the machine's cores with the
server, so the figures are a floor for what a separate client would see. Model build is not timed.

``--popular-table N`` instead compares answering /similar for the model's N most-shown apps from its
neighbour export (``APPSIM_POPULAR_APPS``, serving/popular.py; the export is made once, next to the
model, with ``appsim neighbors export``'s code) against FAISS: two servers in the same run, driven with
the same requests spread over those N apps, then stops.

First it prints what authenticating and rate-limiting one request costs with each bucket store
(``serving/security.py``): this process's memory (the reference, one worker's own limits), the
SQLite file the workers of one host share (on /dev/shm, as ``appsim serve --workers N`` makes it,
and on disk), and Redis (a real ``redis-server`` on 127.0.0.1, when the binary is installed).
``--limiter-only`` stops after that.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

os.environ.setdefault("OMP_NUM_THREADS", "1")

import faiss  # noqa: E402
import pandas as pd  # noqa: E402

from models.artifact import ModelArtifact  # noqa: E402
from models.features import MetadataEncoder, tokenize  # noqa: E402
from models.index import build_index  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.progress import Progress  # noqa: E402

DIM = 64
FEEDBACK_EVENTS = 10  # clicks per /v1/feedback request (--feedback-events)
READY_PINGS = 30
ENCODER_SAMPLE = 20_000  # the cold-start encoder is fitted on a sample: it is not what is measured here
CATEGORIES = ("games", "finance", "health", "travel", "music", "shopping", "education", "news", "social", "tools")


# --- the model -----------------------------------------------------------------------------
def build_model(n_apps: int, folder: Path, index_type: str, seed: int = 7) -> Path:
    """A synthetic artifact folder (reused when it already exists)."""
    if (folder / "manifest.json").is_file():
        return folder
    progress = Progress(f"model {n_apps:,} apps")
    rng = np.random.default_rng(seed)
    clusters = max(10, n_apps // 100)
    centers = rng.normal(size=(clusters, DIM)).astype(np.float32)
    labels = rng.integers(0, clusters, size=n_apps)
    embeddings = centers[labels] + 0.35 * rng.normal(size=(n_apps, DIM)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    app_ids = [f"app-{i:07d}" for i in range(n_apps)]
    sample = rng.choice(n_apps, size=min(ENCODER_SAMPLE, n_apps), replace=False)
    catalog = pd.DataFrame({
        "app_id": [app_ids[i] for i in sample],
        "category": [CATEGORIES[labels[i] % len(CATEGORIES)] for i in sample],
        "region": [("us", "eu", "apac")[i % 3] for i in sample],
        "pricing_model": [("free", "paid", "freemium")[i % 3] for i in sample],
        "features": [[f"cluster{labels[i] % 500}", f"tag{i % 50}"] for i in sample],
        "description": [f"{CATEGORIES[labels[i] % len(CATEGORIES)]} app about topic{labels[i] % 300}" for i in sample],
        "avg_rating": rng.uniform(2.5, 5.0, size=len(sample)),
    })
    tokens = tokenize(catalog)
    encoder = MetadataEncoder.fit_vocabulary(tokens)
    encoder.fit(encoder.features(tokens), embeddings[sample].astype(np.float64), np.ones(len(sample)))
    index, index_info = build_index(embeddings, index_type, exact_max_apps=100_000, seed=seed, progress=progress)
    impressions = rng.integers(0, 20_000, size=n_apps)
    clicks = rng.binomial(impressions, 0.02)
    conversions = rng.binomial(clicks, 0.1)
    stats = pd.DataFrame({"app_id": app_ids, "impressions": impressions, "clicks": clicks,
                          "conversions": conversions, "revenue": conversions * 2.0,
                          "ctr": (clicks + 1) / (impressions + 50), "cvr": (conversions + 1) / (clicks + 10)})
    artifact = ModelArtifact(app_ids, embeddings, index, encoder.to_json(), encoder.weights_array(), stats,
                             manifest={"index": index_info, "seed": seed, "trainer": "bench-synthetic"})
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    artifact.save(tmp)
    tmp.rename(folder)
    progress.finish("built")
    return folder


def in_process_times(folder: Path, queries: int, seed: int = 1) -> dict[str, tuple[float, float]]:
    """p50/p99 milliseconds of Predictor.similar and .predict on one thread (what a request does)."""
    faiss.omp_set_num_threads(1)
    predictor = Predictor(ModelArtifact.load(folder))
    rng = np.random.default_rng(seed)
    ids = [predictor.artifact.app_ids[i] for i in rng.integers(0, len(predictor.artifact.app_ids), size=queries)]
    out = {}
    for name, call in (("similar", lambda a: predictor.similar(a, 10)), ("predict", lambda a: predictor.predict(a, k=10))):
        timings = []
        for app_id in ids:
            started = time.perf_counter()
            call(app_id)
            timings.append(time.perf_counter() - started)
        out[name] = (float(np.percentile(timings, 50) * 1e3), float(np.percentile(timings, 99) * 1e3))
    out["index"] = predictor.artifact.manifest.get("index", {})  # type: ignore[assignment]
    return out


# --- the handlers in-process ---------------------------------------------------------------------
def asgi_costs(model_dir: Path, app_ids: list[str], requests: int) -> None:
    """CPU per request of /ping, /similar and /predict with the ASGI app called directly, one request at a
    time (routing, validation, auth, handler, middleware, event logging; no sockets or HTTP parsing). CPU
    time of this process counts the batcher thread too, and is much less sensitive to a busy machine than
    a throughput run: the figure for "what did a change cost a request"."""
    from serving.app import create_app
    from serving.settings import ServingSettings

    scratch = Path(tempfile.mkdtemp(prefix="appsim-bench-asgi-"))
    settings = ServingSettings(model_dir=str(model_dir), model_version=1, feedback_uri=str(scratch / "feedback"),
                               spill_dir=str(scratch / "spill"), rate_per_second=1e9, rate_burst=1e9)
    app = create_app(settings)

    async def call(method: str, path: str, query: bytes = b"", body: bytes = b"") -> int:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": query, "root_path": "",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                             (b"content-length", str(len(body)).encode())],
                 "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 8080)}
        status = 0

        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(scope, receive, send)
        return status

    calls = {
        "/ping": lambda a: call("GET", "/ping"),
        "/similar": lambda a: call("GET", f"/v1/apps/{a}/similar", b"k=10"),
        "/predict": lambda a: call("POST", "/v1/predict", body=f'{{"app_id": "{a}", "k": 10}}'.encode()),
    }

    async def measure() -> dict[str, tuple[float, float, float]]:
        async with app.router.lifespan_context(app):
            while await call("GET", "/ping") != 200:
                await asyncio.sleep(0.05)
            figures = {}
            for endpoint, request in calls.items():
                for app_id in app_ids[:200]:  # warm-up
                    await request(app_id)
                latencies = []
                cpu_started = time.process_time()
                for i in range(requests):
                    started = time.perf_counter()
                    status = await request(app_ids[i % len(app_ids)])
                    latencies.append(time.perf_counter() - started)
                    assert status == 200, (endpoint, status)
                cpu = (time.process_time() - cpu_started) / requests
                figures[endpoint] = (cpu * 1e6, float(np.percentile(latencies, 50) * 1e3),
                                     float(np.percentile(latencies, 99) * 1e3))
            return figures

    try:
        figures = asyncio.run(measure())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"handlers in-process (ASGI app called directly, {requests:,} requests each, one at a time):")
    ping_cpu, _, ping_p99 = figures["/ping"]
    for endpoint, (cpu, p50, p99) in figures.items():
        print(f"  {endpoint:<10} CPU {cpu:>7.1f} us/request ({cpu / ping_cpu:5.2f}x /ping)   "
              f"p50 {p50:.3f} ms   p99 {p99:.3f} ms ({p99 / ping_p99:5.2f}x /ping)", flush=True)


# --- rate-limit stores -------------------------------------------------------------------------
def limiter_costs(requests: int) -> None:
    """Microseconds per request of RateLimiter.authenticate (address check + key bucket) per store."""
    from serving.security import ApiKeys, LocalBuckets, RateLimiter, RedisBuckets, SqliteBuckets

    keys = ApiKeys({f"key-{i}": f"partner-{i}" for i in range(20)})
    folder = Path(tempfile.mkdtemp(prefix="appsim-bench-limits-"))
    shm = Path("/dev/shm")
    stores = {"in-process memory (reference)": LocalBuckets}
    if shm.is_dir():
        shm_dir = Path(tempfile.mkdtemp(prefix="appsim-bench-limits-", dir=shm))
        stores["SQLite file on /dev/shm (--workers N)"] = lambda: SqliteBuckets(str(shm_dir / "limits.db"))
    stores["SQLite file on disk"] = lambda: SqliteBuckets(str(folder / "limits.db"))
    redis_server = shutil.which("redis-server", path=str(Path(sys.executable).parent)) or shutil.which("redis-server")
    redis_process = None
    if redis_server:
        redis_port = free_port()
        redis_process = subprocess.Popen([redis_server, "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                                          "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
        stores["Redis on 127.0.0.1 (APPSIM_REDIS_URL)"] = lambda: RedisBuckets(f"redis://127.0.0.1:{redis_port}/0")

    async def measure(make_store) -> float:
        limiter = RateLimiter(make_store(), rate=1e9, burst=1e9, failure_rate=1, failure_burst=10)
        for _ in range(50):  # connect, prepare statements, load the script
            await limiter.authenticate(keys, "key-7", "10.0.0.1")
        started = time.perf_counter()
        for i in range(requests):
            await limiter.authenticate(keys, f"key-{i % 20}", "10.0.0.1")
        elapsed = time.perf_counter() - started
        await limiter.close()
        return elapsed / requests * 1e6

    try:
        if redis_process is not None:
            time.sleep(0.5)  # redis-server listens within a few ms; the first connection retries otherwise
        costs = {name: asyncio.run(measure(make)) for name, make in stores.items()}
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
        if shm.is_dir():
            shutil.rmtree(shm_dir, ignore_errors=True)
    reference = costs["in-process memory (reference)"]
    print(f"\nrate limits: authenticate + limit one request, {requests:,} requests, 1 thread "
          f"(20 keys compared in constant time; 2 bucket operations a request)")
    for name, micros in costs.items():
        print(f"  {name:<40} {micros:>8.1f} us/request  {micros / reference:>6.1f}x the in-process reference")
    if redis_process is None:
        print("  (no redis-server binary: install the dev extra, which ships it, to measure Redis)")


# --- the load generator ----------------------------------------------------------------------
class Connection:
    """One HTTP/1.1 keep-alive connection that sends prepared requests and reads whole answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        match = re.search(rb"(?i)content-length:\s*(\d+)", head)
        if match:
            await self.reader.readexactly(int(match.group(1)))
        return int(head[9:12])

    def close(self) -> None:
        self.writer.close()


@dataclass
class RunResult:
    endpoint: str
    mode: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1e3) if self.latencies else float("nan")


@dataclass
class WrkResult(RunResult):
    quantiles: dict[int, float]

    def percentile(self, q: float) -> float:
        return self.quantiles.get(q, float("nan"))  # wrk prints 50/75/90/99 only


def requests_for(endpoint: str, app_ids: list[str]) -> list[bytes]:
    host = b"Host: 127.0.0.1\r\n"
    if endpoint == "/ping":
        return [b"GET /ping HTTP/1.1\r\n" + host + b"\r\n"]
    if endpoint == "/similar":
        return [f"GET /v1/apps/{a}/similar?k=10 HTTP/1.1\r\n".encode() + host + b"\r\n" for a in app_ids]
    if endpoint == "/feedback":
        path = b"/v1/feedback"
        bodies = [orjson.dumps({"events": [{"event_type": "click", "app_id": a, "campaign_id": "bench", "partner_id": "bench",
                                            "user_id": f"u{i}", "clicked": i % 3 == 0} for i in range(FEEDBACK_EVENTS)]})
                  for a in app_ids]
    else:
        path = b"/v1/predict"
        bodies = [f'{{"app_id": "{a}", "k": 10}}'.encode() for a in app_ids]
    return [b"POST " + path + b" HTTP/1.1\r\n" + host + b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body for body in bodies]


async def saturate(port: int, endpoint: str, prepared: list[bytes], connections: int, max_requests: int,
                   max_seconds: float) -> RunResult:
    conns = [await Connection.open(port) for _ in range(connections)]
    latencies: list[float] = []
    errors = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def loop(conn: Connection) -> None:
        nonlocal issued, errors
        while issued < max_requests and time.perf_counter() < deadline:
            request = prepared[issued % len(prepared)]
            issued += 1
            started = time.perf_counter()
            status = await conn.send(request)
            latencies.append(time.perf_counter() - started)
            errors += status >= 300

    started = time.perf_counter()
    await asyncio.gather(*(loop(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return RunResult(endpoint, f"saturation x{connections}", len(latencies), errors, elapsed, latencies)


async def steady(port: int, endpoint: str, prepared: list[bytes], rate: float, seconds: float,
                 connections: int) -> RunResult:
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    latencies: list[float] = []
    errors = 0
    total = int(rate * seconds)

    async def one(i: int, scheduled: float) -> None:
        nonlocal errors
        conn = await pool.get()
        status = await conn.send(prepared[i % len(prepared)])
        latencies.append(time.perf_counter() - scheduled)  # from the planned send time
        errors += status >= 300
        pool.put_nowait(conn)

    tasks = []
    started = time.perf_counter()
    for i in range(total):
        scheduled = started + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, scheduled)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    while not pool.empty():
        pool.get_nowait().close()
    return RunResult(endpoint, f"steady {rate:g}/s", len(latencies), errors, elapsed, latencies)


def wrk_script(endpoint: str, app_ids: list[str]) -> str:
    """A wrk Lua script that cycles through the app ids (so every request searches a different app)."""
    ids = ", ".join(f'"{a}"' for a in app_ids)
    if endpoint == "/ping":
        make = 'wrk.format("GET", "/ping")'
    elif endpoint == "/similar":
        make = 'wrk.format("GET", "/v1/apps/" .. id .. "/similar?k=10")'
    else:
        make = ('wrk.format("POST", "/v1/predict", {["Content-Type"] = "application/json"}, '
                '\'{"app_id": "\' .. id .. \'", "k": 10}\')')
    return (f"local ids = {{{ids}}}\nlocal i = 0\n"
            f"request = function()\n  i = i + 1\n  local id = ids[(i % #ids) + 1]\n  return {make}\nend\n")


def wrk_saturate(port: int, endpoint: str, app_ids: list[str], connections: int, seconds: float) -> RunResult:
    """Closed-loop saturation with wrk (a C client: it leaves more of the cores to the server)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(endpoint, app_ids))
    try:
        output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, int(seconds))}s", "--latency",
                                 "-s", script.name, f"http://127.0.0.1:{port}"],
                                capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests/sec:\s*([\d.]+)", output).group(1))  # type: ignore[union-attr]
    quantiles = {int(q): float(v) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
                 for q, v, unit in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)", output)}
    errors = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", output)) else 0
    return WrkResult(endpoint, f"saturation x{connections} (wrk)", requests, errors, requests / rate, [], quantiles)


# --- the server ------------------------------------------------------------------------------
def start_server(model_dir: Path, port: int, workers: int, scratch: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [str(Path(sys.executable).with_name("appsim")), "serve", "--model-dir", str(model_dir), "--model-version", "1",
               "--port", str(port), "--workers", str(workers), "--feedback", str(scratch / "feedback"),
               "--spill-dir", str(scratch / "spill"), "--rate-limit", "1e9", "--rate-burst", "1e9",
               "--log-level", "warning"]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("APPSIM_")} | {"OMP_NUM_THREADS": "1"}
    # Its own process group: --kill9 kills the supervisor and its workers at once, as a crashed container would.
    server = subprocess.Popen(command, env=environment | (env or {}), cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 900
    ready_in_a_row = 0
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"appsim serve exited with {server.returncode}")
        try:
            # Each request is a new connection, which either worker may accept: READY_PINGS 200s in a row
            # mean every worker has its model (one 200 may come from the first worker while another loads).
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                ready_in_a_row += 1  # urlopen raises HTTPError (an OSError) on the 503 of a worker still loading
            if ready_in_a_row >= READY_PINGS:
                return server
            continue
        except OSError:
            ready_in_a_row = 0
        time.sleep(0.5)
    server.kill()
    raise RuntimeError("appsim serve did not become ready")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def drive(port: int, app_ids: list[str], args: argparse.Namespace) -> list[RunResult]:
    results = []
    for endpoint in ("/ping", "/similar", "/predict"):
        prepared = requests_for(endpoint, app_ids)
        await saturate(port, endpoint, prepared, args.connections, 500, 5)  # warm-up, not reported
        if args.wrk and shutil.which("wrk"):
            results.append(wrk_saturate(port, endpoint, app_ids, args.connections, args.seconds))
        else:
            results.append(await saturate(port, endpoint, prepared, args.connections, args.requests, args.seconds))
    results.append(await steady(port, "/similar", requests_for("/similar", app_ids), args.rate, args.seconds,
                                args.connections))
    return results


def feedback_durability(model_dir: Path, app_ids: list[str], args: argparse.Namespace) -> None:
    """/v1/feedback latency and throughput with the journal's fsync on and off (same run, same machine)."""
    prepared = requests_for("/feedback", app_ids)
    results: dict[tuple[bool, int], RunResult] = {}
    for fsync in (True, False):
        scratch = Path(tempfile.mkdtemp(prefix="appsim-bench-"))
        port = free_port()
        server = start_server(model_dir, port, args.workers, scratch, {"APPSIM_JOURNAL_FSYNC": str(fsync).lower()})
        try:
            for connections in (1, args.connections):
                asyncio.run(saturate(port, "/feedback", prepared, connections, 200, 5))  # warm-up
                results[fsync, connections] = asyncio.run(
                    saturate(port, "/feedback", prepared, connections, args.requests, args.seconds))
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n/v1/feedback, {FEEDBACK_EVENTS} events a request, 202 only once the events are in the local journal")
    print(f"{'journal':<16} {'connections':>11} {'requests':>9} {'non-2xx':>8} {'req/s':>9} {'events/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for (fsync, connections), r in results.items():
        print(f"{'fsync' if fsync else 'no fsync':<16} {connections:>11} {r.requests:>9,} {r.errors:>8} {r.rate:>9,.0f} "
              f"{r.rate * FEEDBACK_EVENTS:>9,.0f} {r.percentile(50):>8.2f} {r.percentile(99):>8.2f}")
    for connections in (1, args.connections):
        on, off = results[True, connections], results[False, connections]
        print(f"fsync cost at {connections} connection(s): p50 {on.percentile(50) - off.percentile(50):+.2f} ms "
              f"({on.percentile(50) / off.percentile(50):.2f}x), throughput {on.rate / off.rate:.0%} of no-fsync's",
              flush=True)


async def answer_until_killed(port: int, server: subprocess.Popen, prepared: list[bytes], rate: float,
                              seconds: float, connections: int) -> int:
    """Open-loop requests at ``rate``; after ``seconds`` the server's process group gets SIGKILL. Returns the
    number of 200 answers received before the kill."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(port))
    answered = 0

    async def one(i: int) -> None:
        nonlocal answered
        conn = await pool.get()
        try:
            status = await conn.send(prepared[i % len(prepared)])
        except (OSError, asyncio.IncompleteReadError):  # killed with this request in flight: never answered
            return
        answered += status == 200
        pool.put_nowait(conn)

    tasks = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)
    _, waiting = await asyncio.wait(tasks, timeout=5)
    for task in waiting:  # queued behind a connection the kill closed: never sent
        task.cancel()
    return answered


def prediction_loss_on_kill(model_dir: Path, app_ids: list[str], args: argparse.Namespace) -> None:
    """How many prediction events (logged per answer, acknowledged to no one) a kill -9 loses."""
    import gzip

    scratch = Path(tempfile.mkdtemp(prefix="appsim-bench-"))
    port = free_port()
    server = start_server(model_dir, port, args.workers, scratch)
    try:
        answered = asyncio.run(answer_until_killed(port, server, requests_for("/similar", app_ids), args.rate,
                                                   args.seconds, args.connections))
        stored = sum(len(gzip.decompress(path.read_bytes()).splitlines())
                     for path in (scratch / "feedback").rglob("*.gz"))
        spilled = sum(len(path.read_bytes().splitlines()) for path in (scratch / "spill").glob("*spill-*.jsonl"))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(scratch, ignore_errors=True)
    lost = answered - stored - spilled
    achieved = answered / args.seconds
    print(f"\nkill -9 after {args.seconds:g}s of /similar at {args.rate:g} req/s offered ({achieved:,.0f} answered/s): "
          f"{answered:,} answered 200, {stored:,} prediction events in the store, {spilled:,} in the spill folder, "
          f"{lost:,} lost = {lost / achieved:.2f}s of answers (bound: the flush interval, 1 s by default, plus the "
          "batch in flight)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", type=int, action="append", help="model size(s); default 100000")
    parser.add_argument("--index", default="auto", choices=["auto", "flat", "ivf", "hnsw"])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--requests", type=int, default=30_000, help="cap per saturation run")
    parser.add_argument("--seconds", type=float, default=10.0, help="cap per run (and the steady run's length)")
    parser.add_argument("--rate", type=float, default=500.0, help="steady-rate run, requests/s")
    parser.add_argument("--queries", type=int, default=2000, help="in-process timing queries")
    parser.add_argument("--wrk", action=argparse.BooleanOptionalAction, default=True, help="use wrk when installed")
    parser.add_argument("--build-only", action="store_true", help="build (cache) the models, then stop")
    parser.add_argument("--tracing", action="store_true", help="run /ping, /similar, /predict again with tracing on")
    parser.add_argument("--search", action=argparse.BooleanOptionalAction, default=True,
                        help="the /ping, /similar, /predict runs")
    parser.add_argument("--feedback", action=argparse.BooleanOptionalAction, default=True,
                        help="/v1/feedback with the journal's fsync on and off")
    parser.add_argument("--kill9", action=argparse.BooleanOptionalAction, default=True,
                        help="prediction events lost when the server is killed with SIGKILL under load")
    parser.add_argument("--asgi-requests", type=int, default=5000,
                        help="requests per endpoint with the ASGI app called in-process (0: skip)")
    parser.add_argument("--limiter-requests", type=int, default=20_000, help="requests per rate-limit store")
    parser.add_argument("--limiter-only", action="store_true", help="measure the rate-limit stores, then stop")
    parser.add_argument("--popular-table", type=int, default=0, metavar="N",
                        help="only compare /similar of the N most-shown apps answered from the neighbour export vs FAISS")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "appsim-bench-serving")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"machine: {os.cpu_count()} cores; server: {args.workers} uvicorn workers (uvloop, httptools), "
          f"OMP_NUM_THREADS=1; client: {'wrk' if args.wrk and shutil.which('wrk') else 'asyncio HTTP/1.1'}, "
          f"{args.connections} keep-alive connections, same machine", flush=True)
    if not args.build_only and not args.popular_table:
        limiter_costs(args.limiter_requests)
    if args.limiter_only:
        return
    for n_apps in args.apps or [100_000]:
        model_dir = build_model(n_apps, args.workdir / f"model-{n_apps}-{args.index}", args.index)
        if args.build_only:
            continue
        rng = np.random.default_rng(3)
        if args.popular_table:
            popular_table_runs(model_dir, args)
            continue
        app_ids = [f"app-{i:07d}" for i in rng.integers(0, n_apps, size=2000)]
        if args.asgi_requests:
            asgi_costs(model_dir, app_ids, args.asgi_requests)
        if args.search:
            search_runs(model_dir, n_apps, app_ids, args)
        if args.feedback:
            feedback_durability(model_dir, app_ids, args)
        if args.kill9:
            prediction_loss_on_kill(model_dir, app_ids, args)


def run_server(model_dir: Path, args: argparse.Namespace, app_ids: list[str],
               env: dict[str, str] | None = None) -> tuple[list[RunResult], float]:
    """Start `appsim serve`, drive it, stop it: (results, seconds until ready)."""
    scratch = Path(tempfile.mkdtemp(prefix="appsim-bench-"))
    port = free_port()
    started = time.monotonic()
    server = start_server(model_dir, port, args.workers, scratch, env)
    load_seconds = time.monotonic() - started
    try:
        return asyncio.run(drive(port, app_ids, args)), load_seconds
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
        shutil.rmtree(scratch, ignore_errors=True)


class OtlpSink:
    """A local OTLP/HTTP receiver on 127.0.0.1: answers 200 to every export and counts requests and bytes."""

    def __init__(self) -> None:
        import http.server
        import threading

        sink = self
        self.requests = self.bytes = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the http.server name)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.requests += 1
                sink.bytes += len(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def search_runs(model_dir: Path, n_apps: int, app_ids: list[str], args: argparse.Namespace) -> None:
    timing = in_process_times(model_dir, args.queries)
    index = timing.pop("index")
    results, load_seconds = run_server(model_dir, args, app_ids)
    print(f"\nmodel: {n_apps:,} apps x {DIM} dims, index {index.get('type')} {index.get('params', {})}, "
          f"recall@10 vs exact {index.get('recall_at_10_vs_exact')}; server ready in {load_seconds:.1f}s")
    print(f"in-process, 1 thread: similar p50 {timing['similar'][0]:.3f} ms, p99 {timing['similar'][1]:.3f} ms; "
          f"predict p50 {timing['predict'][0]:.3f} ms, p99 {timing['predict'][1]:.3f} ms")
    print(f"{'endpoint':<10} {'run':<24} {'requests':>9} {'non-2xx':>8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'p99.9 ms':>9}")
    for r in results:
        print(f"{r.endpoint:<10} {r.mode:<24} {r.requests:>9,} {r.errors:>8} {r.rate:>9,.0f} "
              f"{r.percentile(50):>8.2f} {r.percentile(99):>8.2f} {r.percentile(99.9):>9.2f}")
    ping, similar = results[0], results[1]
    print(f"/similar throughput is {similar.rate / ping.rate:.0%} of /ping's (the framework floor), its p99 "
          f"{similar.percentile(99) / ping.percentile(99):.2f}x /ping's", flush=True)
    if args.tracing:
        sink = OtlpSink()
        try:
            traced, _ = run_server(model_dir, args, app_ids, {"APPSIM_OTLP_ENDPOINT": sink.endpoint})
        finally:
            sink.close()
        print(f"tracing on (every request sampled, OTLP/HTTP to a local sink: {sink.requests:,} exports, "
              f"{sink.bytes / 1e6:.1f} MB), as a ratio to off:")
        for off, on in zip(results, traced):
            print(f"  {on.endpoint:<10} {on.mode:<24} req/s {on.rate:>9,.0f} ({on.rate / off.rate:.2f}x)  "
                  f"p99 {on.percentile(99):.2f} ms ({on.percentile(99) / off.percentile(99):.2f}x)", flush=True)

def popular_table_runs(model_dir: Path, args: argparse.Namespace) -> None:
    """/similar for the most-shown apps: FAISS (the default) vs the neighbour export, same requests, same run."""
    from serving.popular import most_shown
    from steps.export_neighbors import export

    artifact = ModelArtifact.load(model_dir)
    export_dir = model_dir.with_name(model_dir.name + "-neighbors")
    if not (export_dir / "manifest.json").is_file():
        result = export(artifact, str(export_dir), version=1, k=10)
        print(f"neighbour export: {result.apps:,} apps in {result.seconds:.1f} s ({result.apps_per_second:,.0f} apps/s)")
    popular = most_shown(artifact, args.popular_table)
    asked = [popular[i] for i in np.random.default_rng(3).integers(0, len(popular), size=20_000)]
    del artifact
    off, _ = run_server(model_dir, args, asked)
    on, _ = run_server(model_dir, args, asked, {"APPSIM_POPULAR_APPS": str(args.popular_table),
                                                "APPSIM_NEIGHBORS_URI": str(export_dir)})
    index = orjson.loads((model_dir / "manifest.json").read_bytes()).get("index", {})
    print(f"\n/similar of the {len(popular):,} most-shown apps (20,000 requests spread over them), {model_dir.name} "
          f"{index.get('params', '')}: FAISS (off) vs the neighbour export (APPSIM_POPULAR_APPS={args.popular_table}); "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'endpoint':<10} {'run':<24} {'req/s off':>10} {'req/s on':>9} {'ratio':>6} {'p50 off':>8} {'p50 on':>7} "
          f"{'p99 off':>8} {'p99 on':>7}  (ms)")
    for a, b in zip(off, on):
        print(f"{a.endpoint:<10} {a.mode:<24} {a.rate:>10,.0f} {b.rate:>9,.0f} {b.rate / a.rate:>5.2f}x "
              f"{a.percentile(50):>8.2f} {b.percentile(50):>7.2f} {a.percentile(99):>8.2f} {b.percentile(99):>7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
