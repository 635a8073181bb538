"""`appsim retrain` on a fresh copy of a store, per step: wall, CPU and peak RSS (README, "Scale runs").

    .venv/bin/python bench/retrain_scale.py --store /tmp/scale-200k --param window_end=2026-11-02T00:00:00Z

A retrain writes its run and a registry version into its store, so the store is copied first (to a temporary
folder beside it, removed afterwards unless ``--keep``) and every run starts from the same registry state:
``--no-champion`` removes the copy's registry (the candidate is then evaluated against the popularity baseline,
one model search fewer, and registered as version 1).

The steps are seen in the retrain's own progress lines on stderr (``[Step] started`` / ``succeeded in``). At each,
this script reads the child's CPU time (``/proc/PID/stat``: user + system of all its threads) and its peak RSS
(``VmHWM`` in ``/proc/PID/status``), then resets the peak (``/proc/PID/clear_refs``, 5) so that each phase's peak
is its own. "start-up" runs from the spawn to the first step (interpreter, imports, config, registry); "after the
steps" to the process's end. The whole process's figures come from wait4's rusage.

Reference, measured in the same run before the retrain: an exact FAISS search of 4,096 random queries over
200,000 x 64 vectors on one thread. The retrain's wall and CPU are also printed as multiples of it, the figure to
compare across machines and loads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")
STEP_LINE = re.compile(rb"^\[(?P<step>[A-Za-z]+)\] (?P<event>started|succeeded|FAILED)")


@dataclass
class Phase:
    name: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of proc(5))


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def reference_seconds() -> tuple[float, float]:
    """(wall, CPU) of the reference search: one thread, 4,096 queries over 200K x 64 vectors."""
    import faiss
    import numpy as np

    vectors = np.random.default_rng(0).standard_normal((200_000, 64)).astype(np.float32)
    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(64)
    index.add(vectors)
    wall, cpu = time.perf_counter(), time.process_time()
    index.search(vectors[:4096], 51)
    return time.perf_counter() - wall, time.process_time() - cpu


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_retrain(appsim: str, store: Path, params: list[str]) -> tuple[list[Phase], dict, int, list[str]]:
    """Run the retrain, following its step lines; returns the phases, the whole process's figures, the exit code
    and the last lines it printed."""
    command = [appsim, "retrain", "--store", str(store), *(a for p in params for a in ("--param", p))]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    phases: list[Phase] = []
    mark = (started, 0.0, "start-up")
    tail: list[str] = []
    for raw in iter(child.stdout.readline, b""):
        line = raw.rstrip(b"\r\n")
        tail = (tail + [line.decode(errors="replace")])[-15:]
        found = STEP_LINE.match(line)
        if not found:
            continue
        now, cpu, peak = time.perf_counter(), cpu_seconds(child.pid), peak_rss_mb(child.pid)
        phases.append(Phase(mark[2], now - mark[0], cpu - mark[1], peak))
        reset_peak(child.pid)
        mark = (now, cpu, found["step"].decode() if found["event"] == b"started" else "between steps")
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    ended = time.perf_counter()
    phases.append(Phase("after the steps", ended - mark[0], usage.ru_utime + usage.ru_stime - mark[1], float("nan")))
    # ru_maxrss forgets what the resets cleared: the process's peak is the largest of the phases' and its own
    peak = max([usage.ru_maxrss / 1024, *(p.peak_rss_mb for p in phases if p.peak_rss_mb == p.peak_rss_mb)])
    whole = {"wall_s": ended - started, "cpu_s": usage.ru_utime + usage.ru_stime, "user_s": usage.ru_utime,
             "system_s": usage.ru_stime, "peak_rss_mb": peak}
    return merged(phases), whole, child.returncode, tail


def merged(phases: list[Phase]) -> list[Phase]:
    """One row per name, in order of first appearance (the gaps between steps add up into one row)."""
    rows: dict[str, Phase] = {}
    for phase in phases:
        if phase.name in rows:
            row = rows[phase.name]
            row.wall_s, row.cpu_s = row.wall_s + phase.wall_s, row.cpu_s + phase.cpu_s
            row.peak_rss_mb = max(row.peak_rss_mb, phase.peak_rss_mb)
        else:
            rows[phase.name] = Phase(**asdict(phase))
    return list(rows.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="the store to copy (a folder)")
    parser.add_argument("--appsim", default=str(Path(sys.executable).with_name("appsim")),
                        help="the appsim executable to run (default: beside this Python)")
    parser.add_argument("--param", action="append", default=[], help="NAME=VALUE, passed to appsim retrain")
    parser.add_argument("--no-champion", action="store_true", help="remove the copy's registry first")
    parser.add_argument("--keep", action="store_true", help="keep the copied store (its path is printed)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    source = Path(args.store).resolve()
    if not (source / "catalog").is_dir():
        parser.error(f"{source} holds no catalog/: not an appsim store (create one with appsim simulate)")
    copy = Path(tempfile.mkdtemp(prefix=f"{source.name}-bench-", dir=source.parent))
    try:
        shutil.copytree(source, copy, dirs_exist_ok=True, symlinks=True)
        if args.no_champion:
            for registry in copy.glob("registry.db*"):
                registry.unlink()
        reference = reference_seconds()
        load_before = load_average()
        phases, whole, code, tail = run_retrain(args.appsim, copy, args.param)
        load_after = load_average()
    finally:
        if not args.keep:
            shutil.rmtree(copy, ignore_errors=True)
    if code != 0:
        print("\n".join(tail), file=sys.stderr)
        print(f"error: appsim retrain exited {code}; its last lines are above", file=sys.stderr)
        return 1
    print(f"load average {load_before} before, {load_after} after; store {source} copied to {copy}"
          f"{'' if args.keep else ' (removed)'}; registry {'removed' if args.no_champion else 'as copied'}")
    print("| phase | wall s | CPU s | peak RSS MB |\n|---|---|---|---|")
    for phase in phases:
        print(f"| {phase.name} | {phase.wall_s:.1f} | {phase.cpu_s:.1f} | "
              f"{'-' if phase.peak_rss_mb != phase.peak_rss_mb else f'{phase.peak_rss_mb:,.0f}'} |")
    print(f"| **whole process** | **{whole['wall_s']:.1f}** | **{whole['cpu_s']:.1f}** "
          f"({whole['user_s']:.1f} user + {whole['system_s']:.1f} system) | **{whole['peak_rss_mb']:,.0f}** |")
    print(f"reference (exact FAISS search, 4,096 x 200K x 64, one thread): {reference[0]:.2f} s wall, "
          f"{reference[1]:.2f} CPU-s; the retrain = {whole['wall_s'] / reference[0]:.1f}x its wall, "
          f"{whole['cpu_s'] / reference[1]:.1f}x its CPU")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "phases": [asdict(p) for p in phases], "whole": whole, "reference": {"wall_s": reference[0], "cpu_s": reference[1]},
            "load_before": load_before, "load_after": load_after, "store": str(source),
            "no_champion": args.no_champion}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
