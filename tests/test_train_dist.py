"""`lvm train` with 2 processes on the CPU (gloo), launched as users launch it on a CPU (`torchrun
--standalone --nproc_per_node 2 -m lvm train ...`, tests/dist_util.py; `accelerate launch --cpu
--num_processes 2` would start one process).

Same global batch, same data: the 1-process run takes micro_batch=2 rows per step, each of the 2 ranks
micro_batch=1. The data is one token shard of 2-image sequences of exactly one row (512 tokens) each,
with shuffle_buffer=1 and open_rows=1, so every sequence is one row, in shard order. With one shard and
C consumers, data_builders/token_stream.py gives consumer c the sequences j with j % C == c: the
1-process stream is s0 s1 s2 s3 ..., rank 0 reads s0 s2 ..., rank 1 s1 s3 ..., so step k is rows
{s_2k, s_2k+1} in both runs (the loss is a sum over the step's targets, so the order inside a step does
not matter). With shards >= consumers, or a shuffle buffer, the two runs would read the data in another
order and their losses could not match step by step.
"""

import json

import numpy as np
import pytest
import torch

from data_builders.shards import write_token_shard
from lvm.train.config import TrainConfig
from lvm.train.loop import list_checkpoints, train
from tests import dist_util
from lvm_base.config import load_config

K = 64
CONFIG = "configs/train/tiny.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    rng = np.random.default_rng(0)
    items = []
    for i in range(40):  # even, and more than 2 x 6 steps: no epoch boundary inside the runs
        start, stride = int(rng.integers(K)), int(rng.choice([1, 3]))
        items.append((f"s{i}", ((start + stride * np.arange(512)) % K).reshape(2, 256), {"kind": "test"}))
    write_token_shard(root / "tokens-000000.tar", items)
    return root


def _over(shards, out, **kw) -> list[str]:
    base = dict(out_dir=out, **{"data.shards": shards, "data.shuffle_buffer": 1}, open_rows=1,
                **{"model.codebook_size": K, "model.max_position_embeddings": 512, "model.hidden_size": 96,
                   "model.intermediate_size": 128, "model.num_hidden_layers": 2,
                   "model.num_attention_heads": 4},
                micro_batch=1, tokens_per_step=0, max_steps=6, save_every=3, keep_last=2, lr=3e-3, min_lr=3e-4,
                warmup_steps=3, peak_tflops=1.0, log_every=1, eval_every=100, deterministic="true",
                precision="fp32", device="cpu", threads=1, trackers="none")
    base.update(kw)
    return [f"{k}={v}" for k, v in base.items()]


def _lvm_train(over: list[str], *flags) -> list[str]:
    return ["-m", "lvm", "train", CONFIG, *over, "--no-progress", *flags]


def _wrapped(opts: list[str], over: list[str], *flags) -> list[str]:
    return [str(dist_util.ROOT / "tests" / "dist_util.py"), *opts, "--", CONFIG, *over, "--no-progress", *flags]


def _losses(out, skip_lines: int = 0) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()[skip_lines:]
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _weights(step_dir) -> dict:
    from safetensors.torch import load_file

    return load_file(step_dir / "model.safetensors")


@pytest.fixture(scope="module")
def full_run(shards, tmp_path_factory):
    """The uninterrupted 2-process run: 6 steps, checkpoints at 3 and 6."""
    out = tmp_path_factory.mktemp("dist") / "full"
    dist_util.run(_lvm_train(_over(shards, out)), out.parent / "full.log")
    return out


def _one_proc_cfg(shards, out):
    return load_config(TrainConfig, CONFIG, _over(shards, out, micro_batch=2))


@pytest.fixture(scope="module")
def one_proc_losses(shards, tmp_path_factory):
    """The same run in 1 process (in this one), micro_batch=2: the same global batch."""
    n = torch.get_num_threads()  # the config's threads=1 sets it process-wide
    try:
        return train(_one_proc_cfg(shards, tmp_path_factory.mktemp("one") / "run"), progress=False)["losses"]
    finally:
        torch.set_num_threads(n)


def test_ddp_two_processes_give_the_one_process_loss_curve(one_proc_losses, full_run):
    one = one_proc_losses
    two = _losses(full_run)
    assert json.loads((list_checkpoints(full_run)[-1] / "trainer_state.json").read_text())["world_size"] == 2
    assert sorted(two) == sorted(one) == [1, 2, 3, 4, 5, 6]
    for k in one:
        assert two[k] == pytest.approx(one[k], rel=1e-5), (k, two[k], one[k])
    assert one[6] < one[1]  # it trains
    # The 2-process checkpoint is a plain HF directory with every rank's RNG state.
    from transformers import LlamaForCausalLM

    step6 = list_checkpoints(full_run)[-1]
    assert LlamaForCausalLM.from_pretrained(step6).config.vocab_size == K + 100
    state = step6 / "state"
    assert {"optimizer.bin", "scheduler.bin", "random_states_0.pkl", "random_states_1.pkl",
            "custom_checkpoint_0.pkl"} <= {p.name for p in state.iterdir()}
    assert not (state / "model.safetensors").exists()  # the weights are saved once, as the HF export
    from accelerate.utils import load

    for r in (0, 1):
        assert "torch_manual_seed" in load(state / f"random_states_{r}.pkl")  # weights_only=True loads


