"""The three ways `lvm prompt` runs (lvm/commands/prompt.py parses the flags and calls `run_prompt`):
the interactive REPL, one prompt file, or a batch JSONL file."""

from __future__ import annotations

from pathlib import Path

from lvm.generate.sampling import DEFAULTS
from lvm_base.errors import InputError


def run_prompt(model=None, tokenizer=None, prompt=None, batch=None, batch_options=None, out="out/prompt",
               n=None, candidates=DEFAULTS.candidates, temperature=DEFAULTS.temperature, top_k=DEFAULTS.top_k,
               top_p=DEFAULTS.top_p, seed=DEFAULTS.seed, device="auto", precision="auto", threads=0, display=None, speculative=True) -> int:
    """Load the model and tokenizer (the demo's where not given) into a session and run one mode on it:
    `batch` (a JSONL file, run with `batch_options`, a lvm.prompt.batch.BatchOptions), `prompt` (a prompt
    YAML file, results in `out`) or else the REPL. `speculative=False` decodes one token per pass."""
    from lvm.generate.sampling import Sampling
    from lvm.prompt.session import Session
    from lvm_base.hardware import resolve

    resolve(device, precision, "inference")  # a device that is not there is a one-line error before anything loads
    if threads:
        import torch

        torch.set_num_threads(threads)
    if prompt and batch:
        raise InputError("give --prompt or --batch, not both")
    s = Session(model, tokenizer, out_dir=out, display=display, device=device, precision=precision,
                speculative=speculative)
    s.sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    s.candidates = candidates
    if batch:
        from lvm.prompt.batch import run_batch

        return run_batch(s, batch, batch_options)
    if prompt:
        return one_shot(s, prompt, Path(out), n)
    from lvm.prompt.repl import repl

    return repl(s)


def one_shot(s, prompt_file, out: Path, n: int | None = None) -> int:
    """Generate for the prompt file once into `out`: candidate PNGs, grid.png and generation.json."""
    s.load(prompt_file)
    res = s.generate(n or s.default_n(), out_dir=out)
    s.print(f"wrote {len(res['files'])} candidate PNGs, {res['grid']} and {res['dir'] / 'generation.json'}")
    if s.display != "none":
        from lvm.prompt import display

        display.preview(res["grid_image"], s.display)
    return 0
