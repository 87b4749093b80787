"""Analyses: pure functions on numpy / xarray (no torch, no `rig`), vectorised over units.

Ratemaps and the scores neuroscience uses for spatially selective cells (spatial information, grid score,
border score), per-unit shuffle nulls with FDR control, and their figures; offline saliency models; RDMs and
RSA; normalized cuts of token features at scale, channel alignment, AlignedCut colours and oracle segmentation
scores (the spectral study). The spatial analyses run on numpy or torch arrays (CPU or CUDA) through the array
API (`analyses.backend`); torch is never imported here.
Receptive fields: gradient RFs and their structure, reverse correlation, preferred stimuli; saliency as
input channels.
"""
from .alignment import ChannelAlignment, brain_alignment, cca_alignment, procrustes_alignment
from .nulls import classify, fdr_adjust, shuffles_for_fdr, spatial_nulls
from .ratemaps import AnalysisInputError, rate_transform, ratemaps, smooth_maps
from .receptive_fields import (gradient_rfs, preferred_stimuli, reverse_correlation, rf_geometry, rf_pca,
                               rf_projection, saliency_peaks, saliency_shift)
from .saliency_channels import saliency_channels, with_saliency_channels
from .spatial import (autocorrelogram, border_fields, border_score, grid_score, selectivity, sparsity,
                      spatial_information, spatial_stats)
from .brain import load_brain, model_brain_rsa, noise_ceiling
from .rsa import bootstrap_compare, compare_rdms, delta_rsa, rdm
from .rsa_figures import brain_rsa_figure, delta_rsa_figure, rsa_curves
from .saliency import DeepGazeIIE, itti_koch, saliency_model, spectral_residual
from .segmentation import ncut_colors, oracle_segmentation, patch_label_counts, spectral_embedding
from .spatial_figures import compare_preparations, preparations_figure, score_distributions, top_units_figure
from .spectral import affinity, farthest_point_sampling, ncut, nystrom_ncut, unstack_nodes
from .spectral_figures import miou_figure, ncut_image_figure, trajectory_figure

__all__ = ["AnalysisInputError", "ChannelAlignment", "DeepGazeIIE", "bootstrap_compare", "compare_rdms", "delta_rsa",
           "rdm", "load_brain", "model_brain_rsa", "noise_ceiling", "rsa_curves", "delta_rsa_figure",
           "brain_rsa_figure", "itti_koch", "saliency_model",
           "spectral_residual", "affinity", "brain_alignment", "cca_alignment",
           "farthest_point_sampling", "miou_figure", "ncut", "ncut_colors", "ncut_image_figure",
           "nystrom_ncut", "patch_label_counts", "oracle_segmentation", "procrustes_alignment", "spectral_embedding",
           "trajectory_figure", "unstack_nodes", "autocorrelogram", "border_fields", "border_score", "classify",
           "compare_preparations", "fdr_adjust", "grid_score", "preparations_figure", "rate_transform", "ratemaps",
           "score_distributions", "selectivity", "shuffles_for_fdr", "smooth_maps", "sparsity", "spatial_information",
           "spatial_nulls", "spatial_stats",
           "top_units_figure"]
__all__ += ["gradient_rfs", "preferred_stimuli", "reverse_correlation", "rf_geometry", "rf_pca", "rf_projection",
            "saliency_channels", "saliency_peaks", "saliency_shift", "with_saliency_channels"]
