"""One protocol for every selection rule (select/protocol.py): every registered rule satisfies it,
and a rule registered here, of a shape no caller knows, runs end to end without any caller change."""

import json
from dataclasses import dataclass, field
from typing import Mapping

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.data import load_task, probe_batches
from inflora.diagnosis import PROFILE_KEYS, diagnose, score_without_data
from inflora.errors import ConfigError
from inflora.models import get_blocks, tiny_model
from inflora.select import (
    ARMS,
    NEEDS,
    RULES,
    BlockScores,
    RuleInputs,
    SelectionRule,
    check_rules,
    cheapest,
    random_blocks,
    rule_needs,
    rule_parameters,
    score_rules,
    select_layers,
    weight_only_rules,
)
from inflora.select.protocol import check_rule
from inflora.strategies.budget import Budget
from inflora.strategies.rule_arms import arm_rules, rule_behind, strategy_for_rule


@pytest.fixture(scope="module")
def minilm_inputs(minilm, data_dir):
    """Real MiniLM, real Rotten Tomatoes: every profile a rule may read, and the model's blocks."""
    model, tok = minilm
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tok, batches=2, batch_size=8, max_length=32
    )
    d = diagnose(model, batches, rules=["cka-io"], budget=Budget(layers=2), progress=False, resamples=2)
    profiles = {key: [row[key] for row in d.layers] for key in PROFILE_KEYS}
    return RuleInputs(d.num_layers, blocks=get_blocks(model), profiles=profiles, seed=3)


def test_every_registered_rule_satisfies_the_protocol(minilm_inputs):
    n = minilm_inputs.num_layers
    for name in RULES.names():
        rule = RULES.get(name)
        assert isinstance(rule, SelectionRule), name
        check_rule(name, rule)
        assert rule.name == name and set(rule.needs) <= set(NEEDS) and rule.arm in ARMS
        assert rule_parameters(name) == dict(rule.parameters)
        json.dumps(dict(rule.parameters))  # recorded in diagnosis.json as they are
        scores = rule.score(minilm_inputs)
        assert isinstance(scores, BlockScores) and len(scores.raw) == n
        chosen = rule.choose(minilm_inputs)
        assert chosen == sorted(set(chosen)) and all(isinstance(i, int) and 0 <= i < n for i in chosen), name
        assert len(scores.select(2)) == (n if name == "all" else 2), name
    compared = score_rules(RULES.names(), minilm_inputs, 2)["rules"]
    assert {name: r["selected"] for name, r in compared.items()} == {
        name: RULES.get(name).score(minilm_inputs).select(2) for name in RULES.names()
    }


def test_each_rule_says_which_strategy_trains_it():
    for name in RULES.names():
        strategy = strategy_for_rule(name)
        assert (strategy == "lora-inflection") == (RULES.get(name).arm == "inflection")
        assert rule_behind(strategy) == ("ski" if strategy == "lora-inflection" else name)
    assert arm_rules() == [n for n in RULES.names() if RULES.get(n).arm == "peer"]
    assert {"kappa", "top-grad"} <= set(arm_rules()) and not {"ski", "all", "random"} & set(arm_rules())


def test_parameters_of_a_score_rule_are_checked_once_in_one_place(minilm_inputs):
    assert rule_parameters("random", {"seed": 5}) == {"k": 3, "seed": 5}
    n = minilm_inputs.num_layers
    assert RULES.get("random").choose(minilm_inputs, k=2, seed=5) == random_blocks(n, 2, 5)
    with pytest.raises(ConfigError, match="rule 'kappa' has no parameter 'tau'; its parameters: k=3"):
        rule_parameters("kappa", {"tau": 1})
    with pytest.raises(ConfigError, match="bad parameters for rule 'top-grad'"):
        select_layers("top-grad", [1.0, 2.0, 3.0], [3.0, 2.0, 1.0], tau=1)
    with pytest.raises(ConfigError, match="rule 'kappa' needs the model's weights, not only probe profiles"):
        select_layers("kappa", [1.0, 2.0], [1.0, 2.0])


