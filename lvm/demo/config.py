"""What `lvm demo` runs: its stages, its config (`DemoConfig`, `QUICK`) and the numbers its plans start from."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lvm.checkpoints import DEMO_OUT
from lvm_base.validate import POSITIVE, SEED, above, between, checks, each

SHIPPED_TOKENIZER = "assets/demo-tokenizer"  # relative to the project root (shipped_tokenizer)
STAGES = ("data", "tokenizer", "tokenize", "train", "prompts", "eval", "report")


# Ranges (lvm_base.validate): minutes are budgets a stage divides by; counts make at least one of each.
@dataclass
@checks(seed=SEED, workers=POSITIVE, budget_minutes=above(0), sequences=POSITIVE, image_size=between(8, 8192),
        tokenizer_steps=POSITIVE, tokenizer_minutes=above(0), train_steps=POSITIVE, train_minutes=above(0),
        heldout_every=POSITIVE, prompt_candidates=POSITIVE, eval_episodes=POSITIVE, eval_samples=POSITIVE, shots=each(POSITIVE),
        context=POSITIVE)
class DemoConfig:
    out: str = str(DEMO_OUT)
    seed: int = 0
    workers: int = 2                        # data-building processes
    # the stages' budget: 17 minutes, so that README's first command (a fresh venv's install from pip's
    # cache, then the demo) stays within 20 on a 2-core CPU, with room for the planner's error
    budget_minutes: float = 17.0
    # data: a data config (built-in source first) + how many sequences to render
    data: str = "configs/data/demo.yaml"
    sequences: int = 400
    image_size: int = 128
    # annotation tasks of the built-in source's pairs: the four the task suite evaluates, so that every pair
    # the demo trains on teaches one of them (normals, edges, boxes and keypoints are left out)
    tasks: list[str] = field(default_factory=lambda: ["segmentation", "depth", "colorization", "inpainting"])
    # tokenizer: the one shipped in the repository (trained by `lvm tokenizer train configs/tokenizer/demo.yaml`
    # on the demo's own renders; its README has the commands, the hardware and the log), so the demo's
    # minutes go to the transformer. null (`--train-tokenizer`, and `--quick`) trains one in the tokenizer
    # stage instead, from the config and overrides below.
    tokenizer_checkpoint: str | None = SHIPPED_TOKENIZER
    tokenizer: str = "configs/tokenizer/small-128-f8.yaml"
    # 64 px crops: a step costs a quarter of a 128 px one, so the tokenizer sees four times the images in
    # its budget. Batch 8: in a fixed time, more steps beat bigger batches here. The config's colour
    # shortcut (color_skip) is what keeps object colour in the segmentation answers early in training, so a
    # few minutes suffice and the rest of the budget goes to the transformer. K = 1024: on this little data
    # a smaller codebook is better used, and the transformer's softmax is 8x smaller.
    tokenizer_overrides: list[str] = field(default_factory=lambda: [
        "data.crop=64", "batch_size=8", "model.codebook_size=1024", "lr=1e-3", "min_lr=1e-4",
        "warmup_steps=30"])
    tokenizer_steps: int = 3000             # at most; fewer when a timing probe says they do not fit:
    tokenizer_minutes: float = 4.0          # the stage's time budget (also a hard stop)
    # transformer: a train config + overrides (its codebook size is always set to the tokenizer's)
    train: str = "configs/train/tiny.yaml"
    # One 4096-token row per optimizer step: in a budget of a few hundred steps, twice the updates of the
    # config's two-row steps. A higher lr than the config's suits so few steps: a lower loss and a lower
    # target perplexity on all six tasks.
    train_overrides: list[str] = field(default_factory=lambda: ["tokens_per_step=4096", "lr=2e-3",
                                                                "min_lr=2e-4"])
    train_steps: int = 2000                 # at most; the run fits its steps to its minutes by its own pace
    # the transformer stage's time budget (saving included); it gives up minutes where the stages around it
    # would pass budget_minutes (a trained tokenizer, a slower machine): Demo.train_minutes
    train_minutes: float = 15.0
    # The shipped lvm-small (the same recipe trained for hours: its README), prompted and evaluated beside
    # the fresh model on the same held-out prompts, and its logged held-out perplexity beside the fresh
    # run's: one recipe at minutes and at hours of compute. null: the fresh model only (also when absent).
    shipped_model: str | None = "assets/lvm-small"
    # the fresh run scores the shipped model's held-out tokens (its heldout_tokens/) every this many steps
    heldout_every: int = 100
    # prompting and evaluation on held-out objects
    prompt_candidates: int = 2              # sampled candidates shown next to the greedy answer
    eval_episodes: int = 4
    # samples the eval stage's mean decoding averages: this 4-episode look keeps 8, which cost about half
    # of 16 per episode, and leaves the minutes to training; `lvm eval tasks` averages 16
    eval_samples: int = 8
    shots: list[int] = field(default_factory=lambda: [1, 3, 7])
    context: int = 7
    # Where and in what precision every stage computes (lvm_base.hardware.resolve): auto = this rank's GPU,
    # else MPS, else CPU; bf16 where the hardware computes it natively, fp16 on pre-Ampere GPUs, else fp32.
    # Each stage's own overrides (tokenizer_overrides, train_overrides) still win. demo_config.yaml records
    # what auto resolved to.
    device: str = "auto"
    precision: str = "auto"
    # Where the demo runs on a CUDA GPU, these apply before the command line's overrides (which win): more
    # data, a 12-layer 768-wide transformer (~90M parameters) with 16-row steps, more evaluation episodes;
    # the transformer's run then fits its steps to the same minutes on that GPU by its own pace.
    cuda_overrides: list[str] = field(default_factory=lambda: [
        "sequences=4000", "workers=8", "train_steps=20000", "eval_episodes=16", "eval_samples=16",
        "train_overrides=[tokens_per_step=65536,micro_batch=16,lr=1e-3,min_lr=1e-4,warmup_steps=200,"
        "model.hidden_size=768,model.intermediate_size=2048,model.num_hidden_layers=12,"
        "model.num_attention_heads=12]"])


# `--quick`: a smoke run of every stage in about three minutes; quality is not expected.
QUICK = ["tokenizer_checkpoint=null", "sequences=16", "tokenizer_steps=20", "tokenizer_minutes=0.5", "train_steps=4", "train_minutes=1",
         "train_overrides=[tokens_per_step=4096,warmup_steps=2,save_every=4,log_every=1]", "eval_episodes=1",
         "shots=[1,3]", "context=3", "prompt_candidates=1", "budget_minutes=3", "shipped_model=null"]
QUICK_OUT = "runs/demo-quick"  # where --quick writes unless out= is given

# Seconds per unit of work on an idle 2-core CPU (bf16), used only to print an estimate before each stage
# (the training stages fit their steps to their minutes themselves). They are scaled
# by the tokenizer probe against its tokenizer_per_step (`Demo.speed_factor`), and tokenize / eval are
# estimated from a short timing of their own work once their inputs exist (`Demo.estimate`).
EST = {"data_per_seq": 0.06, "tokenizer_per_step": 0.3, "tokenize_per_image": 0.011, "train_per_row": 1.2,
       "prompts": 55.0, "eval_per_episode": 6.1, "report": 1.0}
PLANNED_SHARE = 0.9  # of the tokenizer stage's minutes its planned steps fill: the rest is for loading, saving
TRAIN_RESERVE_S = 20.0  # of the transformer stage's minutes: building the run, saving and copying its checkpoint
BUDGET_SHARE = 0.95  # of the demo's budget the stages plan to fill: the estimates of the later stages are rough


def demo_config(path=None, overrides=(), quick: bool = False, device: str = "auto",
                precision: str = "auto") -> DemoConfig:
    """The resolved demo config: the YAML file `path` (None: the defaults) with `overrides`, on top of
    `QUICK` (and out=QUICK_OUT unless an override sets out) when `quick`; a `device` / `precision` other
    than auto replaces the config's."""
    from types import SimpleNamespace

    from lvm_base.config import load_config
    from lvm_base.hardware import apply_args

    overrides = list(overrides)
    if quick:
        overrides = QUICK + ([] if any(o.startswith("out=") for o in overrides) else [f"out={QUICK_OUT}"]) \
            + overrides
    cfg = load_config(DemoConfig, path, overrides)
    apply_args(cfg, SimpleNamespace(device=device, precision=precision))
    if cfg.cuda_overrides and not quick and _on_cuda(cfg):
        cfg = load_config(DemoConfig, path, list(cfg.cuda_overrides) + overrides)
        apply_args(cfg, SimpleNamespace(device=device, precision=precision))
    return cfg


