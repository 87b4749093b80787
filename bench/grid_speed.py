"""Benchmark: the grid score at a base git revision vs this tree, side by side in one run (CPU per map, best
of --repeats, interleaved), with a bit-for-bit check; then this tree's grid + border scores and shuffle nulls
in 1 and 2 worker threads (wall and CPU).

    python bench/grid_speed.py [--base 5e40fab] [--maps 4096] [--repeats 3] [--null-units 256]

The machine is shared: CPU seconds per map are the comparable figure; wall time shows what the workers give
only when cores are free (state `uptime` with the numbers).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from analyses.nulls import spatial_nulls  # noqa: E402
from analyses.ratemaps import ratemaps  # noqa: E402
from analyses.spatial import border_score, grid_score  # noqa: E402
from spatial import responses  # noqa: E402  (bench/spatial.py)


def module_at(rev: str, tmp: Path):
    """analyses/spatial.py as of git revision `rev`, imported as a separate module (it shares the rest of
    `analyses` with this tree)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:analyses/spatial.py"], check=True,
                         capture_output=True, text=True).stdout
    path = tmp / "spatial_base.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("spatial_base", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def timed(fn):
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="5e40fab", help="git revision to compare with (default: before the speed-up)")
    ap.add_argument("--maps", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--null-units", type=int, default=256)
    a = ap.parse_args()

    resp = responses(3000, a.maps)
    maps = ratemaps(resp, bins=28, smoothing=1.0).ratemap.values
    with tempfile.TemporaryDirectory() as tmp:
        base = module_at(a.base, Path(tmp))
    runs = {"base": lambda: base.grid_score(maps), "this": lambda: grid_score(maps, workers=1)}
    cpu = {k: [] for k in runs}
    out = {}
    base.grid_score(maps[:64]), grid_score(maps[:64], workers=1)  # warm caches (rotation geometry)
    for _ in range(a.repeats):
        for k, fn in runs.items():
            out[k], _, c = timed(fn)
            cpu[k].append(1e3 * c / a.maps)
    same = np.array_equal(out["base"], out["this"], equal_nan=True)
    b, t = min(cpu["base"]), min(cpu["this"])
    print(f"grid score, {a.maps} maps 28x28, CPU ms per map (best of {a.repeats}): {a.base} {b:.3f} | this tree "
          f"(workers=1) {t:.3f} | {b / t:.2f}x less CPU; identical scores: {same}")

    for name, fn in (("grid + border", lambda w: (grid_score(maps, workers=w), border_score(maps, workers=w))),
                     ("nulls (100 shuffles, sequential stop)",
                      lambda w: spatial_nulls(resp.isel(unit=slice(0, a.null_units)), n_shuffles=100, bins=28,
                                              workers=w))):
        res = {}
        for w in (1, 2):
            res[w] = timed(lambda: fn(w))
        print(f"{name}: workers=1 {res[1][1]:.2f} s wall ({res[1][2]:.2f} cpu) | workers=2 {res[2][1]:.2f} s wall "
              f"({res[2][2]:.2f} cpu) | wall ratio {res[1][1] / res[2][1]:.2f}x")


if __name__ == "__main__":
    main()
