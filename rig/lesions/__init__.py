"""Lesions ("perturb"): reversible weight lesions, per-stimulus unit lesions (what a unit is, how units are ranked,
honest intervals), and a cached-prefix runner that re-runs only the blocks after the lesion."""
from rig.lesions.intervals import curve_interval
from rig.lesions.prefix import BlockSplit, PrefixRunner, split_candidates
from rig.lesions.ranking import UNIT_MODES, UnitScores, held_out_scores, map_scores
from rig.lesions.restore import lesioned, preserved
from rig.lesions.silence import UnitSilencer, silenced
from rig.lesions.units import (RANKED, STRATEGIES, proportion_grid, ratemap_at, unit_lesions,
                               unit_ranks)
from rig.lesions.weights import towers, weight_lesions, weighted_modules

__all__ = [
    "BlockSplit", "PrefixRunner", "split_candidates", "lesioned", "preserved", "curve_interval",
    "UNIT_MODES", "UnitScores", "held_out_scores", "map_scores",
    "UnitSilencer", "silenced", "RANKED", "STRATEGIES", "proportion_grid", "ratemap_at", "unit_lesions", "unit_ranks",
    "towers", "weight_lesions", "weighted_modules",
]
