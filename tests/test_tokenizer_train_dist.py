"""`lvm tokenizer train` with 2 processes on the CPU (gloo, DDP), launched as users launch it on CPUs:
`torchrun --standalone --nproc_per_node 2 -m lvm tokenizer train ...` (accelerate 1.15's
`accelerate launch --cpu --num_processes 2` starts a single process unless given an MPI hostfile;
accelerate inside the workers forms the gloo group from torchrun's environment).

Same global batch, same data (test_two_processes_give_the_one_process_losses): the 1-process run takes
batch_size=2 with grad_accum=2, each of the 2 ranks batch_size=2 with grad_accum=1. tokenizer.data.EpochSampler
cuts each epoch's permutation into blocks of batch_size and gives rank r the blocks r, r+2, ..., so at
step k rank r holds block 2k+r, which is exactly the 1-process run's micro-batch r of step k; 16 images
are 4 steps an epoch in both runs. Micro-batch for micro-batch the two runs then compute the same things:
the discriminator's BatchNorm normalizes over one micro-batch in both (with one process and batch_size=4
it would normalize over 4 images, with 2 ranks over each rank's 2, and no setting could match those),
the adaptive GAN weight is per micro-batch in both, and DDP's gradient mean (g0/2 + g1/2) is the
1-process accumulation (loss/2 per micro-step). What cannot match, and is switched off in that test:
random flips and crops (each rank draws from its own RNG), and the "normed" quantizer's dead-code
restarts (rank 0 decides them from its own last micro-batch and broadcasts its codebook; one process
decides from micro-batch 1).

Resume (test_two_processes_killed_during_a_save_resume_exactly): with flips, crops and dead-code restarts
on, a 2-process run is SIGKILLed while its step-6 checkpoint is written but not yet renamed into place
(until then it ran uninterrupted: its logged steps 1-6 and its unpublished step-6 weights are the
reference). --resume takes step 3, the newest published checkpoint, and logs the same losses for steps
4-6 and ends with the same weights: both ranks' RNGs, data positions, both optimizers, both schedules
and the quantizer state came back.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import dist_util
from tokenizer import load_tokenizer
from tokenizer.synthetic import scene

TINY = ["model.resolution=32", "model.channel_mult=[1,2]", "model.hidden_channels=32", "model.codebook_size=64",
        "model.z_channels=8", "model.embed_dim=8", "model.quantizer=normed", "model.code_dim=4",
        "batch_size=2", "warmup_steps=2", "lr=2e-3", "min_lr=2e-4", "max_steps=6", "save_every=3",
        "log_every=1", "eval_every=0", "loss.disc_start=2", "trackers=none", "device=cpu", "precision=fp32"]
DETERMINISTIC = ["data.random_flip=false", "dead_code_max_idle=0"]
PER_RANK_RANDOM = ["data.random_flip=true", "data.crop=24", "dead_code_max_idle=2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for i in range(16):
        scene(0, i, 32).save(root / f"img_{i:03d}.png")
    return root


def _train(images, out, extra, *flags) -> list[str]:
    return ["-m", "lvm", "tokenizer", "train", *TINY, *extra, f"data.path={images}", f"out_dir={out}",
            "--no-progress", *flags]


def _log(out: Path, skip_lines: int = 0) -> dict:
    lines = (out / "train_log.jsonl").read_text().splitlines()[skip_lines:]
    return {r["step"]: r for r in map(json.loads, lines)}


def _torchrun(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """A 2-process launch in its own session (output to `log`); the caller waits or kills it."""
    return subprocess.Popen(_torchrun(args), cwd=dist_util.ROOT, env=dist_util.env(log.parent),
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _run(args: list[str], log: Path) -> str:
    p = _start(args, log)
    try:
        rc = p.wait(timeout=600)
    except subprocess.TimeoutExpired:
        dist_util.kill_tree(p)
        raise
    out = log.read_text(errors="replace")
    assert rc == 0, out[-6000:]
    assert out.count("training on") == 1 and "2 processes" in out, out[-3000:]  # really 2 ranks, one log
    return out


def _one_process(args: list[str]) -> None:
    """The same command in this process (one torch thread, as each launched rank has)."""
    from lvm.cli import main

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args[2:]) == 0
    finally:
        torch.set_num_threads(n)


def test_sampler_blocks_are_the_one_process_micro_batches():
    from tokenizer.data import EpochSampler

    one = list(EpochSampler(16, 3, 0, 1, 2))
    ranks = [list(EpochSampler(16, 3, r, 2, 2)) for r in (0, 1)]
    for k in range(4):  # step k: rank r's batch is the 1-process run's micro-batch r (grad_accum=2)
        for r in (0, 1):
            assert ranks[r][2 * k:2 * k + 2] == one[4 * k + 2 * r:4 * k + 2 * r + 2]
    # every rank gets as many whole batches (the incomplete last round dropped): no rank runs ahead an epoch
    s = [EpochSampler(23, 0, r, 2, 4) for r in (0, 1)]
    assert [len(x) for x in s] == [len(list(x)) for x in s] == [8, 8]
    s[1].set_position(0, 4)
    assert list(s[1]) == list(EpochSampler(23, 0, 1, 2, 4))[4:]


def test_two_processes_give_the_one_process_losses(images, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _run(_train(images, two, DETERMINISTIC), tmp_path / "two.log")
    _one_process(_train(images, one, [*DETERMINISTIC, "grad_accum=2"]))
    a, b = _log(one), _log(two)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    for s in a:
        assert a[s].keys() == b[s].keys()
        for k in ("loss", "rec", "q", "d_loss", "g_loss"):
            if k in a[s]:
                assert b[s][k] == pytest.approx(a[s][k], rel=1e-5, abs=1e-7), (s, k, b[s][k], a[s][k])
    assert "d_loss" in a[6]  # the discriminator and its optimizer took part
    x, y = load_tokenizer(one).state_dict(), load_tokenizer(two).state_dict()  # the out_dir exports
    for k in x:
        torch.testing.assert_close(y[k], x[k], rtol=1e-4, atol=1e-6, msg=k)
    # the 2-process checkpoint: accelerate's state of both ranks, our weights once, the marker
    ckpt = two / "ckpt"
    assert (ckpt / "latest").read_text().strip() == "step-0000006"
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step-0000006"]  # pruned, no temporary dirs
    step6 = ckpt / "step-0000006"
    assert {"config.json", "model.safetensors", "disc.safetensors", "state", "state.json"} <= {
        p.name for p in step6.iterdir()}
    state = {p.name for p in (step6 / "state").iterdir()}
    assert {"optimizer.bin", "optimizer_1.bin", "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl",
            "random_states_0.pkl", "random_states_1.pkl", "progress_0.pt", "progress_1.pt"} <= state, state
    assert not any(n.startswith("model") for n in state)  # the weights are saved once, as our export
    meta = json.loads((step6 / "state.json").read_text())
    assert meta["step"] == 6 and meta["world_size"] == 2
    load_tokenizer(step6)  # a step directory is a tokenizer directory too


# ---- the wrapper: `lvm tokenizer train` whose save of step N hangs before the rename ----

def _wrapper_main(argv: list[str]) -> int:
    from lvm.cli import main

    n, rest = int(argv[0]), argv[2:]  # N -- ARGS
    dist_util.hang_before_publish(f"step-{n:07d}")
    return main(rest)


def test_two_processes_killed_during_a_save_resume_exactly(images, tmp_path):
    from safetensors.torch import load_file

    out, log = tmp_path / "run", tmp_path / "killed.log"
    wrapped = [str(Path(__file__).resolve()), "6", "--", *_train(images, out, PER_RANK_RANDOM)[2:]]
    proc = _start(wrapped, log)
    try:
        dist_util.wait_for(out / "ckpt" / "step-0000006.hanging", proc, log)
    finally:
        dist_util.kill_tree(proc)  # SIGKILL: the launcher and both workers, mid-save
    tmp6 = out / "ckpt" / ".step-0000006.tmp"
    assert (tmp6 / "state.json").is_file() and (tmp6 / "state" / "progress_1.pt").is_file()  # written ...
    assert (out / "ckpt" / "latest").read_text().strip() == "step-0000003"  # ... not renamed: resume takes 3
    # Up to the kill the run was uninterrupted: its log of steps 1-6 and its step-6 weights are the reference.
    ref, ref_weights = _log(out), load_file(tmp6 / "model.safetensors")
    assert sorted(ref) == [1, 2, 3, 4, 5, 6] and any(ref[s].get("restarted") for s in (2, 3, 4, 5, 6))
    n_lines = len((out / "train_log.jsonl").read_text().splitlines())

    text = _run(_train(images, out, PER_RANK_RANDOM, "--resume"), tmp_path / "resume.log")
    assert "at step 3" in text
    got = _log(out, n_lines)
    assert sorted(got) == [4, 5, 6]
    for s in (4, 5, 6):
        for k in ("loss", "rec", "q", "d_loss", "g_loss", "restarted"):
            assert got[s][k] == pytest.approx(ref[s][k], rel=1e-5, abs=1e-7), (s, k, got[s][k], ref[s][k])
    assert sorted(p.name for p in (out / "ckpt").iterdir() if p.is_dir()) == ["step-0000006"]  # tmp dir gone
    weights = load_file(out / "ckpt" / "step-0000006" / "model.safetensors")
    assert weights.keys() == ref_weights.keys()
    for k in weights:
        torch.testing.assert_close(weights[k], ref_weights[k], rtol=1e-5, atol=1e-7, msg=k)


if __name__ == "__main__":
    from lvm.cli import exit_process

    exit_process(_wrapper_main(sys.argv[1:]))  # as the `lvm` executable ends a rank
