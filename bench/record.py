"""Recorder benchmark on open_clip ViT-B-32 (random weights), measured side by side in one run.

1. Throughput: recording CLS tokens of the 12 `visual.transformer.resblocks.*.attn` sites vs a bare forward
   pass over the same stimuli (render + preprocess + forward); interleaved repeats, best of each. Goal: < 5 %.
2. Peak RSS (`ru_maxrss`) of a fresh subprocess recording all tokens of those sites for N_small vs N_large
   stimuli (default 500 vs 2000). Goal: within 10 %.
3. MB/s: bytes of the final file per second of recording (the shards are written once more in the merge).

Usage: python bench/record.py [--n 192] [--repeats 3] [--n-small 500] [--n-large 2000] [--sites PATTERN]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SITES = "visual.transformer.resblocks.*.attn"


def _subject():
    from rig.subjects import load_subject
    return load_subject("open_clip", "ViT-B-32", weights="random", seed=0, device="cpu")


def bare(subject, stim, batch_size: int) -> float:
    """Seconds for render + forward of every stimulus, no hooks, nothing written."""
    import torch
    t = time.perf_counter()
    for _, images in stim.batches(batch_size):
        subject.forward(torch.from_numpy(images))
    return time.perf_counter() - t


def recorded(subject, stim, batch_size: int, folder: Path, tokens: str, sites: str) -> tuple[float, int]:
    """Seconds for `record` (shards + merge; the catalogue is kept on the subject) and the file's size in bytes."""
    from rig.recorder import record
    path = folder / f"rec-{time.perf_counter_ns()}.nc"
    t = time.perf_counter()
    record(subject, stim, [sites], path, tokens=tokens, batch_size=batch_size, progress=False)
    dt = time.perf_counter() - t
    size = path.stat().st_size
    path.unlink()
    return dt, size


def child(n: int, sites: str, batch_size: int, folder: str) -> None:
    """Run in a fresh process: record all tokens of `n` stimuli; print JSON with peak RSS (MiB) and timings."""
    import stimuli
    subject = _subject()
    stim = stimuli.circles(n=n, seed=0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dt, size = recorded(subject, stim, batch_size, Path(folder), "all", sites)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "rss_before_MiB": base, "peak_MiB": peak, "seconds": dt, "bytes": size}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=192, help="stimuli for the throughput comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--n-small", type=int, default=500)
    ap.add_argument("--n-large", type=int, default=2000)
    ap.add_argument("--sites", default=SITES)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.sites, args.batch_size, args.folder)
        return

    import stimuli
    import torch
    print(f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    subject = _subject()
    stim = stimuli.circles(n=args.n, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        bare(subject, stim, args.batch_size)                      # warm-up
        from rig.sites import catalogue
        t = time.perf_counter()
        catalogue(subject, (stim.canvas, stim.canvas))   # probed once per subject (a session does it at preflight)
        t_cat = time.perf_counter() - t
        t_bare, t_rec, size = [], [], 0
        for _ in range(args.repeats):
            t_bare.append(bare(subject, stim, args.batch_size))
            dt, size = recorded(subject, stim, args.batch_size, folder, "cls", args.sites)
            t_rec.append(dt)
        b, r = min(t_bare), min(t_rec)
        print(f"\n1. throughput, {args.n} stimuli, CLS of {args.sites} (best of {args.repeats})")
        print(f"   bare forward      {b:8.2f} s   {args.n / b:7.1f} stimuli/s")
        print(f"   record            {r:8.2f} s   {args.n / r:7.1f} stimuli/s   overhead {100 * (r / b - 1):+.1f} %")
        print(f"   catalogue probe   {t_cat:8.2f} s   (once per subject: forward passes of 2 and 3 images)")

        rows = []
        for n in (args.n_small, args.n_large):
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--sites", args.sites,
                                  "--batch-size", str(args.batch_size), "--folder", tmp],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"\n2./3. all tokens of {args.sites}, fresh subprocess each")
        print(f"   {'stimuli':>8} {'RSS before':>11} {'peak RSS':>9} {'seconds':>8} {'file MB':>8} {'MB/s':>7}")
        for row in rows:
            mb = row["bytes"] / 1e6
            print(f"   {row['n']:8d} {row['rss_before_MiB']:9.0f}Mi {row['peak_MiB']:7.0f}Mi {row['seconds']:8.1f} "
                  f"{mb:8.0f} {mb / row['seconds']:7.1f}")
        small, large = rows
        print(f"   peak RSS ratio {args.n_large} / {args.n_small}: {large['peak_MiB'] / small['peak_MiB']:.3f} "
              "(goal: within 10 %)")


if __name__ == "__main__":
    main()
