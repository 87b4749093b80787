"""Confidence intervals of lesion curves that respect where the variability comes from.

A lesion curve's value is the mean target probability over stimuli (and, for random lesions, over the random
unit sets). The stimuli are a sample of the design; for random lesions the unit sets are a second sample,
crossed with the first (every set is shown every stimulus), and the variability between sets is often the
larger one. Treating the `sets x stimuli` values as independent makes the interval far too narrow.

- One set (targeted and the other deterministic strategies, or random with one repeat): a percentile
  bootstrap over stimuli.
- Several random sets: the variance of the grand mean of a crossed design, estimated as
  `var(set means) / R + var(stimulus means) / S` (the "pigeonhole" estimator, Owen 2007, Ann. Appl. Stat. 1(2);
  it counts the set x stimulus interaction twice, so it is slightly conservative), with a Student t quantile
  whose degrees of freedom are Satterthwaite's. A bootstrap over a handful of sets would be too narrow (the
  percentile interval of 3 resampled values covers ~80 %, not 95 %); the t quantile is what few sets can say.
"""
from __future__ import annotations

import numpy as np
from scipy import stats


def curve_interval(values: np.ndarray, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and `level` interval of `values` `(repeat, proportion, stimulus)` at each proportion.

    Repeats that are NaN throughout are left out (deterministic strategies fill one). Returns `(mean, low, high)`,
    each `(proportion,)`; see the module docstring for the method; a single value gives low = high = mean.
    """
    values = np.asarray(values, np.float64)
    v = values[~np.isnan(values).all(axis=(1, 2))]
    n_rep, _, n_stim = v.shape
    mean = v.mean(axis=(0, 2))
    if n_rep * n_stim <= 1:
        return mean, mean.copy(), mean.copy()
    if n_rep == 1:
        return (mean, *_bootstrap_over_stimuli(v[0], level, n_boot, seed))
    a = v.mean(axis=2).var(axis=0, ddof=1) / n_rep  # (proportion,) between sets
    b = v.mean(axis=0).var(axis=1, ddof=1) / n_stim if n_stim > 1 else np.zeros_like(a)  # between stimuli
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (a + b) ** 2 / (a**2 / (n_rep - 1) + (b**2 / (n_stim - 1) if n_stim > 1 else 0.0))
    df = np.where(np.isfinite(df), df, n_rep - 1)
    half = stats.t.ppf(0.5 + level / 2, df) * np.sqrt(a + b)
    return mean, mean - half, mean + half


def _bootstrap_over_stimuli(v: np.ndarray, level: float, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of the mean over stimuli of `v` `(proportion, stimulus)`, from multinomial counts."""
    n_stim = v.shape[1]
    weights = np.random.default_rng(seed).multinomial(n_stim, np.full(n_stim, 1 / n_stim), size=n_boot)
    boot = weights @ v.T / n_stim  # (boot, proportion)
    alpha = (1 - level) / 2
    low, high = np.quantile(boot, [alpha, 1 - alpha], axis=0)
    return low, high
