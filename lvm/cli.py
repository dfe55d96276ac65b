"""The `lvm` command: the one front door to data building, tokenizer, training, prompting and evaluation.

The command tree is the table `COMMANDS` below. Each leaf command is a module under `lvm/commands/` with
a docstring (shown by --help, with an example), `add_arguments(parser)` and `run(args) -> int | None`.
Only the module of the leaf being run is imported, so `lvm --help` is instant and heavy libraries load
only for the command that needs them.

Errors: a user mistake (`lvm_base.errors.InputError` and its subclasses, missing files) ends with one
line `error: ...` and exit code 2; `--debug` (anywhere on the command line, or LVM_DEBUG=1) shows the
traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from lvm_base.errors import InputError, one_line

# name -> (one-line help, example, module) for a leaf; (help, {sub: leaf}) for a group.
COMMANDS: dict = {
    "data": ("build visual-sequence datasets: sources -> image shards -> token shards", {
        "build": ("build webdataset shards of image sequences from a data config",
                  "lvm data build configs/data/demo.yaml out=data/demo --workers 2",
                  "lvm.commands.data_build"),
        "tokenize": ("turn image-sequence shards into token shards with a tokenizer checkpoint",
                     "lvm data tokenize data/demo/images --tokenizer runs/tok --out data/demo/tokens",
                     "lvm.commands.data_tokenize"),
        "export-jsonl": ("export token shards to the original training code's JSONL ({\"tokens\": base64 int32})",
                         "lvm data export-jsonl data/demo/tokens --out data/demo.jsonl",
                         "lvm.commands.data_export_jsonl"),
        "import-jsonl": ("import the original training code's JSONL ({\"tokens\": base64 int32}) as token shards",
                         "lvm data import-jsonl release/tokens.jsonl --out data/release/tokens",
                         "lvm.commands.data_import_jsonl"),
        "stats": ("sum the per-shard stats of a built dataset (counts per kind/source, failures per reason)",
                  "lvm data stats data/demo/images", "lvm.commands.data_stats"),
        "preview": ("write a PNG grid of sample sequences from shards",
                    "lvm data preview data/demo/images --out preview.png", "lvm.commands.data_preview"),
    }),
    "tokenizer": ("the VQGAN image tokenizer: train, evaluate, reconstruct, encode, decode", {
        "train": ("train a VQGAN tokenizer from a config",
                  "lvm tokenizer train configs/tokenizer/small-128-f8.yaml data.path=images/ --resume",
                  "lvm.commands.tokenizer_train"),
        "eval": ("PSNR, SSIM, LPIPS, codebook usage and code perplexity of a tokenizer on a set of images",
                 "lvm tokenizer eval runs/tok --images held_out/", "lvm.commands.tokenizer_eval"),
        "recon": ("write an original | reconstruction grid PNG",
                  "lvm tokenizer recon runs/tok img1.png img2.png --out recon.png", "lvm.commands.tokenizer_recon"),
        "encode": ("images -> .npy code files", "lvm tokenizer encode runs/tok images/ --out codes/",
                   "lvm.commands.tokenizer_encode"),
        "decode": (".npy code files -> images", "lvm tokenizer decode runs/tok codes/ --out decoded/",
                   "lvm.commands.tokenizer_decode"),
    }),
    "train": ("train the LLaMA-style transformer on token shards",
              "lvm train configs/train/tiny.yaml data.shards=data/demo/tokens --resume",
              "lvm.commands.train"),
    "export": ("write a model directory to ship from a training run: half-precision weights, tokenizer "
               "record, model card", "lvm export runs/lvm-small --out assets/lvm-small --tasks runs/eval",
               "lvm.commands.export"),
    "prompt": ("prompt a model with images: interactive REPL, one prompt file, or a batch JSONL",
               "lvm prompt --model runs/lvm --tokenizer runs/tok --prompt prompts/rotation.yaml --out out/",
               "lvm.commands.prompt"),
    "eval": ("evaluate models: perplexity of target images, video next-frame perplexity, in-context task suite", {
        "perplexity": ("perplexity of target images given input images (released JSONL format)",
                       "lvm eval perplexity eval.jsonl --model runs/lvm --tokenizer runs/tok",
                       "lvm.commands.eval_perplexity"),
        "video-perplexity": ("next-frame perplexity of videos (the release's protocol) and its curve against "
                             "context length",
                             "lvm eval video-perplexity --videos 'clips/*.mp4' --model runs/lvm --tokenizer runs/tok "
                             "--context-curve 1,3,7,11,15 --out out/video",
                             "lvm.commands.eval_video_perplexity"),
        "tasks": ("in-context task suite on held-out data: perplexity and task metrics vs trivial baselines",
                  "lvm eval tasks --model runs/lvm --tokenizer runs/tok --shots 1,3,7",
                  "lvm.commands.eval_tasks"),
    }),
    "bench": ("benchmarks: this project against its reference path, side by side, with the ratio", {
        "tokenizer": ("encode/decode images/s: fast path vs taming fp32 eager reference",
                      "lvm bench tokenizer --config configs/tokenizer/lvm-f16-8192.yaml",
                      "lvm.commands.bench_tokenizer"),
        "data": ("data-building sequences/s and images/s: 1 vs N worker processes",
                 "lvm bench data configs/data/demo.yaml --limit 600 --workers 1,2", "lvm.commands.bench_data"),
        "train": ("training tokens/s and MFU: lvm train's step vs a plain fp32 padded loop",
                  "lvm bench train --model tiny", "lvm.commands.bench_train"),
        "generate": ("image generation tokens/s: this engine vs HF generate()",
                     "lvm bench generate --model tiny --candidates 1,4", "lvm.commands.bench_generate"),
        "suite": ("every GPU check and benchmark in one timed run: one table, suite.json + suite.md",
                  "lvm bench suite --out out/gpu-suite", "lvm.commands.bench_suite"),
    }),
    "serve": ("visual prompting in the browser (Gradio web page + API) on the same engine as lvm prompt",
              "lvm serve --model runs/lvm --tokenizer runs/tok --port 7860", "lvm.commands.serve"),
    "env": ("what this machine has and what --device/--precision auto picks (versions, CPU, GPUs, kernels)",
            "lvm env", "lvm.commands.env"),
    "demo": ("the whole system end to end on this machine: data, tokenizer, transformer, prompts, report",
             "lvm demo --quick", "lvm.commands.demo"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit 2) instead of usage + error."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def _is_group(entry) -> bool:
    return isinstance(entry[1], dict)


def _leaf_parser(sub, name: str, entry, selected: bool, prog: str):
    help_, example, module = entry
    p = sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter)
    description = help_[0].upper() + help_[1:] + "."
    if selected:
        mod = importlib.import_module(module)
        doc = (mod.__doc__ or "").strip()
        p.description = f"{description}\n\n{doc}" if doc else description
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    else:
        p.description = description
    p.epilog = f"example:\n  {example}"
    return p


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    words = [a for a in argv if not a.startswith("-")]
    parser = _Parser(
        prog="lvm",
        description=(
            "lvm: Large Vision Models from pixels alone.\n\n"
            "Images become 256 discrete codes (VQGAN tokenizer); videos, 3D orbits and annotated images\n"
            "become visual sequences; a LLaMA-style transformer learns them; visual prompts ask it for tasks."
        ),
        epilog="examples:\n  lvm demo --quick\n  lvm prompt --prompt prompts/rotation.yaml --out out/\n\n"
               "Add --debug to any command to see a full traceback on errors.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)
    for name, entry in COMMANDS.items():
        if _is_group(entry):
            help_, leaves = entry
            g = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                               formatter_class=argparse.RawDescriptionHelpFormatter)
            g.epilog = "examples:\n" + "\n".join(f"  {leaf[1]}" for leaf in leaves.values())
            g.set_defaults(_group_parser=g)
            gsub = g.add_subparsers(title="subcommands", metavar="SUBCOMMAND", parser_class=_Parser)
            for leaf_name, leaf in leaves.items():
                selected = len(words) >= 2 and words[0] == name and words[1] == leaf_name
                _leaf_parser(gsub, leaf_name, leaf, selected, f"lvm {name} {leaf_name}")
        else:
            _leaf_parser(sub, name, entry, bool(words) and words[0] == name, f"lvm {name}")
    parser.set_defaults(_group_parser=parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LVM_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    # `lvm train CONFIG --resume lr=1e-3`: argparse ends a positional list at the first flag, so overrides
    # after a flag arrive here; they are overrides all the same
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.parse_args(argv)  # argparse's own one-line refusal of what it does not know, exit 2
    run = getattr(args, "_run", None)
    if run is None:
        args._group_parser.print_help()
        return 0
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except (InputError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as e:
        if debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def _launched_worker() -> bool:
    """Whether this process is one rank of a multi-process launch (torchrun/accelerate set WORLD_SIZE)."""
    raw = os.environ.get("WORLD_SIZE", "1").strip()
    return raw.isdigit() and int(raw) > 1  # a bad value was the command's one-line error already


def exit_process(rc: int) -> None:
    """End the process with exit code `rc`, as the `lvm` executable does after a command.

    A rank of a multi-process run ends without interpreter finalization: gloo's C++ worker threads that
    outlive the process group (held by DDP's reducer until module teardown) can abort the process
    (SIGABRT, "terminate called without an active exception") after a run that finished and saved, and
    the launcher then reports the whole run failed. The exit handlers (logging, multiprocessing's children)
    still run first, and the output is flushed.
    """
    if not _launched_worker():
        sys.exit(rc)
    import atexit
    import gc

    gc.collect()  # what the run left in reference cycles (models, the accelerator) goes while torch is whole
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def entry() -> None:
    """The `lvm` executable and `python -m lvm`."""
    exit_process(main())


if __name__ == "__main__":
    entry()
