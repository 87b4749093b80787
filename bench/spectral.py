"""Bench of analyses.nystrom_ncut: speed at 100k x 768 next to the authors' ncut-pytorch (3.2, and 1.3.16, the
paper-era algorithm), peak RSS at 1M nodes streamed from netCDF, the study's 7M graph (measured, or projected
linearly from the largest size run), and agreement numbers.

    PYTHONPATH=$PWD python bench/spectral.py [--ncut-python /tmp/ncut3/bin/python]
        [--ncut1-python /tmp/ncut1/bin/python] [--big 1000000,2000000]

ncut-pytorch is a bench-only tool, run in its own interpreters (venvs with --system-site-packages, so it
cannot replace this environment's torch/numpy):
    python -m venv --system-site-packages /tmp/ncut3 && /tmp/ncut3/bin/pip install ncut-pytorch==3.2.0
    python -m venv --system-site-packages /tmp/ncut1
    /tmp/ncut1/bin/pip install --no-deps ncut-pytorch==1.3.16 && /tmp/ncut1/bin/pip install fpsample
Large netCDF files (recorder-style chunks: 250 stimuli x 197 tokens x 16 units) go to /tmp and are deleted.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def clustered(n, d=768, k=20, seed=0):
    """Planted clusters with a power-law within-cluster spectrum (not a low-rank toy). With k clusters the top k
    eigenvectors span the cluster indicators (equal clusters: near-equal eigenvalues, so only that whole
    subspace, not single eigenvectors, is comparable between implementations)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)).astype(np.float32)
    scales = (np.arange(1, d + 1) ** -0.5).astype(np.float32) * 1.5
    lab = rng.integers(k, size=n)
    out = np.empty((n, d), dtype=np.float32)
    for lo in range(0, n, 100_000):
        hi = min(n, lo + 100_000)
        out[lo:hi] = centres[lab[lo:hi]] + rng.standard_normal((hi - lo, d), dtype=np.float32) * scales
    return out, lab


def angles(a, b):
    qa, qb = np.linalg.qr(a)[0], np.linalg.qr(b)[0]
    return np.degrees(np.arccos(np.clip(np.linalg.svd(qa.T @ qb, compute_uv=False), -1, 1)))


def write_nc(path, n_nodes, tokens=197, d=768):
    import netCDF4
    n_stim = n_nodes // tokens
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("stimulus", n_stim), ds.createDimension("token", tokens), ds.createDimension("unit", d)
        v = ds.createVariable("site", "f4", ("stimulus", "token", "unit"), chunksizes=(250, tokens, 16))
        for lo in range(0, n_stim, 250):
            hi = min(n_stim, lo + 250)
            x, _ = clustered((hi - lo) * tokens, d, seed=lo)
            v[lo:hi] = x.reshape(hi - lo, tokens, d)
    return n_stim * tokens


CHILD = r"""
import sys, time, json, resource, xarray as xr
sys.path.insert(0, {here!r})
import analyses
da = xr.open_dataset({path!r}, engine="netcdf4")["site"]
t = time.perf_counter()
e = analyses.nystrom_ncut(da, n_eig=20)  # streamed: slabs of 250 stimuli, never the whole array
print(json.dumps({{"seconds": time.perf_counter() - t, "nodes": e.sizes["node"],
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "attrs": {{k: v for k, v in e.attrs.items() if k.startswith("seconds")}}}}))
"""

NCUT_PT = r"""
import sys, time, numpy as np, torch
from ncut_pytorch import Ncut
x = torch.from_numpy(np.load({path!r}))
t = time.perf_counter()
v = Ncut(n_eig=20, device="cpu").fit_transform(x)
print("SECONDS", time.perf_counter() - t)
np.save({out!r}, v.numpy())
"""

NCUT_PT1 = r"""
import sys, time, numpy as np, torch
from ncut_pytorch import NCUT
x = torch.from_numpy(np.load({path!r}))
t = time.perf_counter()
v, _ = NCUT(num_eig=20, num_sample=10000, knn=10, indirect_connection=False, device="cpu").fit_transform(x)
print("SECONDS", time.perf_counter() - t)
np.save({out!r}, v.numpy())
"""


