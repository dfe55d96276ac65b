"""Run logging of both trainers: scalars through accelerate's trackers, records in JSONL files.

TensorBoard always writes to `out_dir/tb/`; the config's `trackers` (a comma list such as
"tensorboard,wandb"; "none" for no tracker) adds any other tracker accelerate knows (W&B, MLflow, ...)
when its package is installed. The JSONL files (`metrics.jsonl` of lvm train, `train_log.jsonl` and
`eval.jsonl` of the tokenizer trainer) are written here too, since the demo report and the tests read
them whatever trackers are on.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError


def tracker_kwargs(out_dir, trackers: str) -> dict:
    """Keyword arguments of `make_accelerator` that attach the trackers named in `trackers`."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, TensorBoardTracker, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    log_with = []
    for name in dict.fromkeys(n.strip() for n in trackers.split(",")):
        if name in ("", "none"):
            continue
        if name not in LOGGER_TYPE_TO_CLASS:
            raise InputError(f"trackers: unknown tracker {name!r}; choose from {', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            raise InputError(f"trackers: {name} is not installed (pip install {name})")
        # TensorBoard as an instance, so its events land in out_dir/tb rather than out_dir/<project name>.
        log_with.append(TensorBoardTracker("tb", str(out_dir)) if name == "tensorboard" else name)
    return {"log_with": log_with, "project_dir": str(out_dir)} if log_with else {}


class RunLog:
    """The trackers of `accelerator` (from `tracker_kwargs`) started for one run, plus its JSONL files.

    `resumed_step` > 0 drops TensorBoard events a killed run wrote after that step, so the curves of a
    resumed run do not fold back on themselves.
    """

    def __init__(self, accelerator, out_dir, resumed_step: int = 0):
        from accelerate.tracking import TensorBoardTracker

        self.acc, self.out = accelerator, Path(out_dir)
        for t in accelerator.log_with:
            if isinstance(t, TensorBoardTracker) and resumed_step:
                t.init_kwargs["purge_step"] = resumed_step
        if accelerator.log_with:
            accelerator.init_trackers(self.out.resolve().name)

    def scalars(self, values: dict, step: int) -> None:
        """Numbers of `values` to every tracker at `step` (main process only)."""
        nums = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if nums and self.acc.log_with:
            self.acc.log(nums, step=step)

    def record(self, name: str, rec: dict) -> None:
        """Append `rec` as one line to out_dir/`name` (main process only)."""
        if self.acc.is_main_process:
            with open(self.out / name, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        """End the run on every rank, after its last collective: the trackers finish and the process group
        is destroyed, since a worker that exits with gloo's threads still running aborts."""
        self.acc.wait_for_everyone()
        self.acc.end_training()
        self.acc.trackers.clear()
