"""Every RNG a training step draws from, saved and restored as plain tensors/ints/lists (loads with
weights_only=True)."""

from __future__ import annotations


def rng_state() -> dict:
    """Every RNG a training step draws from (python, numpy, torch, CUDA), as tensors/ints/lists only, so it
    saves with torch.save and loads back with weights_only=True."""
    import random

    import numpy as np
    import torch

    np_state = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
          "python_pos": random.getstate()[2], "numpy": np_state[1].tolist(), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(st["torch"])
    random.setstate((3, tuple(st["python"]), st["python_pos"]))
    np.random.set_state(("MT19937", np.asarray(st["numpy"], dtype=np.uint32), st["numpy_pos"], 0, 0.0))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])