@dataclass(frozen=True)
class MiddleBlocks:
    """A toy rule of a shape no caller knows: the blocks nearest the middle of the model (reads nothing)."""

    name: str = "test-middle"
    needs: frozenset = frozenset()
    parameters: Mapping = field(default_factory=lambda: {"k": 2})
    arm: str = "inflection"
    spectrum_dtype: None = None
    doc: str = "the blocks nearest the middle"

    def score(self, inputs, **params):
        mid = (inputs.num_layers - 1) / 2
        return BlockScores(self.name, [abs(i - mid) for i in range(inputs.num_layers)], "low")

    def choose(self, inputs, k: int = 2):
        return self.score(inputs).select(k)


def middle(n: int, k: int) -> list[int]:
    return sorted(sorted(range(n), key=lambda i: (abs(i - (n - 1) / 2), i))[:k])


@pytest.fixture
def toy_rules():
    def lowest_entropy(entropy, grad, *, k: int = 1):
        """The ``k`` blocks of lowest attention entropy."""
        return sorted(sorted(range(len(entropy)), key=lambda i: entropy[i])[:k])

    RULES.register("test-middle")(MiddleBlocks())
    RULES.register("test-lowest-entropy")(lowest_entropy)
    try:
        yield lowest_entropy
    finally:
        RULES._items.pop("test-middle", None)
        RULES._items.pop("test-lowest-entropy", None)


def test_a_toy_rule_runs_end_to_end_through_the_registry(toy_rules, tokenizer, data_dir):
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=2, batch_size=8, max_length=24
    )
    model = tiny_model("bert", layers=4)
    d = diagnose(
        model,
        batches,
        rule="test-middle",
        rules=["test-middle", "test-lowest-entropy", "ski", "kappa"],
        budget=Budget(layers=2),
        progress=False,
        resamples=4,
    )
    assert d.inflection_layers == middle(4, 2) and d.selection["parameters"] == {"k": 2}
    assert [d.stability[i] for i in range(4)] == [1.0 if i in middle(4, 2) else 0.0 for i in range(4)]
    compared = d.rules["rules"]
    assert compared["test-middle"]["selected"] == middle(4, 2) and compared["test-middle"]["needs"] == []
    entropy = d.profile("attention_entropy")
    assert compared["test-lowest-entropy"]["meta"]["band"] == toy_rules(entropy, None)
    assert len(compared["test-lowest-entropy"]["selected"]) == 2  # its one-block band, fitted to K = 2 by SKI
    assert rule_parameters("test-lowest-entropy", {"k": 2}) == {"k": 2}
    assert select_layers("test-lowest-entropy", entropy, entropy, k=2) == toy_rules(entropy, None, k=2)
    assert rule_needs("test-middle") == set() and "test-middle" in weight_only_rules()
    assert cheapest(["kappa", "test-middle"]) == "test-middle" and strategy_for_rule("test-middle") == "lora-inflection"
    check_rules(["test-middle", "kappa"], {"weights"})
    without = score_without_data(model, ["test-middle", "kappa"], Budget(layers=1))
    assert without["rules"]["test-middle"]["selected"] == middle(4, 1)
    info = CliRunner().invoke(app, ["info"])
    assert info.exit_code == 0 and "test-middle" in info.output


def test_a_rule_that_breaks_the_protocol_is_refused_at_registration():
    with pytest.raises(TypeError, match="lacks choose"):
        RULES.register("test-broken")(
            type(
                "Broken",
                (),
                {
                    "name": "test-broken",
                    "needs": frozenset(),
                    "parameters": {},
                    "arm": "peer",
                    "spectrum_dtype": None,
                    "doc": "",
                    "score": lambda self, inputs: None,
                },
            )()
        )
    with pytest.raises(TypeError, match="arm 'sideways'"):
        RULES.register("test-middle")(MiddleBlocks(arm="sideways"))
    with pytest.raises(TypeError, match="calls itself 'test-middle'"):
        RULES.register("test-elsewhere")(MiddleBlocks())
    assert not {"test-broken", "test-middle", "test-elsewhere"} & set(RULES.names())
    with pytest.raises(ConfigError, match="unknown selection rule 'nope'; choose one of: all, alpha-hts"):
        RULES.get("nope")
