"""Diagnostics: each module holds a pure metric, its streaming accumulator and its probe plugin.

``DIAGNOSTICS`` maps a name to the probe plugin; adding one is a new module plus one line here.
"""

from ..registry import Registry
from .accumulate import ProbePlugin, SumAccumulator
from .cka import BlockIOProbe, FeatureProbe, delta_cka, io_cka, linear_cka, pool_hidden, shared_pca
from .dormant import DormantProbe
from .entropy import AttentionEntropy, EntropyProbe, attention_entropy, attention_entropy_sums
from .grad_norms import (
    ActivationGradNorm,
    ActivationGradProbe,
    ParamGradNorm,
    ParamGradProbe,
    activation_grad_norm,
    param_grad_norm,
)
from .moe import MoeProbe, expert_grad_norms, router_sums
from .output import (
    OutputProbe,
    OutputSaturation,
    expected_calibration_error,
    grad_weights,
    output_saturation,
    saturated_fraction,
)

DIAGNOSTICS: Registry[type[ProbePlugin]] = Registry("diagnostic")
for _plugin in (
    EntropyProbe,
    ActivationGradProbe,
    ParamGradProbe,
    FeatureProbe,
    DormantProbe,
    BlockIOProbe,
    OutputProbe,
    MoeProbe,
):
    DIAGNOSTICS.register(_plugin.name)(_plugin)

__all__ = [
    "DIAGNOSTICS",
    "ActivationGradNorm",
    "AttentionEntropy",
    "OutputProbe",
    "OutputSaturation",
    "ParamGradNorm",
    "ProbePlugin",
    "SumAccumulator",
    "activation_grad_norm",
    "attention_entropy",
    "attention_entropy_sums",
    "delta_cka",
    "expected_calibration_error",
    "expert_grad_norms",
    "router_sums",
    "grad_weights",
    "io_cka",
    "linear_cka",
    "output_saturation",
    "saturated_fraction",
    "param_grad_norm",
    "pool_hidden",
    "shared_pca",
]
