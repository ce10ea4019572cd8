"""Parameter-gradient norms measured in post-accumulate-grad hooks (issue 19): the same numbers as
norms of kept gradients, on the real MiniLM and every tiny family, while no gradient buffer outlives
its own measurement in ``probe_step``; kept (not dropped) when the caller runs backward itself."""

import pytest
import torch
import transformers
from _reference import param_grad_reference

from inflora.metrics.grad_norms import param_grad_norm
from inflora.models import parameter_groups, tiny_model
from inflora.models.tiny import TINY_FAMILIES
from inflora.probe import LayerProbe, probe_step

transformers.logging.set_verbosity_error()

CASES = [(f, "classification") for f in TINY_FAMILIES] + [("gpt2", "causal-lm"), ("qwen2", "causal-lm")]


def padded_batch(task, b=3, t=10, vocab=1000):
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(5, vocab, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, :4] = 0  # left padding too
    ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100) if task == "causal-lm" else torch.tensor([0, 1, 1])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def kept_gradient_norms(model, batch, norm=param_grad_norm) -> dict[str, float]:
    """The pre-hook way: a plain backward keeps every ``.grad``; group norms are read afterwards."""
    model.zero_grad(set_to_none=True)
    model(**batch).loss.backward()
    out = {name: norm(p for _, p in params) for name, params in parameter_groups(model).items()}
    model.zero_grad(set_to_none=True)
    return out


def probed_norms(probe) -> dict[str, float]:
    plugin = next(p for p in probe.plugins if p.name == "param_grad")
    return {name: acc.compute()["param_grad_norm"] for name, acc in plugin.groups.items()}


def live_gradient_counter(model):
    """Hooks (registered after the probe's) that record how many parameters hold a ``.grad``
    each time one more gradient is complete."""
    counts = []
    params = list(model.parameters())

    def count(_):
        counts.append(sum(q.grad is not None for q in params))

    handles = [p.register_post_accumulate_grad_hook(count) for p in params if p.requires_grad]
    return counts, handles


def check_hooked_norms_equal_kept(model, batch):
    want = kept_gradient_norms(model, batch)
    with LayerProbe(model, ["param_grad"]) as probe:
        counts, handles = live_gradient_counter(model)
        probe_step(model, probe, batch)
        for h in handles:
            h.remove()
        got = probed_norms(probe)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == pytest.approx(want[name], rel=1e-6, abs=0), name
    assert sum(v > 0 for v in want.values()) >= len(want) - 1  # real gradients, not zeros compared to zeros
    # every gradient was dropped by the probe's hook before the next one was complete
    assert counts and max(counts) == 0
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("family,task", CASES, ids=[f"{f}-{t}" for f, t in CASES])
def test_hooked_norms_equal_norms_of_kept_gradients_on_every_tiny_family(family, task):
    model = tiny_model(family, layers=3, task=task)
    check_hooked_norms_equal_kept(model, padded_batch(task))


def test_hooked_norms_equal_norms_of_kept_gradients_on_minilm(minilm):
    model, tok = minilm
    enc = tok(["a gripping, funny film", "dull and far too long", "fine"], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([1, 0, 1])}
    model.eval()
    check_hooked_norms_equal_kept(model, batch)


def test_gradients_are_kept_when_the_caller_runs_backward_itself():
    """A training loop with the probe attached needs its gradients: only ``probe_step`` drops them."""
    model = tiny_model("llama", layers=2, task="causal-lm")
    batch = padded_batch("causal-lm")
    want = kept_gradient_norms(model, batch)
    with LayerProbe(model, ["param_grad"]) as probe:
        model(**batch).loss.backward()
        probe.after_backward()
        got = probed_norms(probe)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert got == pytest.approx(want, rel=1e-6)


def test_frozen_blocks_report_zero_and_keep_no_hooks_firing():
    model = tiny_model("bert", layers=3)
    for p in model.bert.encoder.layer[0].parameters():
        p.requires_grad_(False)
    with LayerProbe(model, ["param_grad"]) as probe:
        probe_step(model, probe, padded_batch("classification"))
        got = probed_norms(probe)
    assert got["block.0"] == 0.0 and got["block.1"] > 0 and got["block.2"] > 0


TIED = [("qwen2", True), ("qwen2", False), ("gpt2", True), ("llama", False)]


@pytest.mark.parametrize("family,tied", TIED, ids=[f"{f}-{'tied' if t else 'untied'}" for f, t in TIED])
def test_sparse_embedding_gradients_give_the_dense_norms(family, tied):
    """Embeddings switched to sparse gradients and the LM head's weight gradient reduced chunk by
    chunk (what ``diagnose`` does): the embeddings/head norms still equal those of the dense, summed
    gradient, and the activation gradients below the head are unchanged."""
    model = tiny_model(family, layers=2, task="causal-lm", tie_word_embeddings=tied)
    model.tie_weights()
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    batch = padded_batch("causal-lm")
    want = kept_gradient_norms(model, batch)
    # embeddings and head against a float64 loop: float32 norms of a dense V × D gradient are off by
    # up to ~5e-5 here, while the sparse and chunked paths sum in float64
    exact = kept_gradient_norms(model, batch, norm=param_grad_reference)
    want["embeddings"], want["head"] = exact["embeddings"], exact["head"]
    with LayerProbe(model, ["param_grad"], param_grad={"sparse_embeddings": True}) as probe:
        assert "forward" in vars(model.get_output_embeddings())  # the head's weight gradient is reduced in chunks
        probe_step(model, probe, batch)
        got = probed_norms(probe)
    assert got == pytest.approx(want, rel=1e-6)
    assert want["embeddings"] > 0
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied  # restored
    assert not model.get_input_embeddings().sparse and "forward" not in vars(model.get_output_embeddings())


def test_sparse_embedding_gradient_really_is_sparse_when_kept():
    model = tiny_model("qwen2", layers=1, task="causal-lm", tie_word_embeddings=True)
    model.tie_weights()
    batch = padded_batch("causal-lm")
    want = kept_gradient_norms(model, batch, norm=param_grad_reference)
    with LayerProbe(model, ["param_grad"], param_grad={"sparse_embeddings": True}) as probe:
        model(**batch).loss.backward()  # not probe_step: the gradients stay for inspection
        emb = model.get_input_embeddings().weight
        assert emb.grad.is_sparse and emb.grad.coalesce().indices().shape[1] <= batch["input_ids"].numel()
        probe.after_backward()
        assert probed_norms(probe)["embeddings"] == pytest.approx(want["embeddings"], rel=1e-6)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("tied", [True, False])
def test_the_chunked_head_leaves_loss_and_activation_gradients_unchanged(tied):
    model = tiny_model("qwen2", layers=2, task="causal-lm", tie_word_embeddings=tied)
    model.tie_weights()
    batch = padded_batch("causal-lm")
    results = {}
    for sparse in (False, True):
        with LayerProbe(model, ["activation_grad", "param_grad"], param_grad={"sparse_embeddings": sparse}) as probe:
            loss = probe_step(model, probe, batch)
            results[sparse] = (
                loss,
                [r["activation_grad_norm"] for r in probe.layer_results()],
                [r["param_grad_norm"] for r in probe.layer_results()],
            )
    assert results[True][0] == results[False][0]
    assert results[True][1] == pytest.approx(results[False][1], rel=1e-6)
    assert results[True][2] == pytest.approx(results[False][2], rel=1e-6)
    assert min(results[True][1]) > 0
