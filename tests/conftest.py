import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "INFLORA_DATA_DIR" not in os.environ and DEFAULT_DATA.is_dir():
    os.environ["INFLORA_DATA_DIR"] = str(DEFAULT_DATA)


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """One intra-op thread for the whole suite: tiny models gain nothing from a second one, a busy
    2-core machine makes spinning OpenMP threads many times slower, and CPU float reductions (so the
    exact numbers the determinism and resume tests compare) depend on the thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("INFLORA_DATA_DIR", DEFAULT_DATA))
    if not path.is_dir():
        pytest.fail(f"real data folder {path} is missing; set INFLORA_DATA_DIR")
    return path


@pytest.fixture(scope="session")
def minilm():
    """The real all-MiniLM-L6-v2 (eager attention), loaded once per test session."""
    from inflora.models import load_model

    model, tok = load_model("minilm", num_labels=2)
    return model, tok


@pytest.fixture(scope="session")
def tokenizer(minilm):
    return minilm[1]


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, tokenizer):
    """A saved 4-block random-init BERT with MiniLM's tokenizer: a model folder the CLI can load fast."""
    from inflora.models import tiny_model

    path = tmp_path_factory.mktemp("tiny") / "bert"
    tiny_model("bert", layers=4, hidden=32, heads=4).bert.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def minilm_no_dropout(tmp_path_factory):
    """The real all-MiniLM-L6-v2 encoder saved with dropout off (same weights): runs that split a
    batch differently (gradient accumulation, several processes) can then be compared number for
    number, since no random dropout mask depends on how the batch was split."""
    from inflora.models import load_model

    model, tok = load_model("minilm")
    path = tmp_path_factory.mktemp("minilm") / "minilm-no-dropout"
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    getattr(base, base.base_model_prefix, base).save_pretrained(path)
    tok.save_pretrained(path)
    return path
