"""Train the transformer (HF LlamaForCausalLM) with next-token loss on token shards.

Visual sequences from the token shards are packed into rows of the model's context (positions restart at
each sequence, no attention across sequences), trained with AdamW + warmup/cosine in the precision the
hardware computes fastest (`precision: auto`: bf16 autocast where native, fp16 + grad scaler on pre-Ampere
GPUs, else fp32; see `lvm env`), with held-out loss / next-image perplexity every `eval_every` steps and
atomic HF-format checkpoints under OUT_DIR/checkpoints/ (plus optimizer, scheduler, data position and RNG
state).

The config is a YAML file (see configs/train/); any key can be overridden as key=value, nested keys with
dots; --device/--precision, when not auto, override the config's `device`/`precision`. The resolved config
(with what auto chose) is saved as OUT_DIR/config.yaml. Multi-process (DDP/FSDP):
  accelerate launch --config_file configs/accelerate/ddp.yaml -m lvm train configs/train/100m.yaml

examples:
  lvm train configs/train/tiny.yaml data.shards=data/demo/tokens max_steps=500
  lvm train configs/train/tiny.yaml --resume
  lvm train configs/train/tiny.yaml --precision fp32
  lvm train configs/train/finetune-7b.yaml --init-from /models/LVM-7B data.shards=my/tokens
"""

from lvm.commands.config_args import add_config_arguments, config_from_args
from lvm_base.config import config_to_yaml
from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import apply_args, launch_env


def add_arguments(p):
    add_config_arguments(p, default="configs/train/tiny.yaml")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in out_dir (exactly: data position, optimizer, RNG)")
    p.add_argument("--init-from", metavar="HF_DIR", default=None,
                   help="start from the weights of a Hugging Face LlamaForCausalLM directory (fine-tuning)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only), e.g. for log files")
    add_hardware_arguments(p, device_help="auto (this rank's GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps; "
                                          "overrides the config's device unless auto")


def run(args):
    from lvm.train.config import TrainConfig

    cfg = config_from_args(TrainConfig, args)
    apply_args(cfg, args)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    from lvm.train.loop import train

    rank = launch_env()[0]  # a RANK that is not a number ends here, before the run starts
    summary = train(cfg, resume=args.resume, init_from=args.init_from, progress=not args.no_progress)
    if rank != 0:
        return 0
    ev = ", ".join(f"{k} {v:.4f}" for k, v in summary["eval"].items())
    last = summary["losses"][max(summary["losses"])] if summary["losses"] else float("nan")
    print(f"done: step {summary['step']}, loss {last:.4f}{', ' + ev if ev else ''}; run dir {summary['out_dir']}")
    return 0
