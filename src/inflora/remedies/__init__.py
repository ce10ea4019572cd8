"""Remedies for gradient pathologies besides inflection-layer suppression, one module each.

``REMEDIES`` maps a CLI name to a :class:`Remedy` subclass; build one from flags with
``REMEDIES.get(name).from_options(**flags)`` and read its flags from ``cls.options``
(name -> Option(type, default, help, arg)). Adding a remedy is one module plus one line here.
"""

from ..errors import ConfigError
from ..registry import Registry
from .base import Option, Remedy
from .dal import DAL, DriftAdjustedLR, curvature_along_gradient, dal_lr, hvp_exact, hvp_fd, lambda_max
from .grokfast import GrokTracker, Grokfast, generalization_gap, gradfilter_ema, gradfilter_ma, steps_to_threshold
from .nm_sparsity import (
    NMConv2d,
    NMLinear,
    NMSparsity,
    FlipRateMeter,
    GradNormCV,
    export_masked,
    grad_cv,
    mask_flip_rate,
    nm_mask,
    pruned_mag_ratio,
    sdgf_frames,
    sdgf_schedule,
    sparse_layers,
    sparsify,
)
from .redo import (  # the measurement itself lives in inflora.metrics.dormant
    DormantAccumulator,
    ReDo,
    dormant_fraction,
    dormant_fractions,
    dormant_mask,
    dormant_scores,
    find_units,
    layer_scores,
    recycle,
    score_histogram,
)
from .spam import SPAM, SpikeMonitor, spike_stats, warmup_scale
from .spectral_decoupling import (
    SpectralDecoupling,
    StarvationMeter,
    boundary_margin,
    feature_responses,
    grad_weights,
    group_gap,
    logit_sq,
    ntk_modes,
    response_ratio,
    saturated_fraction,
    sd_binary_loss,
    sd_cross_entropy,
    sd_penalty,
)

REMEDIES: Registry[type[Remedy]] = Registry("remedy")
for _cls in (SpectralDecoupling, ReDo, NMSparsity, DriftAdjustedLR, Grokfast, SpikeMonitor):
    REMEDIES.register(_cls.name)(_cls)


def build_remedy(name: str, **options) -> Remedy:
    """``build_remedy("redo", redo_tau=0.1)``: the CLI's entry point (unknown names/options raise ConfigError)."""
    return REMEDIES.get(name).from_options(**options)


def option_owners() -> dict[str, str]:
    """Option name -> the remedy that declares it (option names are unique across remedies)."""
    owners: dict[str, str] = {}
    for name in REMEDIES.names():
        for key in REMEDIES.get(name).options:
            if key in owners:
                raise ConfigError(f"remedies {owners[key]!r} and {name!r} both declare option {key!r}")
            owners[key] = name
    return owners


def typed_remedy_options(options: dict) -> dict[str, dict]:
    """``{remedy: {option: value}}`` with every remedy under its registered name and every value
    read as its option's declared type (``Remedy.typed_options``): the one form a config stores."""
    if not isinstance(options, dict) or not all(isinstance(v, dict) for v in options.values()):
        raise ConfigError(f"remedy options must map a remedy to its options, got {options!r}")
    return {REMEDIES.get(name).name: REMEDIES.get(name).typed_options(**opts) for name, opts in options.items()}


def options_by_remedy(selected: list[str], values: dict) -> dict[str, dict]:
    """Sort option values (name -> value; None = not given) by the selected remedy that declares
    them, read as their declared types. A value for a remedy that was not selected is an error;
    each remedy is built once here, so a bad value fails before any model is loaded."""
    owners = option_owners()
    out: dict[str, dict] = {REMEDIES.get(name).name: {} for name in selected}
    for key, value in values.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if key not in owners:
            raise ConfigError(
                f"unknown remedy option {flag}; options: {', '.join('--' + k.replace('_', '-') for k in owners)}"
            )
        if owners[key] not in out:
            raise ConfigError(
                f"{flag} is an option of remedy {owners[key]!r}, which was not chosen; add --remedy {owners[key]}"
            )
        out[owners[key]][key] = value
    out = typed_remedy_options(out)
    for name, opts in out.items():
        build_remedy(name, **opts)
    return out


__all__ = [
    "DAL",
    "DormantAccumulator",
    "DriftAdjustedLR",
    "FlipRateMeter",
    "GradNormCV",
    "GrokTracker",
    "Grokfast",
    "NMConv2d",
    "NMLinear",
    "NMSparsity",
    "Option",
    "REMEDIES",
    "option_owners",
    "options_by_remedy",
    "typed_remedy_options",
    "ReDo",
    "Remedy",
    "SPAM",
    "SpectralDecoupling",
    "SpikeMonitor",
    "StarvationMeter",
    "boundary_margin",
    "build_remedy",
    "curvature_along_gradient",
    "dal_lr",
    "dormant_fraction",
    "dormant_fractions",
    "dormant_mask",
    "dormant_scores",
    "export_masked",
    "feature_responses",
    "find_units",
    "generalization_gap",
    "grad_cv",
    "grad_weights",
    "gradfilter_ema",
    "gradfilter_ma",
    "group_gap",
    "hvp_exact",
    "hvp_fd",
    "lambda_max",
    "layer_scores",
    "logit_sq",
    "mask_flip_rate",
    "nm_mask",
    "ntk_modes",
    "pruned_mag_ratio",
    "recycle",
    "response_ratio",
    "score_histogram",
    "saturated_fraction",
    "sd_binary_loss",
    "sd_cross_entropy",
    "sd_penalty",
    "sdgf_frames",
    "sdgf_schedule",
    "sparse_layers",
    "sparsify",
    "spike_stats",
    "steps_to_threshold",
    "warmup_scale",
]
