"""What autograd saves for backward, per block, as a closed formula of the model's shapes.

The per-layer accounting of Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
Transformer Models" (arXiv:2205.05198, §4.1: 34·sbh + 5·as²b bytes per layer in 16-bit), redone
for what PyTorch eager autograd actually keeps in fp32 on Hugging Face's modeling code, and for
partly frozen models: a frozen ``Linear`` keeps only its weight, a norm keeps its input only when
a gradient must flow through it, LoRA keeps the (dropped-out) input of each adapted projection.

Every term below names the tensor it counts (elements per token unless it says otherwise):
``h`` hidden, ``kv`` key/value width (GQA), ``f`` FFN hidden units, ``a`` heads, ``r`` LoRA rank,
``s`` sequence length. ``tests/test_memory_plan.py`` checks the sums against the bytes autograd
really saves (a ``saved_tensors_hooks`` count on tiny models of each family and strategy).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ArchitectureError
from ..validate import LORA_DEFAULTS

ENCODER_FAMILIES = ("bert", "roberta", "electra")
DECODER_FAMILIES = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class Shapes:
    """The sizes the formula needs, read from the model's config."""

    family: str
    layers: int
    hidden: int
    kv: int
    ffn: int
    heads: int
    vocab: int
    attn_dropout: float
    hidden_dropout: float

    @classmethod
    def of(cls, config, family: str) -> Shapes:
        if family not in ENCODER_FAMILIES + DECODER_FAMILIES:
            raise ArchitectureError(
                f"no activation formula for the {family!r} family yet; "
                f"plan supports: {', '.join(ENCODER_FAMILIES + DECODER_FAMILIES)}"
            )
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        return cls(
            family,
            config.num_hidden_layers,
            config.hidden_size,
            kv_heads * head_dim,
            config.intermediate_size,
            heads,
            config.vocab_size,
            float(getattr(config, "attention_probs_dropout_prob", getattr(config, "attention_dropout", 0.0)) or 0),
            float(getattr(config, "hidden_dropout_prob", 0.0) or 0),
        )


@dataclass(frozen=True)
class BlockRole:
    """How a block takes part in backward: its own weights train (``weights``), LoRA adapts
    ``lora`` of its projections (rank ``rank``), a gradient must reach its input (``input_grad``)."""

    weights: bool = False
    lora: int = 0
    rank: int = LORA_DEFAULTS.r
    input_grad: bool = False

    @property
    def on_path(self) -> bool:
        return self.weights or self.lora > 0 or self.input_grad


def fused_attention(shapes: Shapes, attention: str, training: bool) -> bool:
    """SDPA's fused CPU kernel runs (and saves no s×s probabilities) unless attention dropout is on:
    then SDPA falls back to its math path, which keeps the probabilities like eager attention."""
    return attention == "sdpa" and not (training and shapes.attn_dropout > 0)


def encoder_block(sh: Shapes, role: BlockRole, s: int, fused: bool, training: bool) -> float:
    """Floats per token of one BERT-style block (post-LN, GELU FFN)."""
    if not role.on_path:
        return 0.0
    drop = training and sh.hidden_dropout > 0
    w, h, f = role.weights, sh.hidden, sh.ffn
    lora_in = role.lora * (h * (1 + (role.input_grad or 0)) + role.rank)  # dropped input (+ mask), A's output
    qkv = 3 * h  # q, k, v kept by the score and context products
    if fused:
        attn = h + sh.heads  # output + log-sum-exp; the output is the context
        ctx = 0
    else:
        probs = 3 if training and sh.attn_dropout > 0 else 1  # softmax output, dropout mask, dropped probs
        attn = probs * sh.heads * s
        ctx = h * w  # context, kept by the output dense
    block_in = h * w  # kept by q/k/v (weights' gradient)
    norms = 2 * h + 4  # LN inputs + mean/rstd, twice
    masks = 2 * h * drop  # attention-output and FFN-output dropout masks
    ffn = f + f * w + h * w  # GELU input; GELU output, LN1 output for weights
    return block_in + lora_in + qkv + attn + ctx + norms + masks + ffn


