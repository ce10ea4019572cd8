"""A rule's defaults are written once, in its signature: what a diagnosis records and what SKI is
computed with come from there."""

import inspect

import pytest

from inflora.data import load_task, probe_batches
from inflora.diagnosis import diagnose
from inflora.errors import ConfigError
from inflora.models import tiny_model
from inflora.select import RULES, rule_parameters
from inflora.select.rules import ski_rule


def test_parameters_come_from_the_signature():
    sig = {k: p.default for k, p in inspect.signature(ski_rule).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert rule_parameters("ski") == sig and rule_parameters("ski-decay") == {**sig, "variant": "decay"}
    assert rule_parameters("topk", {"k": 2})["k"] == 2
    with pytest.raises(ConfigError, match="rule 'ski' has no parameter 'colour'; its parameters: alpha=0.5"):
        rule_parameters("ski", {"colour": 1})
    assert RULES.get("ski-decay")([3.0, 1.0, 2.0, 0.5], [1.0, 0.1, 1.0, 0.01]) == ski_rule(
        [3.0, 1.0, 2.0, 0.5], [1.0, 0.1, 1.0, 0.01], variant="decay"
    )


def test_a_diagnosis_records_every_parameter_of_its_rule(tokenizer, data_dir):
    batches = probe_batches(
        load_task("rotten_tomatoes", "validation", data_dir), tokenizer, batches=1, batch_size=8, max_length=24
    )
    d = diagnose(
        tiny_model("bert", layers=4), batches, rule="ski-decay", rule_params={"alpha": 0.3}, progress=False, resamples=3
    )
    assert d.selection["parameters"] == rule_parameters("ski-decay", {"alpha": 0.3})
    assert d.selection["ski"] == {"alpha": 0.3, "variant": "decay"}
