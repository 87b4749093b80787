"""Benchmark: an 8-session sweep on a local Dask cluster of 1 worker vs 2 workers (one thread each), and the
scheduling overhead per session.

Each session is the planted-truth phantom (CPU-bound numpy: recording, ratemaps, spatial scores with
shuffles), 8 points (2 noise levels x 4 stimulus sets). Both clusters are started and warmed up (rig and torch
imported on every worker) before the clock starts, so the times compare running the sessions, not starting
Python; the start-up is printed apart. Each sweep writes a fresh archive in a temporary folder.

Scheduling overhead per session = (wall time of the sweep on 1 worker - the sum of the points' own run times,
measured inside the worker) / 8: everything the driver and Dask add to a session (submitting, moving the
task and its result, sweep.json, the report). The same is printed for the in-process executor (no Dask).
The load average (`os.getloadavg`) is printed before and after each run: the machine may be shared.

    python bench/sweep.py [--n 600] [--shuffles 19] [--sessions 8]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PROTOCOL = """\
schema_version = 1
name = "bench-sweep"

[subject]
source = "phantom"

[stimuli]
generator = "circles"
n = {n}
diameter = 20

[record]
sites = ["units"]

[[analyse]]
type = "ratemaps"
bins = 14

[[analyse]]
type = "spatial_scores"
shuffles = {shuffles}

[sweep]
grid = {{ "subject.options.noise" = [0.05, 1.0], "stimuli.seed" = {seeds} }}
"""


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def warm(client) -> None:
    def imports() -> None:
        import torch  # noqa: F401

        import rig.session  # noqa: F401
        import rig.sweep_exec  # noqa: F401

    client.run(imports)


def timed_sweep(protocol: Path, archive: Path, **kw) -> tuple[float, object]:
    import rig

    t0 = time.perf_counter()
    done = rig.sweep(protocol, archive=archive, progress=False, **kw)
    wall = time.perf_counter() - t0
    assert done.status == "completed", done.info.get("error")
    return wall, done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600, help="stimuli per session")
    ap.add_argument("--shuffles", type=int, default=19)
    ap.add_argument("--sessions", type=int, default=8, help="points (an even number)")
    a = ap.parse_args()
    from distributed import Client, LocalCluster

    tmp = Path(tempfile.mkdtemp(prefix="rig-bench-sweep-"))
    protocol = tmp / "sweep.toml"
    protocol.write_text(PROTOCOL.format(n=a.n, shuffles=a.shuffles, seeds=list(range(a.sessions // 2))))
    import rig.session  # noqa: F401  (the driver's imports, once, before any clock starts)
    from rig.sweeps import plan_sweep

    plan_sweep(protocol)
    print(f"{a.sessions} sessions (phantom, {a.n} stimuli, ratemaps, spatial scores with {a.shuffles} shuffles); "
          f"{os.cpu_count()} CPUs; load average (1/5/15 min) at start {load()}")
    rows = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            warm(client)
            startup = time.perf_counter() - t0
            before = load()
            wall, done = timed_sweep(protocol, tmp / f"archive-{workers}", scheduler=cluster.scheduler_address)
            inside = sum(p["seconds"] for p in done.points)
            rows[workers] = (wall, inside)
            print(f"{workers} worker{'s' if workers > 1 else ' '} x 1 thread: {wall:7.1f} s wall for the sweep "
                  f"(sum of the sessions' own times {inside:.1f} s; cluster start-up {startup:.1f} s); load "
                  f"{before} -> {load()}")
    before = load()
    wall_seq, done = timed_sweep(protocol, tmp / "archive-seq")
    inside_seq = sum(p["seconds"] for p in done.points)
    print(f"in-process:          {wall_seq:7.1f} s wall (sum of the sessions' own times {inside_seq:.1f} s); load "
          f"{before} -> {load()}")
    (w1, in1), (w2, _) = rows[1], rows[2]
    print(f"speed-up, 2 workers vs 1: {w1 / w2:.2f}x (goal >= 1.7x)")
    print(f"scheduling overhead per session on Dask: {(w1 - in1) / a.sessions:.3f} s (goal < 1 s); in-process "
          f"executor: {(wall_seq - inside_seq) / a.sessions:.3f} s")
    print(f"load average at the end {load()}; archives in {tmp}")


if __name__ == "__main__":
    sys.exit(main())
