"""Forgetting with a new target head: the source task is scored by the adapted backbone under the
source checkpoint's own head, so a backbone left unchanged scores exactly the source accuracy."""

import pytest
import torch

from inflora.data import encode_split, load_task
from inflora.experiment.harness import load_source
from inflora.strategies import StrategyOptions, apply_strategy
from inflora.training.evaluate import accuracy
from inflora.training.source_head import head_paths, with_source_head


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory, minilm):
    """A 2-class SST-2 'source' classifier: the real MiniLM with its seeded head, saved."""
    model, tok = minilm
    path = tmp_path_factory.mktemp("source") / "sst2-source"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sst2(data_dir, tokenizer):
    return encode_split(load_task("sst2", "validation", data_dir).stratified(96, 0), tokenizer, 64)


@pytest.mark.real
def test_unchanged_backbone_gives_the_source_accuracy_exactly(source_dir, sst2, minilm):
    source_acc = accuracy(minilm[0], sst2)
    target, _ = load_source(str(source_dir), 6, seed=1)  # the new 6-class TREC head
    assert target.config.num_labels == 6
    moved = with_source_head(target, str(source_dir))
    assert accuracy(moved, sst2) == source_acc
    assert target.config.num_labels == 6 and moved.config.num_labels == 2  # the target model is left as it was
    # PEFT-wrapped: LoRA starts as the identity (B = 0), so the merged backbone is unchanged too.
    lora = apply_strategy("lora-all", target, StrategyOptions(seed=1)).model
    assert accuracy(with_source_head(lora, str(source_dir)), sst2) == source_acc


@pytest.mark.real
def test_changed_backbone_changes_the_source_score(source_dir, sst2, minilm):
    target, _ = load_source(str(source_dir), 6, seed=1)
    with torch.no_grad():
        for p in target.bert.encoder.layer[5].parameters():
            p.add_(torch.randn_like(p))
    batch = {k: v for k, v in next(iter(sst2.batches(32))).items() if k != "labels"}
    minilm[0].eval()
    moved = with_source_head(target, str(source_dir)).eval()
    with torch.no_grad():
        assert not torch.allclose(moved(**batch).logits, minilm[0](**batch).logits, atol=1e-3)


def test_head_paths_are_the_pooler_and_classifier(minilm):
    assert head_paths(minilm[0]) == ["bert.pooler", "classifier"]
