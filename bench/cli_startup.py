"""How long `appsim --help` takes as a whole process, against bare interpreter start-up measured in the same run.

    .venv/bin/python bench/cli_startup.py [--runs 10]

Each command runs --runs times (after one warm-up), alternating, in a fresh process; prints the median wall
and CPU seconds of each and the ratio. The CLI imports only click when it lists its commands (every command
module defers its heavy imports), so the ratio says what the CLI adds over starting Python.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass (reference)": [sys.executable, "-c", "pass"],
    "appsim --help": [sys.executable, "-m", "pipelines.cli", "--help"],
    "appsim retrain --help": [sys.executable, "-m", "pipelines.cli", "retrain", "--help"],
}


def timed(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="counted runs of each command")
    runs = parser.parse_args().runs
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    for name, command in COMMANDS.items():
        timed(command)  # warm-up: file cache, .pyc
    for _ in range(runs):
        for name, command in COMMANDS.items():
            figures[name].append(timed(command))
    reference = statistics.median(w for w, _ in figures["python -c pass (reference)"])
    print(f"load average {os.getloadavg()[0]:.1f}; {runs} runs each, medians")
    for name, values in figures.items():
        wall = statistics.median(w for w, _ in values)
        cpu = statistics.median(c for _, c in values)
        print(f"{name:<28} wall {wall:6.3f} s  cpu {cpu:6.3f} s  wall / reference {wall / reference:5.2f}x")


if __name__ == "__main__":
    main()
