"""Train a VQGAN tokenizer (accelerate: CPU, one GPU, or several processes: `accelerate launch -m lvm ...`
on GPUs, `torchrun --nproc_per_node N -m lvm tokenizer train ...` on CPUs).

The config (configs/tokenizer/*.yaml) holds the model (VQGANConfig), data, loss and schedule; override any
key with key=value (nested keys with dots). Training data: data.path = a folder of images (recursive), a
.txt list of image paths, or webdataset .tar shards; unreadable images are skipped and counted.
LPIPS needs local weights (loss.lpips_vgg = torchvision VGG16 state dict, loss.lpips_lin = LPIPS linear
layers); without them the perceptual term is off, which the log and the saved config say.

Writes to out_dir: config.yaml (resolved), config.json + model.safetensors (newest weights, loadable with
load_tokenizer), ckpt/ (resumable checkpoints), train_log.jsonl, eval.jsonl, tb/ (TensorBoard).
--resume continues a killed run from its newest checkpoint. --device/--precision (default auto: the
hardware policy, see `lvm env`) override the config's device/precision when not auto; config.yaml
records what auto resolved to.

Example:
  lvm tokenizer train configs/tokenizer/small-128-f8.yaml data.path=images/ data.eval_path=held_out/ \\
      out_dir=runs/tok max_minutes=15 --resume
"""

from lvm.commands.config_args import add_config_arguments, resolve_config
from lvm.commands.hardware_args import add_hardware_arguments
from lvm_base.hardware import apply_args


def add_arguments(p):
    add_config_arguments(p, default="configs/tokenizer/small-128-f8.yaml")
    add_hardware_arguments(p, device_help="training device; overrides the config's `device` unless auto",
                           precision_help="training precision; overrides the config's `precision` unless auto "
                                          "(auto = bf16 where the hardware computes it natively, fp16 with a "
                                          "grad scaler on pre-Ampere GPUs, else fp32; see `lvm env`)")
    p.add_argument("--resume", action="store_true", help="continue from out_dir/ckpt/latest if present")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only), e.g. for log files")


def run(args):
    from tokenizer.train_config import TokenizerTrainConfig

    cfg = resolve_config(TokenizerTrainConfig, args)
    if cfg is None:
        return 0
    from tokenizer.train import Trainer, training_plan

    apply_args(cfg, args)
    training_plan(cfg)  # a device that is not there ends here, before any data is read

    Trainer(cfg, progress=not args.no_progress).train(resume=args.resume)
    return 0
