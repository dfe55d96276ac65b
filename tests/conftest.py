import os

# Tests must never reach a model hub, and must be reproducible on a 2-core machine.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


import pytest


@pytest.fixture
def one_thread():
    """Run a test with one torch thread: on a shared, oversubscribed machine multi-threaded kernels stall
    at every op's barrier (a small training test measured 221 s with 2 threads vs 15 s with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
