"""The arguments every command that loads a model + tokenizer pair shares: --model, --tokenizer, --device,
--precision."""

HUB = "local directory or hub id (owner/name[@revision][/sub/folder]) from the Hugging Face cache"


def add_pair_arguments(p, default_model: bool = False) -> None:
    """--model (required, or defaulting to the shipped lvm-small) / --tokenizer (default: the one the model
    records) and the hardware flags."""
    from lvm.commands.hardware_args import add_hardware_arguments as device_arguments

    model_default = " (default: assets/lvm-small, else the demo's runs/demo/model)" if default_model else ""
    p.add_argument("--model", required=not default_model, default=None,
                   help=f"HF LlamaForCausalLM (ours or the released LVM-7B): {HUB}{model_default}")
    p.add_argument("--tokenizer", default=None,
                   help=f"tokenizer checkpoint (ours, released LVM, taming .ckpt): {HUB} (default: the one the "
                        "model's config.json records; the released LVM-7B records none)")
    device_arguments(p, device_help="where the model and the tokenizer run: auto (a GPU if there is one), cpu, "
                                    "cuda, cuda:N or mps")