def decoder_block(sh: Shapes, role: BlockRole, s: int, fused: bool, training: bool) -> float:
    """Floats per token of one Llama-style block (pre-RMSNorm, SwiGLU FFN, GQA)."""
    if not role.on_path:
        return 0.0
    w, g, h, f = role.weights, role.input_grad, sh.hidden, sh.ffn
    norm1 = (h + 1) * g + h * w  # input and rsqrt for the input's gradient; normed x
    lora_in = role.lora * (h * (1 + g) + role.rank)  # (HF RMSNorm keeps x·rsqrt for the weight)
    qkv_in = h * w  # q/k/v input for their weights' gradient
    if fused:
        attn = 2 * h + 2 * sh.kv + sh.heads  # q, k, v (GQA width), output (= o_proj input), LSE
    else:
        probs = 3 if training and sh.attn_dropout > 0 else 1  # softmax output (+ dropout mask, dropped)
        attn = 3 * h + probs * sh.heads * s + h * w  # q, repeated k and v, probabilities, o_proj input
    norm2 = h + 1 + h * w
    ffn = 3 * f + h * w + f * w  # gate, act(gate), up; FFN input and down's input
    return norm1 + lora_in + qkv_in + attn + norm2 + ffn


def block_floats(sh: Shapes, role: BlockRole, s: int, attention: str, training: bool) -> float:
    fused = fused_attention(sh, attention, training)
    fn = encoder_block if sh.family in ENCODER_FAMILIES else decoder_block
    return fn(sh, role, s, fused, training)


def outside_floats(
    sh: Shapes, embeddings_train: bool, final_norm_train: bool, blocks_on_path: bool, training: bool
) -> float:
    """Floats per token outside the blocks: the embedding LayerNorm (encoders) or the final norm and
    the score head's input (decoder classifiers, which score every position)."""
    if sh.family in ENCODER_FAMILIES:
        drop = training and sh.hidden_dropout > 0
        # BERT's pooler keeps a first-token view: the whole last hidden state; embedding LN, its mask
        return sh.hidden * (sh.family == "bert") + (sh.hidden * drop + sh.hidden + 2) * embeddings_train
    return (sh.hidden + 1) * blocks_on_path + sh.hidden * final_norm_train + sh.hidden


def head_floats(sh: Shapes) -> float:
    """Floats per sequence in an encoder's classification head: BERT's pooler keeps its tanh
    output, a dropout mask and the dropped vector; RoBERTa's and ELECTRA's heads the dropped first
    token too (decoders score every position: counted per token)."""
    return (3 if sh.family == "bert" else 4) * sh.hidden if sh.family in ENCODER_FAMILIES else 0.0


def transient_floats(
    sh: Shapes, s: int, attention: str, training: bool, last_on_path: bool, any_on_path: bool
) -> float:
    """Floats per token alive for a moment beyond what autograd keeps: the workspace.

    Forward, in the last block (where the kept activations are all there): the tensors of its
    attention or FFN that nothing keeps (a block off the gradient path keeps none: scores,
    probabilities, dropout noise and output, 4·a·s on the math path; the FFN's units, 2·f, 5·f when
    gated: act(gate), up and their product are 3·f, and RSS measured on the Qwen2-0.5B shape with
    only the head training rose by 5·f per token at T = 256, 512 and 1,024, 4·f having planned
    −20 % to −25 %). Backward: the gradients of a block's largest intermediates (3·a·s on the math path; the
    FFN's, 2·f or 3·f when gated)."""
    gated = sh.family in DECODER_FAMILIES
    fused = fused_attention(sh, attention, training)
    attn_fwd = 0 if fused else (2 if last_on_path else 4) * sh.heads * s
    ffn_fwd = (1 if last_on_path else (5 if gated else 2)) * sh.ffn  # gated, off the path: measured, see below
    forward = max(attn_fwd, ffn_fwd)
    backward = max(0 if fused else 3 * sh.heads * s, (3 if gated else 2) * sh.ffn) if any_on_path else 0
    return max(forward, backward)
