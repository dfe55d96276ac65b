"""Launching 2-process `lvm train` runs from tests (CPU, gloo), the way users launch them.

    proc = start(["-m", "lvm", "train", "configs/train/tiny.yaml", ...], log)   # torchrun, 2 processes
    wait_for(path, proc)        # poll until a file appears (or fail with the run's output)
    kill_tree(proc)             # SIGKILL the launcher and every worker, as a node failure would

Run as a script (under torchrun), this file is a test wrapper around `lvm train` that adds,
as flags before `--`:
    --hang-before-publish N   the save of step N writes its temporary directory completely, then
                              blocks before the rename (the test kills the run there: a kill during a
                              save)
    --fsdp2                   shard model/optimizer with accelerate's FSDP2 even on a CPU (accelerate
                              itself only enables FSDP on GPUs; see force_fsdp2)
    --dump-optimizer DIR      after every checkpoint save and after the resume load, each rank writes
                              its own (local, possibly sharded) optimizer state to
                              DIR/{save,load}-step<N>-rank<R>.pt
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch_cmd(args: list[str], nproc: int = 2) -> list[str]:
    """`torchrun --standalone --nproc_per_node N ARGS` (ARGS: a script or -m module and its args).

    torchrun, not `accelerate launch --cpu --num_processes N`: on a CPU that one starts a single process
    (accelerate's multi-CPU launch needs mpirun), silently.
    """
    tr = Path(sys.executable).parent / "torchrun"
    base = [str(tr)] if tr.exists() else [sys.executable, "-m", "torch.distributed.run"]
    return base + ["--standalone", "--nproc_per_node", str(nproc), *args]


def env(tmp: Path) -> dict:
    """Environment of a launched run: one thread per process, offline, no user accelerate config."""
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
             TOKENIZERS_PARALLELISM="false", HF_HOME=str(tmp / "hf-home"), PYTHONPATH=str(ROOT))
    return e


def start(args: list[str], log: Path, nproc: int = 2) -> subprocess.Popen:
    """Start a launch in its own session (output to `log`); the caller waits or kills it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    f = open(log, "wb")
    return subprocess.Popen(launch_cmd(args, nproc), cwd=ROOT, env=env(log.parent), stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True)


def run(args: list[str], log: Path, nproc: int = 2, timeout: float = 600) -> str:
    """Launch and wait; raise with the output's tail unless it exits 0. Returns the output."""
    p = start(args, log, nproc)
    try:
        rc = p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(p)
        raise AssertionError(f"launch did not finish in {timeout} s:\n{_tail(log)}") from None
    if rc != 0:
        raise AssertionError(f"launch exited {rc}:\n{_tail(log)}")
    return log.read_text(errors="replace")


def _tail(log: Path, n: int = 6000) -> str:
    return log.read_text(errors="replace")[-n:]


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    """Poll until `path` exists. Fails if the run exits first (or after `timeout`, a hang guard only)."""
    t0 = time.monotonic()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"run exited ({proc.returncode}) before {path} appeared:\n{_tail(log)}")
        if time.monotonic() - t0 > timeout:
            kill_tree(proc)
            raise AssertionError(f"{path} did not appear in {timeout} s:\n{_tail(log)}")
        time.sleep(0.05)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and every process under it.

    torch elastic starts each worker in its own session, so killing the launcher's group alone would
    leave the workers running; a machine failure takes them all, which is what this does.
    """
    pids = _descendants(proc.pid)
    for pid in [proc.pid, *pids]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pid in pids:  # reaped by init; wait until they are gone so their files are closed
        for _ in range(200):
            if not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid):
                break
            time.sleep(0.05)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return ""


# ---- the wrapper (run under torchrun) ----

def force_fsdp2(accelerator_kwargs: dict):
    """An Accelerator on the CPU whose state says FSDP2 (test only).

    accelerate 1.15 enables FSDP only for GPU process groups (on a CPU group it silently falls back to
    DDP-like MULTI_CPU); FSDP2 itself (torch fully_shard) and torch.distributed.checkpoint work on CPU
    with gloo, so the state is switched to FSDP after construction. configs/accelerate/fsdp.yaml runs the
    same save/load code through accelerate's normal path where GPUs are available.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT",
                                            auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["LlamaDecoderLayer"],
                                            reshard_after_forward=True, cpu_ram_efficient_loading=False)
    acc = Accelerator(fsdp_plugin=plugin, **accelerator_kwargs)
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin
    return acc


def _local_optimizer_state(optimizer) -> dict:
    """This rank's optimizer state as plain local tensors (a DTensor's own shard)."""
    import torch

    st = optimizer.state_dict()["state"]
    return {str(k): {n: (v.to_local() if hasattr(v, "to_local") else v).detach().clone()
                     if isinstance(v, torch.Tensor) else v for n, v in s.items()} for k, s in st.items()}


def hang_before_publish(name: str) -> None:
    """Make this process's save of checkpoint directory `name` stop just before the rename that publishes it
    (touching `<name>.hanging` beside the temporary directory), so a test can kill the run mid-save."""
    import lvm_base.checkpointing as ck

    publish = ck._publish

    def hanging_publish(tmp, final):
        if Path(final).name == name:
            (Path(tmp).parent / f"{name}.hanging").touch()
            while True:
                time.sleep(1)
        publish(tmp, final)

    ck._publish = hanging_publish


def _wrapper_main(argv: list[str]) -> int:
    import argparse

    sys.path.insert(0, str(ROOT))
    p = argparse.ArgumentParser()
    p.add_argument("--hang-before-publish", type=int, default=None)
    p.add_argument("--fsdp2", action="store_true")
    p.add_argument("--dump-optimizer", default=None)
    opts, rest = p.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]

    import torch

    import lvm.train.loop as loop

    if opts.hang_before_publish is not None:
        hang_before_publish(f"step-{opts.hang_before_publish:08d}")

    if opts.fsdp2:
        import contextlib

        def make_accelerator(plan, **kw):  # fp32/bf16 only (the tests run fp32)
            acc = force_fsdp2(dict(mixed_precision=plan.mixed_precision, cpu=plan.device_type == "cpu", **kw))
            return acc, contextlib.nullcontext()

        loop.make_accelerator = make_accelerator

    if opts.dump_optimizer:
        dump = Path(opts.dump_optimizer)
        save, load = loop.save_checkpoint, loop.load_checkpoint

        def _dump(acc, kind, step):
            dump.mkdir(parents=True, exist_ok=True)
            torch.save(_local_optimizer_state(acc._optimizers[0]), dump / f"{kind}-step{step}-rank{acc.process_index}.pt")

        def save_and_dump(acc, model, out_dir, state, keep_last, cfg=None):
            res = save(acc, model, out_dir, state, keep_last, cfg)
            _dump(acc, "save", state["step"])
            return res

        def load_and_dump(acc, ckpt, progress):
            res = load(acc, ckpt, progress)
            _dump(acc, "load", progress.step)
            return res

        loop.save_checkpoint, loop.load_checkpoint = save_and_dump, load_and_dump

    from lvm.cli import main

    return main(["train", *rest])


if __name__ == "__main__":
    from lvm.cli import exit_process

    exit_process(_wrapper_main(sys.argv[1:]))  # as the `lvm` executable ends a rank
