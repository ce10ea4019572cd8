"""Locating the blocks to adapt: SKI scores, every rule (one file each, one registry, one protocol), bootstrap
stability, and several rules side by side at one budget."""

from . import (  # noqa: F401  (register: one file per rule)
    all_rule,
    alpha_hts,
    cka_io,
    kappa,
    low_entropy,
    low_grad,
    random_rule,
    ski_rule,
    spectrum_snr,
    threshold_rule,
    top_grad,
    top_pgrad,
    topk_rule,
)
from .blocks import BlockScores, RuleInputs, block_matrices, check_k, within_type_percentile
from .compare import COST_ORDER, check_rules, cheapest, jaccard, overlap, rule_needs, score_rules, weight_only_rules
from .function_rule import FunctionRule, fit_band
from .protocol import ARMS, NEEDS, SelectionRule
from .random_rule import random_blocks
from .rules import RULES, rule_parameters, select_layers
from .score_rule import ScoreRule
from .ski import band_from_peaks, decay_ratios, inverse_minmax, local_maxima, ski_terms
from .stability import bootstrap_stability

__all__ = [
    "ARMS",
    "COST_ORDER",
    "NEEDS",
    "RULES",
    "FunctionRule",
    "SelectionRule",
    "BlockScores",
    "RuleInputs",
    "ScoreRule",
    "band_from_peaks",
    "block_matrices",
    "bootstrap_stability",
    "check_k",
    "check_rules",
    "cheapest",
    "decay_ratios",
    "fit_band",
    "inverse_minmax",
    "jaccard",
    "local_maxima",
    "overlap",
    "random_blocks",
    "rule_needs",
    "rule_parameters",
    "score_rules",
    "select_layers",
    "ski_terms",
    "weight_only_rules",
    "within_type_percentile",
]
