"""Hostile but fair resumes: accelerate's state files in a checkpoint that are poisoned, damaged or gone.

`lvm train --resume` (the real CLI, in process) must refuse each with one line naming the file, never
unpickle anything but tensors and plain values (a poisoned pickle would create a marker file), never go
on without restoring the RNGs, and leave the checkpoint as it was. Helpers: test_inputs_hostile.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cli_util import ROOT, assert_one_line_error, cli, snapshot
from test_inputs_hostile import K, Poison, copy

pytestmark = pytest.mark.usefixtures("one_thread")


def _train_args(shards: Path, out: Path, steps: int) -> list:
    return ["train", ROOT / "configs/train/tiny.yaml", f"out_dir={out}", f"data.shards={shards}",
            f"model.codebook_size={K}", "model.max_position_embeddings=512", "model.hidden_size=96",
            "model.intermediate_size=128", "model.num_hidden_layers=2", "model.num_attention_heads=4",
            "micro_batch=2", "warmup_steps=1", "log_every=1", "eval_every=100", "save_every=1",
            "data.shuffle_buffer=4", f"max_steps={steps}", "--no-progress", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(token shards, a run of one step with its checkpoint): copied by each test, never modified."""
    from lvm.cli import main
    from data_builders.shards import write_token_shard

    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    write_token_shard(root / "tokens" / "tokens-000000.tar",
                      ((f"s{i}", rng.integers(0, K, (2, 256)), {"kind": "test"}) for i in range(8)))
    assert main([str(a) for a in _train_args(root / "tokens", root / "run", 1)]) == 0
    return root / "tokens", root / "run"


def _resume(capsys, trained, tmp_path, poison=None):
    """Copy the trained run, let `poison(state_dir)` damage it, resume it for one more step."""
    shards, run = trained
    run = copy(run, tmp_path / "run")
    state = run / "checkpoints" / "step-00000001" / "state"
    if poison:
        poison(state)
    before = snapshot(run / "checkpoints")
    rc, out, err = cli(capsys, *_train_args(shards, run, 2), "--resume")
    return rc, out, err, state, before, run


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "optimizer.bin", "scheduler.bin",
                                  "random_states_0.pkl"])
def test_poisoned_state_file_is_refused_and_never_unpickled(trained, tmp_path, capsys, name):
    marker = tmp_path / "PWNED"

    def poison(state):
        torch.save({"state": Poison(marker)}, state / name)

    rc, _, err, state, before, run = _resume(capsys, trained, tmp_path, poison)
    assert_one_line_error(rc, err, state / name, "refused to load")
    assert not marker.exists()
    assert snapshot(run / "checkpoints") == before and not (run / "checkpoints" / "step-00000002").exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_poisoned_plain_pickle_rng_file_is_refused(trained, tmp_path, capsys):
    """A plain pickle (not torch's zip format) is refused just the same, not read by pickle."""
    import pickle

    marker = tmp_path / "PWNED"

    def poison(state):
        (state / "random_states_0.pkl").write_bytes(pickle.dumps(Poison(marker)))

    rc, _, err, state, _, _ = _resume(capsys, trained, tmp_path, poison)
    assert_one_line_error(rc, err, state / "random_states_0.pkl", "refused to load")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["wrong_content", "missing"])
def test_rng_file_that_cannot_restore_the_rngs_is_not_ignored(trained, tmp_path, capsys, damage):
    """accelerate swallows any error restoring RNGs (the issue: exit 0); the resume must not go on silently."""
    def poison(state):
        f = state / "random_states_0.pkl"
        if damage == "missing":
            f.unlink()
        else:
            torch.save({"random_state": 1, "numpy_random_seed": 2, "torch_manual_seed": torch.zeros(3)}, f)

    rc, _, err, state, _, _ = _resume(capsys, trained, tmp_path, poison)
    assert_one_line_error(rc, err, "random_states_0.pkl", "missing" if damage == "missing" else "not a valid RNG")


def test_truncated_optimizer_state_is_one_line(trained, tmp_path, capsys):
    def poison(state):
        data = (state / "optimizer.bin").read_bytes()
        (state / "optimizer.bin").write_bytes(data[:len(data) // 3])

    rc, _, err, state, _, _ = _resume(capsys, trained, tmp_path, poison)
    assert_one_line_error(rc, err, state / "optimizer.bin")


def test_untouched_run_still_resumes(trained, tmp_path, capsys):
    """The checks pass what accelerate itself writes (numpy RNG state included)."""
    rc, _, err, _, _, run = _resume(capsys, trained, tmp_path)
    assert rc == 0, err
    assert (run / "checkpoints" / "step-00000002" / "trainer_state.json").is_file()
