"""The suite's tasks, their metrics and decodings, and `SuiteConfig` (what one run of the suite does).

An analogy episode fills one context (lvm/tokens.py): MAX_SHOTS example pairs, the query, its answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lvm.generate.sampling import SUITE, SUITE_TASK_TEMPERATURE
from lvm.tokens import IMAGES_PER_CONTEXT
from lvm_base.errors import InputError
from lvm_base.validate import NON_NEGATIVE, POSITIVE, SEED, above, at_least, between, checks, each, optional

SEQUENTIAL = ("next_view", "next_frame")
ANALOGY = ("segmentation", "depth", "colorization", "inpainting")
TASKS = SEQUENTIAL + ANALOGY
# task -> (main metric, higher is better)
# Segmentation is judged by foreground IoU (object vs background), the paper's figure; mIoU over the
# labels the prompt shows is reported beside it.
METRIC = {"next_view": ("psnr", True), "next_frame": ("psnr", True), "segmentation": ("fg_iou", True),
          "depth": ("abs_rel", False), "colorization": ("psnr", True), "inpainting": ("hole_psnr", True)}
BASELINES = ("copy_last", "copy_last_answer", "mean_image")
SEG_CLASSES = 8
DECODINGS = ("greedy", "sample", "mean")

MAX_SHOTS = (IMAGES_PER_CONTEXT - 2) // 2  # example pairs that fit one context beside the query and its answer
QUERY = 2 * MAX_SHOTS                      # index of the query in an analogy episode; its answer is the last image
MAX_CONTEXT = IMAGES_PER_CONTEXT - 1       # context frames of a sequential task: the target takes the last slot


# Ranges (lvm_base.validate); which tasks, shots and decodings exist __post_init__ checks.
@dataclass
@checks(episodes=POSITIVE, shots=each(POSITIVE), context=POSITIVE, seed=SEED, samples=POSITIVE,
        temperature=at_least(0.0), task_temperature=each(at_least(0.0)), top_k=NON_NEGATIVE,
        top_p=between(0.0, 1.0, open_lo=True), threads=NON_NEGATIVE, grid_rows=NON_NEGATIVE,
        max_minutes=optional(above(0)))
class SuiteConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    episodes: int = 8                 # held-out episodes per task
    shots: list[int] = field(default_factory=lambda: [1, 2, 3, 5, 7])  # analogies; metrics at the largest
    context: int = 7                  # frames shown for next view / next frame (curve over 1..context)
    seed: int = 1234                  # episodes depend on this only (same data for every model)
    # How each task's prediction is decoded: greedy | sample (one sample) | mean (the pixel mean of `samples`
    # samples: the model's estimate of the expected image, which PSNR and abs-rel reward; a single sharp
    # guess at an uncertain colour or pose is penalised twice, once for the missing truth and once for the
    # wrong detail). Segmentation stays greedy: a mean of label maps blends colours that are not labels.
    decoding: dict = field(default_factory=lambda: {t: "greedy" if t == "segmentation" else "mean" for t in TASKS})
    # samples averaged by "mean": the error of the estimate's own noise falls as 1/samples; 16 still pays
    # over 8 on the demo's model (docs/results.md), while each sample costs a decoded image
    samples: int = 16
    # The sampling of "sample" and "mean": the suite's own, declared (and explained) with every other
    # sampling default in lvm/generate/sampling.py: nucleus sampling (top-p 0.9, no top-k), temperature 1
    # unless task_temperature names the task (inpainting 0.7)
    temperature: float = SUITE.temperature
    task_temperature: dict = field(default_factory=lambda: dict(SUITE_TASK_TEMPERATURE))
    top_k: int = SUITE.top_k
    top_p: float = SUITE.top_p
    device: str = "auto"              # where the model computes (lvm_base.hardware.resolve); saved resolved
    precision: str = "auto"           # auto | fp32 | bf16 | fp16 of generation and perplexity; saved resolved
    threads: int = 1                  # CPU threads while decoding token by token (0 = leave torch's setting)
    speculative: bool = True          # speculative decoding where it pays (same greedy output and distribution)
    grid_rows: int = 3                # episodes drawn per task grid
    # A wall budget for one model's suite: each task gets an equal share of the minutes left when it starts
    # and draws episodes while the next one still fits its share (at least one each); a result's "episodes"
    # says how many ran. None = all `episodes`.
    max_minutes: float | None = None
    # LPIPS of colorization (tokenizer/lpips.py, local files only): torchvision VGG16 state dict + the
    # LPIPS linear layers; without them the column says n/a
    lpips_vgg: str | None = None
    lpips_lin: str | None = None

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise InputError(f"unknown task(s) {bad}; valid: {', '.join(TASKS)}")
        self.shots = sorted(set(int(s) for s in self.shots))
        if not self.shots or self.shots[0] < 1 or self.shots[-1] > MAX_SHOTS:
            raise InputError(f"shots must be between 1 and {MAX_SHOTS} (k pairs + query + answer <= "
                             f"{IMAGES_PER_CONTEXT} images), got {self.shots}")
        if not 1 <= self.context <= MAX_CONTEXT:
            raise InputError(f"context must be 1..{MAX_CONTEXT} frames, got {self.context}")
        from lvm_base.hardware import PRECISIONS

        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        bad = {t: m for t, m in self.decoding.items() if t not in TASKS or m not in DECODINGS}
        if bad:
            raise InputError(f"decoding {bad}: tasks are {', '.join(TASKS)}; modes are {', '.join(DECODINGS)}")
        bad = {t: v for t, v in self.task_temperature.items() if t not in TASKS}
        if bad:
            raise InputError(f"task_temperature {bad}: tasks are {', '.join(TASKS)}")

    def temperature_of(self, task: str) -> float:
        return float(self.task_temperature.get(task, self.temperature))

    def decode_mode(self, task: str) -> str:
        return self.decoding.get(task, "greedy")
