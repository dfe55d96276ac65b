"""The whole system end to end on this machine: data, tokenizer, transformer, prompts, evaluation, report.

Stages (progress bar and time estimate for each): render a mixed dataset with the built-in renderer
(multi-view orbits, physics videos, and segmentation / depth / colorization / inpainting pairs, the four
analogies the task suite evaluates; 128 px; training objects only) -> take the tokenizer shipped in
assets/demo-tokenizer (--train-tokenizer: train the small tokenizer instead) -> tokenize the shards ->
train the tiny transformer -> prompt it on held-out objects (rotation and video continuation, two analogies)
-> run the in-context task suite (`lvm eval tasks`) -> write OUT/report.md with loss curves, prompt |
prediction | truth grids, the task table and the quality checks. Where assets/lvm-small exists, it answers
the same prompts and episodes beside the fresh model. The trained checkpoints are left in OUT/model and
OUT/tokenizer, which `lvm prompt` and `lvm eval tasks` use when assets/lvm-small is not there.

Each stage is skipped when it finished before (OUT/stages/<stage>.json); a killed stage resumes where it
stopped. --fresh redoes everything. The stages plan to fill budget_minutes (17 by default, so that a fresh
install and the demo end within 20 on a 2-core CPU); --quick is a smoke run of every stage with a 3-minute
budget (quality not expected). docs/demo.md says where the minutes go. Any field of the demo config can be overridden as key=value
(see --print-config); the resolved config is saved as OUT/demo_config.yaml.

Every stage computes on --device in --precision (default auto: bf16 where the hardware computes it natively,
else fp32; the first line printed says what auto chose), so the probes that size the training stages and the
printed estimates follow the hardware.

examples:
  lvm demo
  lvm demo --quick out=runs/demo-quick          # trains its own tokenizer too
  lvm demo --train-tokenizer out=runs/demo-tok
  lvm demo --precision fp32
  lvm demo seed=1 out=runs/demo-seed1
"""

from lvm.commands.config_args import add_config_arguments
from lvm.commands.hardware_args import add_hardware_arguments


def add_arguments(p):
    add_config_arguments(p)
    p.add_argument("--quick", action="store_true", help="smoke run of every stage in ~3 minutes")
    p.add_argument("--train-tokenizer", action="store_true",
                   help="train the tokenizer in the demo (about 4 of its minutes) instead of using the one shipped "
                        "in assets/demo-tokenizer")
    p.add_argument("--fresh", action="store_true", help="redo every stage (deletes the previous outputs in OUT)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_hardware_arguments(p, device_help="auto (this rank's GPU, else MPS, else CPU), cpu, cuda, cuda:N or mps, "
                                          "for every stage; overrides the config's device unless auto")


def run(args):
    from lvm.demo import run_demo

    path, overrides = args.config, list(args.overrides)
    if path is not None and "=" in path:  # `lvm demo out=x`: the first override landed in the CONFIG slot
        overrides.insert(0, path)
        path = None
    return run_demo(path, overrides, quick=args.quick, fresh=args.fresh, progress=not args.no_progress,
                    device=args.device, precision=args.precision, print_config=args.print_config,
                    train_tokenizer=args.train_tokenizer)