def _on_cuda(cfg: DemoConfig) -> bool:
    """Whether the demo's device resolves to a CUDA GPU (lvm_base.hardware.resolve)."""
    from lvm_base.hardware import resolve

    return resolve(cfg.device, cfg.precision, "training").device.startswith("cuda")


def fmt_s(s: float) -> str:
    """Seconds for a log line: "42 s", or minutes from 90 s on."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def after_at_table_speed(c: DemoConfig) -> float:
    """Seconds of the stages after training (prompts, eval, report) at EST's speed, the shipped model's
    share included (its decoding costs SHIPPED_COST times the fresh model's)."""
    models = 1 + (SHIPPED_COST if shipped_model(c) else 0)
    return models * (EST["prompts"] + c.eval_episodes * 6 * EST["eval_per_episode"]) + EST["report"]


SHIPPED_COST = 1.5  # lvm-small's 6 layers against the tiny model's 4: what a decoded token costs


def shipped_model(c: DemoConfig) -> Path | None:
    """The shipped model to show beside the fresh one (c.shipped_model, relative to the project root), or
    None when it is off or not there."""
    from lvm_base.config import project_path

    if not c.shipped_model:
        return None
    p = project_path(c.shipped_model)
    return p if (p / "config.json").is_file() else None


def shipped_tokenizer(path: str) -> Path:
    """A tokenizer folder named in the demo config: as given, else relative to the project root (where the
    shipped one lives); a one-line InputError when it is not a tokenizer checkpoint."""
    from lvm_base.config import project_path
    from lvm_base.errors import InputError

    p = project_path(path)
    if not ((p / "config.json").is_file() and (p / "model.safetensors").is_file()):
        raise InputError(f"{p}: not a tokenizer checkpoint (config.json + model.safetensors); "
                         f"tokenizer_checkpoint=null or --train-tokenizer trains one")
    return p
