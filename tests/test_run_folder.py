"""Run folders keep remedy options as their declared types; folders written before, with the CLI's
text (``"0.05"``), are read through the option's type and resume to the same numbers.

Runs use the session's tiny 4-block BERT with MiniLM's tokenizer on a subset of Rotten Tomatoes.
"""

import json
import re

import pytest
from typer.testing import CliRunner

from inflora.cli import app
from inflora.errors import ConfigError, DataError
from inflora.training import FinetuneConfig, finetune
from inflora.training.config import config_key
from inflora.training.run_folder import claim_run_folder, finished_metrics

SD = "spectral-decoupling"
SAME = ("accuracy", "history", "grad_profile", "remedy_metrics", "best_epoch", "steps", "trainable_params")


def config(model, **kw) -> FinetuneConfig:
    base = dict(
        model=str(model),
        strategy="lora-all",
        epochs=2,
        limit_train=48,
        limit_eval=16,
        max_length=24,
        cka_examples=0,
        batch_size=16,
        log_every=2,
        lr=5e-3,
        remedies=[SD],
        remedy_options={SD: {"sd_lambda": 0.05}},
    )
    return FinetuneConfig(**{**base, **kw})


def as_written_before(path, text: str) -> None:
    """Rewrite a record as inflora wrote it before options were typed: the CLI's text, keyed by it."""
    record = json.loads(path.read_text())
    record["config"]["remedy_options"] = {SD: {"sd_lambda": text}}
    record["config_key"] = config_key(record["config"])
    path.write_text(json.dumps(record))


def test_cli_text_and_api_number_name_one_run():
    text = FinetuneConfig(remedies=[SD], remedy_options={SD: {"sd-lambda": "0.05"}})
    number = FinetuneConfig(remedies=[SD], remedy_options={SD: {"sd_lambda": 0.05}})
    assert text.remedy_options == {SD: {"sd_lambda": 0.05}} and text.key() == number.key()
    assert text.key() != FinetuneConfig(remedies=[SD], remedy_options={SD: {"sd_lambda": 0.06}}).key()


def test_a_run_interrupted_with_text_options_resumes_to_the_same_numbers(tiny_bert_dir, tmp_path):
    ref = finetune(config(tiny_bert_dir), tmp_path / "ref", progress=False)
    out, seen = tmp_path / "old", []

    def interrupt(epoch):
        seen.append(epoch)
        raise KeyboardInterrupt  # as a killed process: nothing after the epoch-1 checkpoint happens

    with pytest.raises(KeyboardInterrupt):
        finetune(config(tiny_bert_dir), out, progress=False, on_epoch_end=interrupt)
    as_written_before(out / "config.json", "0.050")  # not the canonical text: read, not compared
    resumed = finetune(config(tiny_bert_dir), out, progress=False, on_epoch_end=seen.append)
    assert seen == [1, 2]  # only epoch 2 was trained again
    assert ref["remedy_metrics"] and all(resumed[k] == ref[k] for k in SAME), [k for k in SAME if resumed[k] != ref[k]]
    assert resumed["config"]["remedy_options"] == {SD: {"sd_lambda": 0.05}}

    as_written_before(out / "metrics.json", "5e-2")  # a finished old folder: returned at once, typed
    done = finished_metrics(config(tiny_bert_dir), out)
    assert done["config"]["remedy_options"] == {SD: {"sd_lambda": 0.05}} and done["accuracy"] == ref["accuracy"]
    assert done["config_key"] == config(tiny_bert_dir).key()
    with pytest.raises(ConfigError, match="finished run with a different configuration"):
        finished_metrics(config(tiny_bert_dir, remedy_options={SD: {"sd_lambda": 0.06}}), out)


@pytest.mark.parametrize(
    "value,pattern",
    [
        ("abc", r"config\.remedy_options: --sd-lambda: cannot read 'abc' as float"),
        ("-1", r"config\.remedy_options: --sd-lambda must be at least 0, got -1\.0"),
        (
            [0.05],
            r"config\.remedy_options\.spectral-decoupling\.sd_lambda: .*a number, text, true/false or null, not list",
        ),
    ],
)
def test_a_stored_option_its_type_cannot_read_is_one_error(tmp_path, value, pattern):
    record = {"config_key": "0" * 16, "config": {**config("m").to_dict(), "remedy_options": {SD: {"sd_lambda": value}}}}
    (tmp_path / "config.json").write_text(json.dumps(record))
    with pytest.raises(DataError, match=rf"config\.json: {pattern}"):
        claim_run_folder(config("m"), tmp_path, write=False)
    res = CliRunner().invoke(app, ["finetune", "--remedy", SD, "--out", str(tmp_path)])
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.exit_code == 2 and len(errors) == 1 and "Traceback" not in res.output, res.output
    assert re.search(pattern, errors[0]), errors[0]
