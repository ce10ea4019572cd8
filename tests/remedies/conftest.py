"""Remedy tests run many tiny ops: one intra-op thread is faster and steadier on a busy 2-core box."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
