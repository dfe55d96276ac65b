"""Write a model directory to ship from a checkpoint of an `lvm train` run: a plain HF Llama directory with
half-precision safetensors, generation_config.json and the tokenizer it reads recorded relative to it, plus
a model card (README.md) with the recipe, the hardware and wall time of the run, its loss and held-out
perplexity curves, its whole log and, given `--tasks`, the task table of `lvm eval tasks`.

    lvm export runs/lvm-small --out assets/lvm-small --tasks runs/lvm-small-eval \\
        --recipe configs/train/lvm-small.yaml configs/model/small.yaml configs/data/lvm-small.yaml \\
        configs/data/lvm-small-heldout.yaml
"""


def add_arguments(p):
    p.add_argument("run", help="an lvm train out_dir (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("--out", required=True, help="the model directory to write (replaced only if an earlier export)")
    p.add_argument("--checkpoint", default=None, help="a checkpoints/step-N folder (default: the newest)")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"),
                   help="weight precision of the export (default bf16: the training range, half the bytes)")
    p.add_argument("--tokenizer", default=None,
                   help="the tokenizer to record (default: the one the checkpoint records)")
    p.add_argument("--tasks", default=None, help="an `lvm eval tasks --out` folder whose report the card carries")
    p.add_argument("--recipe", nargs="*", default=[], help="config files of the recipe, copied to OUT/recipe/FOLDER/FILE")
    p.add_argument("--name", default=None, help="the model's name in the card (default: OUT's folder name)")


def run(args):
    from lvm.train.export import export_model

    out = export_model(args.run, args.out, args.checkpoint, args.dtype, args.tokenizer, args.tasks, args.recipe,
                       args.name)
    print(f"wrote {out}")
    return 0
