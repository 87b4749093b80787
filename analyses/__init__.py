"""Analyses: pure functions on numpy / xarray (no torch, no `rig`), vectorised over units.

Ratemaps and the scores neuroscience uses for spatially selective cells (spatial information, grid score,
border score), per-unit shuffle nulls, and their figures.
"""
from .nulls import classify, spatial_nulls
from .ratemaps import AnalysisInputError, rate_transform, ratemaps, smooth_maps
from .spatial import (autocorrelogram, border_fields, border_score, grid_score, selectivity, sparsity,
                      spatial_information, spatial_stats)
from .spatial_figures import compare_preparations, score_distributions, top_units_figure

__all__ = ["AnalysisInputError", "autocorrelogram", "border_fields", "border_score", "classify",
           "compare_preparations", "grid_score", "rate_transform", "ratemaps", "score_distributions",
           "selectivity", "smooth_maps", "sparsity", "spatial_information", "spatial_nulls", "spatial_stats",
           "top_units_figure"]