def test_two_processes_killed_during_a_save_resume_exactly(shards, full_run, tmp_path):
    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    proc = dist_util.start(_wrapped(["--hang-before-publish", "6"], _over(shards, out)), log)
    tmp6 = out / "checkpoints" / ".step-00000006.tmp"
    try:
        dist_util.wait_for(out / "checkpoints" / "step-00000006.hanging", proc, log)  # step 6 written, unpublished
    finally:
        dist_util.kill_tree(proc)  # SIGKILL: launcher and both workers
    assert (tmp6 / "trainer_state.json").is_file()  # a complete-looking but unpublished save ...
    assert [c.name for c in list_checkpoints(out)] == ["step-00000003"]  # ... that --resume does not pick
    killed = _losses(out)
    n_lines = len((out / "metrics.jsonl").read_text().splitlines())

    dist_util.run(_lvm_train(_over(shards, out), "--resume"), tmp_path / "resume.log")
    resumed, full = _losses(out, n_lines), _losses(full_run)
    assert sorted(resumed) == [4, 5, 6]
    for k in (1, 2, 3):
        assert killed[k] == full[k]
    for k in (4, 5, 6):
        assert resumed[k] == pytest.approx(full[k], rel=1e-5), (k, resumed[k], full[k])
    assert [c.name for c in list_checkpoints(out)] == ["step-00000003", "step-00000006"]
    assert not tmp6.exists() and not any(p.name.startswith(".") for p in (out / "checkpoints").iterdir()
                                         if p.is_dir())
    a, b = _weights(list_checkpoints(out)[-1]), _weights(list_checkpoints(full_run)[-1])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7)


def test_fsdp_sharded_save_and_resume_restore_every_ranks_optimizer_state(shards, one_proc_losses, tmp_path):
    """FSDP2 through accelerate's save_state/load_state (SHARDED_STATE_DICT, torch.distributed.checkpoint).

    accelerate enables FSDP only on GPUs, so the wrapper switches a CPU accelerator's state to FSDP2
    (dist_util.force_fsdp2); configs/accelerate/fsdp.yaml takes accelerate's own path on GPUs.
    """
    out, dump = tmp_path / "fsdp", tmp_path / "dump"
    opts = ["--fsdp2", "--dump-optimizer", str(dump)]
    dist_util.run(_wrapped(opts, _over(shards, out, max_steps=2, save_every=2)), tmp_path / "fsdp1.log")
    state = list_checkpoints(out)[-1] / "state"
    shard_files = {p.name for p in (state / "optimizer_0").iterdir()}
    assert {"__0_0.distcp", "__1_0.distcp"} <= shard_files, shard_files  # each rank wrote its shard
    assert (state / "pytorch_model_fsdp_0").is_dir()
    from transformers import LlamaForCausalLM

    LlamaForCausalLM.from_pretrained(list_checkpoints(out)[-1])  # the full HF export, gathered
    dist_util.run(_wrapped(opts, _over(shards, out, max_steps=3, save_every=2), "--resume"), tmp_path / "fsdp2.log")
    before = [torch.load(dump / f"save-step2-rank{r}.pt", weights_only=True) for r in (0, 1)]
    after = [torch.load(dump / f"load-step2-rank{r}.pt", weights_only=True) for r in (0, 1)]
    for r in (0, 1):
        assert before[r].keys() == after[r].keys() and before[r]
        for p in before[r]:
            for name, v in before[r][p].items():
                torch.testing.assert_close(after[r][p][name], v, rtol=0, atol=0, msg=f"rank {r} param {p} {name}")
    # The sharded run (saved at 2, resumed for step 3; the lr is in warmup, whatever max_steps) follows the
    # 1-process curve.
    losses = _losses(out)
    assert sorted(losses) == [1, 2, 3]
    for k in (1, 2, 3):
        assert losses[k] == pytest.approx(one_proc_losses[k], rel=1e-5), (k, losses[k], one_proc_losses[k])
    # Really sharded: the two ranks hold different parts of the same parameters' state.
    p0 = next(p for p in before[0] if before[0][p]["exp_avg"].numel())
    assert not torch.equal(before[0][p0]["exp_avg"], before[1][p0]["exp_avg"])
