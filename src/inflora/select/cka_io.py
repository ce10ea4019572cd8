"""``cka-io``: layer-wise LoRA with CKA (``selectors.md`` §4): the blocks whose output is least like
their input, CKA(h_{l−1}, h_l) lowest, are selected. Needs a forward pass (no labels).

Features: the last non-padding token for decoders (as the reference); for encoders the mean over
tokens [ours] instead of the reference's [CLS]: block 0's input at position 0 is the [CLS] embedding
plus position 0, the same vector for every example, so its CKA is undefined (0/0).
"""

from __future__ import annotations

from .score_rule import profile_rule
from .rule_registry import RULES

RULES.register("cka-io")(
    profile_rule(
        "cka-io",
        "io_cka",
        "low",
        "layer-wise LoRA with CKA: the lowest CKA between a block's input and output (needs data)",
    )
)
