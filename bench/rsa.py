"""Bench of analyses.rdm / compare_rdms / bootstrap_compare next to rsatoolbox on the same data.

    PYTHONPATH=$PWD python bench/rsa.py [--n 3000] [--features 768] [--bootstrap 1000] [--toolbox-samples 5]
                                        [--previous-samples 20]

Prints, in one run: seconds for an n x n RDM from `features` channels plus its Spearman comparison with a second
RDM (ours: cosine and correlation, float64 and float32 products; rsatoolbox: correlation, its nearest metric:
it has no cosine), and `bootstrap` stimulus-bootstrap samples of that comparison (ours: all of them; rsatoolbox:
`--toolbox-samples` samples of `bootstrap_sample_pattern` + `compare`, timed and projected linearly; the previous
implementation, one sample at a time, on `--previous-samples` of the same samples, projected likewise), with the
agreement of the numbers. rsatoolbox is a test dependency (`pip install -e ".[test]"`).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import analyses  # noqa: E402
from analyses.rsa import bootstrap_compare  # noqa: E402


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def previous_samples(a: np.ndarray, b: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Spearman rho per sample as bootstrap_compare computed it before batching (kept here for the side-by-side
    timing): per sample and RDM, weights in its sorted order, weighted mid-ranks by bincount over tie groups and a
    cumulative sum, one gather into a common order, a weighted Pearson r."""
    n = draws.shape[1]
    i_idx, j_idx = (v.astype(np.int32) for v in np.triu_indices(n, 1))
    sorted_pairs = []
    for v in (a, b):
        order = np.argsort(v)
        sv = v[order]
        group = np.cumsum(np.r_[True, sv[1:] != sv[:-1]]) - 1
        sorted_pairs.append((order, i_idx[order], j_idx[order], group))
    where = np.empty(a.size, np.int64)
    where[sorted_pairs[1][0]] = np.arange(a.size)
    to_common = where[sorted_pairs[0][0]]
    out = []
    for draw in draws:
        counts = np.bincount(draw, minlength=n).astype(np.float64)
        ranks = []
        for _, ii, jj, group in sorted_pairs:
            ws = counts[ii] * counts[jj]
            totals = np.bincount(group, weights=ws)
            below = np.cumsum(totals) - totals
            ranks.append(below[group] + (totals[group] + 1) / 2)
        ra, rb, w = ranks[0], ranks[1][to_common], counts[sorted_pairs[0][1]] * counts[sorted_pairs[0][2]]
        total = w.sum()
        ma, mb = (w @ ra) / total, (w @ rb) / total
        cov = (w * ra) @ rb - total * ma * mb
        out.append(cov / np.sqrt(((w * ra) @ ra - total * ma ** 2) * ((w * rb) @ rb - total * mb ** 2)))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--features", type=int, default=768)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--toolbox-samples", type=int, default=5)
    ap.add_argument("--previous-samples", type=int, default=20)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    n, p = args.n, args.features
    latent = rng.standard_normal((n, 32)).astype(np.float32)
    x = (latent @ rng.standard_normal((32, p)) + rng.standard_normal((n, p))).astype(np.float32)  # a site
    y = (latent @ rng.standard_normal((32, 512)) + 2 * rng.standard_normal((n, 512))).astype(np.float32)  # a reference
    print(f"load average before: {os.getloadavg()}")
    print(f"data: {n} stimuli, {p} features (site) and 512 (reference), float32")
    ref = analyses.rdm(y)

    print(f"\n1. one {n} x {n} RDM from {p} features + its Spearman comparison")
    for metric, dtype in (("cosine", np.float64), ("cosine", np.float32), ("correlation", np.float64)):
        d, t_rdm = timed(analyses.rdm, x, metric, dtype)
        r, t_cmp = timed(analyses.compare_rdms, d, ref)
        print(f"  ours {metric:11s} {np.dtype(dtype).name}: rdm {t_rdm:6.2f} s + spearman {t_cmp:5.2f} s = "
              f"{t_rdm + t_cmp:6.2f} s   (rho = {r:.6f})")
        if metric == "correlation":
            ours_corr = (d, r)
    import rsatoolbox

    ref_tb = rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(y.astype(np.float64)), method="correlation")
    tb, t_rdm = timed(rsatoolbox.rdm.calc_rdm, rsatoolbox.data.Dataset(x.astype(np.float64)), method="correlation")
    r_tb, t_cmp = timed(rsatoolbox.rdm.compare, tb, ref_tb, "spearman")
    ref_corr = analyses.rdm(y, "correlation")
    print(f"  rsatoolbox correlation   : rdm {t_rdm:6.2f} s + spearman {t_cmp:5.2f} s = {t_rdm + t_cmp:6.2f} s   "
          f"(rho = {float(r_tb[0, 0]):.6f}; ours on the same pair: {analyses.compare_rdms(ours_corr[0], ref_corr):.6f};"
          f" max |RDM difference| {np.abs(tb.get_vectors()[0] - ours_corr[0]).max():.1e})")

    print(f"\n2. {args.bootstrap} stimulus-bootstrap samples of that Spearman comparison (cosine RDMs)")
    d = analyses.rdm(x)
    res, t_boot = timed(bootstrap_compare, d, ref, "spearman", args.bootstrap, 0.95, 0)
    print(f"  ours      : {t_boot:6.2f} s ({1e3 * t_boot / args.bootstrap:.1f} ms / sample); rho = "
          f"{float(res.estimate[0, 0]):.4f}, 95% CI [{float(res.ci_low[0, 0]):.4f}, {float(res.ci_high[0, 0]):.4f}]")
    draws = np.random.default_rng(0).integers(0, n, (args.bootstrap, n))[:args.previous_samples]  # the same samples
    prev, t_prev = timed(previous_samples, d, ref, draws)
    per = t_prev / len(draws)
    print(f"  previous  : {per:6.2f} s / sample (one sample at a time, {len(draws)} timed) -> {per * args.bootstrap:7.1f} s "
          f"projected for {args.bootstrap} ({per * args.bootstrap / t_boot:.0f}x ours); max |rho difference| on those "
          f"samples {np.abs(prev - res.samples.values[:len(draws), 0, 0]).max():.1e}")
    both = rsatoolbox.rdm.RDMs(np.stack([d, ref]), pattern_descriptors={"index": np.arange(n)})
    t = time.perf_counter()
    tb_samples = []
    for _ in range(args.toolbox_samples):
        sample, idx = rsatoolbox.inference.bootstrap_sample_pattern(both, "index")
        sample = sample.subsample_pattern("index", idx)
        v = sample.get_vectors()
        tb_samples.append(float(rsatoolbox.rdm.compare(
            rsatoolbox.rdm.RDMs(v[:1]), rsatoolbox.rdm.RDMs(v[1:]), "spearman")[0, 0]))
    per = (time.perf_counter() - t) / args.toolbox_samples
    print(f"  rsatoolbox: {per:6.2f} s / sample (bootstrap_sample_pattern + subsample + compare, {args.toolbox_samples}"
          f" timed) -> {per * args.bootstrap:7.1f} s projected for {args.bootstrap}; its sample rhos "
          f"{np.round(tb_samples, 4).tolist()} (ours: sd {float(res.se[0, 0]):.4f})")
    print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
