"""Locating the inflection band: SKI scores, selection rules (registry) and bootstrap stability."""
from .rules import RULES, select_layers
from .ski import band_from_peaks, decay_ratios, inverse_minmax, local_maxima, ski_terms
from .stability import bootstrap_stability

__all__ = ["RULES", "band_from_peaks", "bootstrap_stability", "decay_ratios", "inverse_minmax",
           "local_maxima", "select_layers", "ski_terms"]
