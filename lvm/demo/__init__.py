"""`lvm demo`: the whole system end to end on one machine, as a sequence of resumable stages.

    cfg = demo_config(quick=True)      # DemoConfig with the --quick overrides
    Demo(cfg).run()                    # -> runs/demo-quick/report.md

Stages (each writes `OUT/stages/<name>.json` with its wall time when it finishes; a rerun skips finished
stages, `fresh=True` redoes everything; stages that are themselves resumable continue where a kill left them):

    data       built-in renderer -> image shards (training objects only)        OUT/work/images
    tokenizer  train the small VQGAN config on those images                     OUT/tokenizer (+ work/tokenizer-run)
    tokenize   image shards -> token shards                                      OUT/work/tokens
    train      the tiny LLaMA on the token shards                               OUT/model (+ work/lvm-run)
    prompts    rotation / video continuation and two analogies, held-out        OUT/prompts/*.png (+ work/prompts)
    eval       the in-context task suite (lvm.eval.tasks), held-out              OUT/eval/
    report     loss curves + everything above                                   OUT/report.md

`OUT/model` (HF Llama directory) and `OUT/tokenizer` are what `lvm prompt` and `lvm eval tasks` use by
default (`demo_checkpoints()` in lvm/checkpoints.py).

config.py holds the config and the stage list, stages.py the `Demo` and `run_demo`, prompts.py and report.py
the prompts and report stages, probes.py the timing probes.
"""

from lvm.demo.config import QUICK, STAGES, DemoConfig, demo_config
from lvm.demo.stages import Demo, run_demo

__all__ = ["QUICK", "STAGES", "Demo", "DemoConfig", "demo_config", "run_demo"]
