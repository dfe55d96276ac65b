"""The arguments every command that loads a model + tokenizer pair shares: --model, --tokenizer, --device,
--precision."""

HUB = "local directory or hub id (owner/name[@revision][/sub/folder]) from the Hugging Face cache"


def add_pair_arguments(p, demo_default: bool = False) -> None:
    """--model / --tokenizer (required, or defaulting to the demo's checkpoints) and the hardware flags."""
    from tokenizer.common.hardware import add_arguments as device_arguments

    model_default = " (default: runs/demo/model)" if demo_default else ""
    tok_default = " (default: runs/demo/tokenizer)" if demo_default else ""
    p.add_argument("--model", required=not demo_default, default=None,
                   help=f"HF LlamaForCausalLM (ours or the released LVM-7B): {HUB}{model_default}")
    p.add_argument("--tokenizer", required=not demo_default, default=None,
                   help=f"tokenizer checkpoint (ours, released LVM, taming .ckpt): {HUB}{tok_default}")
    device_arguments(p, device_help="where the model and the tokenizer run: auto (a GPU if there is one), cpu, "
                                    "cuda, cuda:N or mps")
