"""Gradient RF benchmark on open_clip ViT-B-32 (random weights): milliseconds per (unit, image), three ways,
each in a fresh subprocess (so each one's peak memory is its own), on the same units and images.

- naive: a per-unit loop, as one writes it by hand: for every unit, the full model's forward pass on the images
  with a hook keeping the site's output, then `backward()` of that unit's summed response; the input's `.grad`.
- captum: `captum.attr.NeuronGradient(model, site).attribute(images, neuron_selector=(token, unit))`, one call
  per unit (captum's API for the gradient of one neuron with respect to the input).
- ours: `analyses.gradient_rfs(rig.responses.site_response(...), images)`: the forward stops at the site and is
  shared by every unit of a batch; one vector-Jacobian product per unit on that graph (`--vectorize`: vmapped).

The loops of naive and captum cost the same for every unit, so they run on the first `--loop-units` units (ms per
(unit, image) is what is compared); ours runs on all `--units`. Units are channels of the CLS token of `--site`.
Also printed: the largest difference from naive (relative to naive's largest value), and each method's peak RSS
above the RSS after building the model (MiB, `ru_maxrss`).

Each method runs `--repeats` times, in alternating order (forwards, then backwards, ...), and its fastest run
counts, so that a machine whose load changes during the benchmark favours no method.

Usage: python bench/receptive_fields.py [--site visual.transformer.resblocks.5] [--units 64] [--images 16]
       [--loop-units 8] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(method: str, site: str, n_units: int, n_images: int, vectorize: bool, out: str) -> None:
    """Run one method in this (fresh) process and print a JSON line with its timing and peak RSS."""
    import numpy as np
    import torch

    import analyses
    from rig.responses import site_response
    from rig.subjects import load_subject

    subject = load_subject("open_clip", "ViT-B-32", weights="random", seed=0, device="cpu")
    module = dict(subject.model.named_modules())[site]
    images = torch.rand(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    fn = site_response(subject, site, units=range(n_units), tokens="cls")  # probes the catalogue once
    base = _rss_mib()
    t = time.perf_counter()
    if method == "ours":
        grads = analyses.gradient_rfs(fn, images, batch_size=n_images, unit_chunk=16, vectorize=vectorize).values
    elif method == "naive":
        kept = {}
        handle = module.register_forward_hook(lambda m, i, o: kept.__setitem__("out", o))
        grads = []
        try:
            for u in range(n_units):
                x = images.clone().requires_grad_(True)
                subject.encode_image(subject.preprocess(x))
                kept.pop("out")[:, 0, u].sum().backward()  # batch-first (B, T, D) output, CLS token
                grads.append(x.grad.numpy())
        finally:
            handle.remove()
        grads = np.stack(grads)
    else:
        from captum.attr import NeuronGradient

        ng = NeuronGradient(lambda x: subject.encode_image(subject.preprocess(x)), module)
        grads = np.stack([ng.attribute(images, neuron_selector=(0, u)).numpy() for u in range(n_units)])
    seconds = time.perf_counter() - t
    np.save(out, grads[: min(n_units, 8)])
    print(json.dumps({"method": method + ("+vectorize" if vectorize else ""), "seconds": seconds,
                      "units": n_units, "images": n_images,
                      "ms_per_unit_image": 1000 * seconds / (n_units * n_images),
                      "peak_rss_mib": _rss_mib() - base}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--site", default="visual.transformer.resblocks.5")
    p.add_argument("--units", type=int, default=64)
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--loop-units", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads in each run (default: torch's)")
    p.add_argument("--child", nargs=4, metavar=("METHOD", "UNITS", "VECTORIZE", "OUT"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.child:
        method, units, vectorize, out = a.child
        child(method, a.site, int(units), a.images, vectorize == "1", out)
        return
    import tempfile

    import numpy as np

    print(f"gradient RFs of ViT-B-32 (random weights), CLS token of {a.site}, {a.images} images of 224 px; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    rows: dict[str, dict] = {}
    plan = [("naive", a.loop_units, "0"), ("captum", a.loop_units, "0"), ("ours", a.units, "0"), ("ours", a.units, "1")]
    with tempfile.TemporaryDirectory(prefix="rf-bench-") as tmp:
        for r in range(a.repeats):
            for method, units, vec in (plan if r % 2 == 0 else plan[::-1]):
                out = str(Path(tmp) / f"{method}{vec}.npy")
                cmd = [sys.executable, __file__, "--site", a.site, "--images", str(a.images),
                       *(["--threads", str(a.threads)] if a.threads else []), "--child", method, str(units), vec, out]
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode:
                    sys.exit(f"{method} failed:\n{run.stderr[-2000:]}")
                row = json.loads(run.stdout.strip().splitlines()[-1])
                row["grads"] = np.load(out)
                print(f"  run {r + 1}: {row['method']:16s} {row['units']:3d} units: {row['seconds']:7.1f} s, "
                      f"{row['ms_per_unit_image']:7.1f} ms per (unit, image), peak RSS +{row['peak_rss_mib']:.0f} MiB, "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
                best = rows.get(row["method"])
                if best is None or row["seconds"] < best["seconds"]:
                    rows[row["method"]] = row
    ref = rows["naive"]["grads"]
    k = min(len(r["grads"]) for r in rows.values())
    for name, row in rows.items():
        diff = np.abs(row["grads"][:k] - ref[:k]).max() / np.abs(ref[:k]).max()
        speed = rows["naive"]["ms_per_unit_image"] / row["ms_per_unit_image"]
        print(f"  {name:16s} {speed:5.2f}x the naive loop, {rows['captum']['ms_per_unit_image'] / row['ms_per_unit_image']:5.2f}x "
              f"captum; max |difference| from naive {diff:.1e} of its largest value")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