def run_reference(python, script, tmp, label, ours):
    """Time an ncut-pytorch version on the saved 100k features; principal angles of its top 10 vs ours."""
    if not os.path.exists(python):
        print(f"{label}: {python} not found, skipped (see the module docstring)")
        return
    r = subprocess.run([python, "-c", script.format(path=f"{tmp}/x.npy", out=f"{tmp}/v.npy")],
                       capture_output=True, text=True)
    sec = [ln for ln in r.stdout.splitlines() if ln.startswith("SECONDS")]
    if not sec:
        print(f"{label} failed:", r.stderr[-500:])
        return
    ref = np.load(f"{tmp}/v.npy")
    print(f"{label}, same data: {float(sec[0].split()[1]):.1f} s; max principal angle ours vs theirs over the "
          f"top 20 (the 20 clusters' subspace): {angles(ours, ref[:, :20]).max():.1f} deg")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ncut-python", default="/tmp/ncut3/bin/python", help="a venv with ncut-pytorch 3.2")
    ap.add_argument("--ncut1-python", default="/tmp/ncut1/bin/python", help="a venv with ncut-pytorch 1.3.16")
    ap.add_argument("--big", default="1000000,2000000", help="node counts streamed from netCDF (7000000 = full)")
    args = ap.parse_args()
    sys.path.insert(0, HERE)
    import analyses
    print("uptime before:", os.popen("uptime").read().strip())
    tmp = tempfile.mkdtemp(dir="/tmp", prefix="bench_spectral_")
    try:
        # agreement with the exact cut on a graph small enough for both
        xs, labs = clustered(6000, 768, k=12, seed=1)
        ex = analyses.ncut(xs, n_eig=12, max_nodes=10000)
        for sd in (128, None):
            ny = analyses.nystrom_ncut(xs, n_eig=12, n_sample=2000, search_dim=sd)
            print(f"agreement with the exact cut, 6000 nodes (12 clusters), n_sample=2000, search_dim={sd}: max "
                  f"principal angle over the top 12 = {angles(ex.values, ny.values).max():.2f} deg")
        ny = analyses.nystrom_ncut(xs, n_eig=12, n_sample=2000, anchors=256)
        print(f"  the same with anchors=256: {angles(ex.values, ny.values).max():.2f} deg")
        # speed at 100k x 768
        x, _ = clustered(100_000)
        t = time.perf_counter()
        ours = analyses.nystrom_ncut(x, n_eig=20)
        print(f"ours 100,000 x 768, 20 eig (numpy): {time.perf_counter() - t:.1f} s "
              f"({ {k: v for k, v in ours.attrs.items() if k.startswith('seconds')} })")
        t = time.perf_counter()
        fast = analyses.nystrom_ncut(x, n_eig=20, anchors=1024)
        print(f"ours, anchors=1024 (propagation from 1024 of the sampled nodes, as ncut-pytorch 3.x): "
              f"{time.perf_counter() - t:.1f} s; max principal angle to the default over the top 20: "
              f"{angles(ours.values, fast.values).max():.1f} deg")
        t = time.perf_counter()
        analyses.nystrom_ncut(x, n_eig=20, device="cpu")
        print(f"ours 100,000 x 768, 20 eig (torch, cpu): {time.perf_counter() - t:.1f} s")
        np.save(f"{tmp}/x.npy", x)
        run_reference(args.ncut1_python, NCUT_PT1, tmp, "ncut-pytorch 1.3.16 (paper-era: cosine affinity, "
                      "FPS, K=10, no indirect connection)", ours.values)
        run_reference(args.ncut_python, NCUT_PT, tmp, "ncut-pytorch 3.2 (Ncut(n_eig=20): RBF affinity with "
                      "its own sigma, so only the leading subspace is comparable)", ours.values)
        del x
        # big graphs streamed from netCDF, in a subprocess each (peak RSS)
        for n in [int(v) for v in args.big.split(",") if v]:
            if shutil.disk_usage("/tmp").free < n * 768 * 4 * 1.3:
                print(f"{n} nodes: not enough disk in /tmp, skipped")
                continue
            path = f"{tmp}/big.nc"
            t = time.perf_counter()
            n_real = write_nc(path, n)
            w = time.perf_counter() - t
            r = subprocess.run([sys.executable, "-c", CHILD.format(here=HERE, path=path)], capture_output=True,
                               text=True)
            os.remove(path)
            try:
                res = json.loads(r.stdout.strip().splitlines()[-1])
            except Exception:  # noqa: BLE001
                print(f"{n} nodes failed:", r.stderr[-800:])
                continue
            a = res["attrs"]
            fixed = a["seconds_fps"] + a["seconds_eigen"]  # the subgraph: independent of the graph's size
            per = (a["seconds_presample"] + a["seconds_propagate"]) / n_real  # two passes over the file
            print(f"{n_real:,} nodes x 768 streamed from netCDF ({n_real * 768 * 4 / 2**30:.1f} GiB, written in "
                  f"{w:.0f} s): {res['seconds']:.0f} s, peak RSS {res['peak_rss_gb']:.2f} GiB; {a}; projected to "
                  f"7,000,000 nodes (subgraph fixed, both passes linear): {(fixed + per * 7e6) / 60:.1f} min")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        print("uptime after:", os.popen("uptime").read().strip())


if __name__ == "__main__":
    main()
