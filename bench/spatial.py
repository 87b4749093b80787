"""Benchmark: ratemaps + spatial information + grid + border scores for many units, shuffle nulls (every
shuffle vs the sequential stop), and
opexebo per map (when a venv with opexebo exists, default /tmp/opx), printed side by side in one run.

    python bench/spatial.py [--units 10000] [--stimuli 3000] [--bins 28] [--null-units 1000] [--shuffles 100]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import xarray as xr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analyses.nulls import SCORES, spatial_nulls  # noqa: E402
from analyses.ratemaps import ratemaps  # noqa: E402
from analyses.spatial import border_score, grid_score, spatial_information  # noqa: E402

OPEXEBO_SNIPPET = """
import sys, time, warnings, numpy as np, opexebo
warnings.simplefilter("ignore")
maps = np.load(sys.argv[1])
t = time.process_time()
for m in maps:
    opexebo.analysis.grid_score(opexebo.analysis.autocorrelation(m))
print((time.process_time() - t) / len(maps))
"""


def responses(n_stimuli: int, n_units: int, seed: int = 0) -> xr.DataArray:
    """Smooth random spatial tuning (sums of random Gaussian bumps) plus noise, signed activations."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 224, n_stimuli), rng.uniform(0, 224, n_stimuli)
    centres = rng.uniform(0, 224, (8, 2))
    basis = np.exp(-((x[:, None] - centres[:, 0]) ** 2 + (y[:, None] - centres[:, 1]) ** 2) / (2 * 30.0 ** 2))
    r = (basis @ rng.normal(size=(8, n_units)) + 0.3 * rng.normal(size=(n_stimuli, n_units))).astype(np.float32)
    return xr.DataArray(r, dims=("stimulus", "unit"), coords={"x": ("stimulus", x), "y": ("stimulus", y)},
                        attrs={"canvas": 224})


def timed(fn):
    """(result, (wall seconds, CPU seconds of this process, all threads)): the machine is shared, so wall
    time alone overstates our cost when other jobs run."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, (time.perf_counter() - t, time.process_time() - c)


def fmt(t: tuple[float, float]) -> str:
    return f"{t[0]:6.2f} s ({t[1]:6.2f} cpu)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=10000)
    ap.add_argument("--stimuli", type=int, default=3000)
    ap.add_argument("--bins", type=int, default=28)
    ap.add_argument("--null-units", type=int, default=1000)
    ap.add_argument("--shuffles", type=int, default=100)
    ap.add_argument("--opexebo-python", default="/tmp/opx/bin/python")
    a = ap.parse_args()

    resp = responses(a.stimuli, a.units)
    ds, t_maps = timed(lambda: ratemaps(resp, bins=a.bins, smoothing=1.0))
    maps = ds.ratemap.values
    _, t_si = timed(lambda: spatial_information(maps, ds.occupancy.values, rate="shift"))
    _, t_grid = timed(lambda: grid_score(maps))
    _, t_border = timed(lambda: border_score(maps))
    parts = (t_maps, t_si, t_grid, t_border)
    total = (sum(p[0] for p in parts), sum(p[1] for p in parts))
    print(f"{a.units} units, {a.stimuli} stimuli, {a.bins}x{a.bins} bins; seconds wall (cpu)")
    print(f"  ratemaps {fmt(t_maps)} | spatial info {fmt(t_si)} | grid {fmt(t_grid)} | border {fmt(t_border)}")
    print(f"  total {fmt(total)} = {1e3 * total[0] / a.units:.2f} ms/unit wall "
          f"({1e3 * total[1] / a.units:.2f} cpu)")
    grid_ms = 1e3 * t_grid[1] / a.units

    null_resp = resp.isel(unit=slice(0, a.null_units))
    n_maps = a.null_units * (a.shuffles + 1)
    kw = dict(n_shuffles=a.shuffles, bins=a.bins, smoothing=1.0)
    full, t_null = timed(lambda: spatial_nulls(null_resp, stop_after=None, **kw))
    print(f"nulls: {a.shuffles} shuffles x {a.null_units} units, every shuffle: {fmt(t_null)} "
          f"= {1e3 * t_null[0] / n_maps:.2f} ms per map wall ({1e3 * t_null[1] / n_maps:.2f} cpu) "
          f"(ratemap + 3 scores)")
    early, t_early = timed(lambda: spatial_nulls(null_resp, **kw))
    drawn = ", ".join(f"{k} {float(early[k + '_shuffles'].mean()):.1f}" for k in SCORES)
    same = bool((early["class"].values == full["class"].values).all())
    print(f"nulls, sequential stop (h = {early.attrs['stop_after']}): {fmt(t_early)}, "
          f"{t_null[1] / t_early[1]:.1f}x less cpu; shuffles drawn per unit: {drawn}; same classes: {same}")

    opx = Path(a.opexebo_python)
    if opx.exists():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "maps.npy"
            np.save(path, maps[:20].astype(np.float64))
            out = subprocess.run([str(opx), "-c", OPEXEBO_SNIPPET, str(path)], capture_output=True, text=True)
        if out.returncode == 0:
            opx_ms = 1e3 * float(out.stdout.strip().splitlines()[-1])
            print(f"grid score per map (cpu): opexebo {opx_ms:.1f} ms | ours {grid_ms:.2f} ms | "
                  f"ratio {opx_ms / grid_ms:.0f}x")
        else:
            print("opexebo timing failed:", out.stderr.strip().splitlines()[-1:])
    else:
        print(f"opexebo not found at {opx}; see tests/fixtures/opexebo/make_fixtures.py for the venv")


if __name__ == "__main__":
    main()
