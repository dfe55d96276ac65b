"""`lvm demo`: the whole system end to end on one machine, as a sequence of resumable stages.

    cfg = load_config(DemoConfig, None, QUICK if quick else [])
    summary = run_demo(cfg)            # -> runs/demo/report.md

Stages (each writes `OUT/stages/<name>.json` with its wall time when it finishes; a rerun skips finished
stages, `fresh=True` redoes everything; stages that are themselves resumable continue where a kill left them):

    data       built-in renderer -> image shards (training objects only)        OUT/work/images
    tokenizer  train the small VQGAN config on those images                     OUT/tokenizer (+ work/tokenizer-run)
    tokenize   image shards -> token shards                                      OUT/work/tokens
    train      the tiny LLaMA on the token shards                               OUT/model (+ work/lvm-run)
    prompts    rotation / video continuation and two analogies, held-out        OUT/prompts/*.png
    eval       the in-context task suite (lvm.eval.tasks), held-out              OUT/eval/
    report     loss curves + everything above                                   OUT/report.md

`OUT/model` (HF Llama directory) and `OUT/tokenizer` are what `lvm prompt` and `lvm eval tasks` use by
default (`demo_checkpoints()`).
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from lvm.checkpoints import DEMO_OUT, demo_checkpoints, load_pair

STAGES = ("data", "tokenizer", "tokenize", "train", "prompts", "eval", "report")


@dataclass
class DemoConfig:
    out: str = str(DEMO_OUT)
    seed: int = 0
    workers: int = 2                        # data-building processes
    budget_minutes: float = 20.0            # reported against; stages are sized to fit it on a 2-core CPU
    # data: a data config (built-in source first) + how many sequences to render
    data: str = "configs/data/demo.yaml"
    sequences: int = 400
    image_size: int = 128
    # annotation tasks of the built-in source's pairs (boxes/keypoints left out: not evaluated here)
    tasks: list[str] = field(default_factory=lambda: ["segmentation", "depth", "normals", "edges",
                                                      "colorization", "inpainting"])
    # tokenizer: a tokenizer training config + overrides; stops at whichever comes first
    tokenizer: str = "configs/tokenizer/small-128-f8.yaml"
    # 64 px crops: a step costs a quarter of a 128 px one, so the tokenizer sees 4x more images in its
    # budget (9-10 dB after 4.5 min of 128 px steps; ~18 dB with crops on one core). Batch 8: in a fixed
    # time, more steps beat bigger batches here. The config's colour shortcut (color_skip) is what keeps
    # object colour: without it seg answers came back gray until step ~1400; with it their reconstruction
    # mIoU is ~0.6 by step 200, so 4 minutes (~770 steps) suffice and the rest goes to the transformer.
    # K = 1024: on this little data a smaller codebook is better used, and the transformer's softmax is
    # 8x smaller.
    tokenizer_overrides: list[str] = field(default_factory=lambda: [
        "data.crop=64", "batch_size=8", "model.codebook_size=1024", "lr=1e-3", "min_lr=1e-4",
        "warmup_steps=30"])
    tokenizer_steps: int = 3000             # at most; fewer when a timing probe says they do not fit:
    tokenizer_minutes: float = 4.0          # the stage's time budget (also a hard stop)
    # transformer: a train config + overrides (its codebook size is always set to the tokenizer's)
    train: str = "configs/train/tiny.yaml"
    # One 4096-token row per optimizer step: in a budget of a few hundred steps, twice the updates of the
    # config's two-row steps. lr 2e-3: at 425 steps the grid-prior model's loss 1.85 vs 1.94 at 1e-3, and
    # a lower target perplexity on all six tasks.
    train_overrides: list[str] = field(default_factory=lambda: ["tokens_per_step=4096", "lr=2e-3",
                                                                "min_lr=2e-4"])
    train_steps: int = 2000                 # at most; fewer when the timing probe says they do not fit
    train_minutes: float = 10.0             # the transformer stage's time budget (probe and saving included)
    # prompting and evaluation on held-out objects
    prompt_candidates: int = 2              # sampled candidates shown next to the greedy answer
    eval_episodes: int = 4
    shots: list[int] = field(default_factory=lambda: [1, 3, 7])
    context: int = 7
    # Where and in what precision every stage computes (tokenizer.common.hardware.resolve): auto = this rank's GPU,
    # else MPS, else CPU; bf16 where the hardware computes it natively, fp16 on pre-Ampere GPUs, else fp32.
    # Each stage's own overrides (tokenizer_overrides, train_overrides) still win. demo_config.yaml records
    # what auto resolved to.
    device: str = "auto"
    precision: str = "auto"


# `--quick`: a smoke run of every stage in about three minutes; quality is not expected.
QUICK = ["sequences=16", "tokenizer_steps=20", "tokenizer_minutes=0.5", "train_steps=4", "train_minutes=1",
         "train_overrides=[tokens_per_step=4096,warmup_steps=2,save_every=4,log_every=1]", "eval_episodes=1",
         "shots=[1,3]", "context=3", "prompt_candidates=1", "budget_minutes=3"]

# Seconds per unit of work on a 2-core CPU, used only to print an estimate before each stage (the
# training stages size themselves by a timing probe to 90% of their minutes). From the full demo run on an
# idle 2-core AMD EPYC (Zen4, bf16). Here they are scaled by the tokenizer probe against its 0.3 s/step
# (`Demo.speed_factor`), and tokenize / eval are estimated from a short timing of their own work once
# their inputs exist (`Demo.estimate`).
EST = {"data_per_seq": 0.06, "tokenizer_per_step": 0.3, "tokenize_per_image": 0.011, "train_per_row": 1.2,
       "prompts": 36.0, "eval_per_episode": 4.8, "report": 1.0}
PLANNED_SHARE = 0.9  # of a training stage's minutes: the rest is for data loading, logging, checkpoints
BUDGET_SHARE = 0.95  # of the demo's budget the stages plan to fill: the estimates of the later stages are rough


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


class Demo:
    def __init__(self, cfg: DemoConfig, progress: bool = True, log=print):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.out = Path(cfg.out)
        self.work = self.out / "work"
        self.model_dir, self.tok_dir = demo_checkpoints(self.out)
        self._probed: dict = {}  # seconds per unit of work measured on this machine in this run

    # ---- stage bookkeeping ----
    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def outputs(self, stage: str) -> list[Path]:
        w, o = self.work, self.out
        return {"data": [w / "images"], "tokenizer": [w / "tokenizer-run", w / "plan-tokenizer.json", self.tok_dir],
                "tokenize": [w / "tokens"], "train": [w / "lvm-run", w / "plan-train.json", self.model_dir],
                "prompts": [o / "prompts"], "eval": [o / "eval"],
                "report": [o / "report.md", o / "figures"]}[stage]

    def resolve_plan(self):
        """Resolve the demo's device/precision once (one warning for an emulated precision) and write the
        result into the config, so every stage gets the same explicit choice and demo_config.yaml records it."""
        from tokenizer.common.hardware import resolve

        plan = resolve(self.cfg.device, self.cfg.precision, "training")
        self.cfg.device, self.cfg.precision = plan.device, plan.precision
        return plan

    def speed_factor(self) -> float:
        """This machine's speed relative to the one EST was measured on: the tokenizer stage's probe (its
        plan, made now if not made yet) over the 0.3 s/step it read there."""
        if "factor" not in self._probed:
            sec = self._plan_seconds("tokenizer")
            if sec is None:
                tc = self.tokenizer_config()
                sec = self.planned_steps("tokenizer", tc.max_steps, self.cfg.tokenizer_minutes,
                                         lambda: _probe_tokenizer(tc))["seconds_per_step"]
            self._probed["factor"] = max(sec, 1e-6) / EST["tokenizer_per_step"]
        return self._probed["factor"]

    def estimate(self, stage: str, probe: bool = True) -> float:
        """Seconds `stage` should take here; `probe=False` skips the timings of a stage's own work."""
        c = self.cfg
        if stage == "data":  # rendering (numpy) does not depend on the compute precision
            return c.sequences * EST["data_per_seq"] / max(1, c.workers)
        if stage == "tokenizer":
            per_step = self._plan_seconds("tokenizer") or EST["tokenizer_per_step"] * self.speed_factor()
            return min(c.tokenizer_steps * per_step, c.tokenizer_minutes * 60 * PLANNED_SHARE)
        if stage == "train":
            tc = self.train_config()
            rows = max(1, tc.tokens_per_step // (tc.seq_len or tc.model.max_position_embeddings))
            per_step = self._plan_seconds("train") or rows * EST["train_per_row"] * self.speed_factor()
            return min(c.train_steps * per_step, c.train_minutes * 60 * PLANNED_SHARE)
        if stage == "tokenize":
            per_image = probe and self._probe_tokenize()
            return self.n_images() * (per_image or EST["tokenize_per_image"] * self.speed_factor())
        if stage == "eval":
            n_tasks = 6
            per_episode = probe and self._probe_eval()
            return c.eval_episodes * n_tasks * (per_episode or EST["eval_per_episode"] * self.speed_factor())
        return EST[stage] * (self.speed_factor() if stage == "prompts" else 1.0)

    def _plan_seconds(self, stage: str) -> float | None:
        path = self.work / f"plan-{stage}.json"
        return json.loads(path.read_text())["seconds_per_step"] if path.is_file() else None

    def n_images(self) -> int:
        """Images the data stage wrote (its record), else the usual ~14 per sequence."""
        m = self.marker("data")
        if m.is_file():
            return int(json.loads(m.read_text()).get("info", {}).get("images") or self.cfg.sequences * 14)
        return self.cfg.sequences * 14

    def _probe_tokenize(self) -> float | None:
        """Seconds per image of encoding with the trained tokenizer on this machine, in the demo's precision."""
        if "tokenize" not in self._probed and (self.tok_dir / "model.safetensors").is_file():
            self._probed["tokenize"] = _probe_encode(self.tok_dir, self.cfg)
        return self._probed.get("tokenize")

    def _probe_eval(self) -> float | None:
        """Seconds of one evaluation episode: the suite itself on one episode of one task."""
        if "eval" not in self._probed and (self.model_dir / "config.json").is_file() \
                and (self.tok_dir / "model.safetensors").is_file():
            self._probed["eval"] = _probe_eval_episode(self.model_dir, self.tok_dir, self.suite_config())
        return self._probed.get("eval")

    def run(self, fresh: bool = False, stages=STAGES) -> dict:
        from tokenizer.common.config import config_to_dict, save_config

        self.out.mkdir(parents=True, exist_ok=True)
        if fresh:
            for st in stages:
                self.marker(st).unlink(missing_ok=True)
                for p in self.outputs(st):
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
        from tokenizer.common.hardware import detect

        plan = self.resolve_plan()
        self.log(f"plan: device {plan.device}, precision {plan.precision}"
                 f"{'' if plan.requested[1] == 'auto' else ' (asked)'}; CPU {detect().cpu_summary()}")
        save_config(self.cfg, self.out, "demo_config.yaml")
        total_est = sum(self.estimate(s, probe=False) for s in STAGES)
        self.log(f"lvm demo -> {self.out}  (rough estimate {_fmt_s(total_est)} on this machine; "
                 f"budget {self.cfg.budget_minutes:g} min)")
        times = {}
        for i, st in enumerate(STAGES):
            m = self.marker(st)
            if st not in stages:
                continue
            if m.is_file() and st != "report":
                rec = json.loads(m.read_text())
                times[st] = rec
                self.log(f"[{i + 1}/{len(STAGES)}] {st}: done before ({_fmt_s(rec['seconds'])}), skipped "
                         f"(--fresh to redo)")
                changed = sorted(k for k, v in config_to_dict(self.cfg).items() if rec.get("config", {}).get(k, v) != v)
                if changed:
                    self.log(f"    note: {', '.join(changed)} changed since that run; --fresh applies them")
                continue
            est = self.estimate(st)
            self.log(f"[{i + 1}/{len(STAGES)}] {st}: estimated ~{_fmt_s(est)}")
            t0 = time.perf_counter()
            info = getattr(self, f"stage_{st}")() or {}
            dt = time.perf_counter() - t0
            rec = {"stage": st, "seconds": round(dt, 2), "estimate_seconds": round(est, 1), "info": info,
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "config": config_to_dict(self.cfg)}
            times[st] = rec
            if st == "report":
                continue
            from tokenizer.common.files import atomic_write_text

            m.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(m, json.dumps(rec, indent=1))
            self.log(f"[{i + 1}/{len(STAGES)}] {st}: {_fmt_s(dt)}")
        return times

    # ---- configs of the underlying tools ----
    def data_config(self):
        from data_builders.build import DataConfig
        from tokenizer.common.config import load_config

        c = self.cfg
        dc = load_config(DataConfig, c.data, [f"out={self.work / 'images'}", f"seed={c.seed}",
                                              f"image_size={c.image_size}"])
        if not dc.sources or dc.sources[0].type != "builtin":
            from tokenizer.common.errors import InputError

            raise InputError(f"{c.data}: the demo needs a data config whose first source is the built-in renderer")
        dc.sources[0].count = c.sequences
        dc.sources[0].tasks = list(c.tasks)
        # the data config weighs its tasks; a demo run that leaves some out keeps the others' weights
        dc.sources[0].task_weights = {t: w for t, w in dc.sources[0].task_weights.items() if t in c.tasks}
        dc.sources[0].split = "train"  # training objects only: held-out ones are for prompts and evaluation
        return dc

    def tokenizer_config(self):
        from tokenizer.common.config import load_config
        from tokenizer.train_config import TokenizerTrainConfig

        c = self.cfg
        # the demo's device/precision first: an explicit one in the stage's overrides wins
        return load_config(TokenizerTrainConfig, c.tokenizer, [f"device={c.device}", f"precision={c.precision}"]
                           + list(c.tokenizer_overrides) + [
            f"data.path={self.work / 'images'}/*.tar", f"out_dir={self.work / 'tokenizer-run'}",
            f"max_steps={c.tokenizer_steps}", f"max_minutes={c.tokenizer_minutes}", f"seed={c.seed}"])

    def train_config(self):
        from tokenizer.common.config import load_config
        from lvm.train.config import TrainConfig

        c = self.cfg
        return load_config(TrainConfig, c.train, [f"device={c.device}", f"precision={c.precision}"]
                           + list(c.train_overrides) + [
            f"data.shards={self.work / 'tokens'}", f"out_dir={self.work / 'lvm-run'}",
            f"max_steps={c.train_steps}", f"seed={c.seed}",
            f"model.codebook_size={self.tokenizer_config().model.codebook_size}"])

    # ---- fitting steps into a stage's time budget ----
    def planned_steps(self, stage: str, max_steps: int, minutes: float, probe) -> dict:
        """Steps for a training stage: `max_steps`, or fewer if `probe()` (seconds per step, measured on
        this machine now) says they do not fit `minutes`. Decided once per run (kept in work/plan-<stage>.json)
        so a resumed run keeps its learning-rate schedule."""
        from tokenizer.common.files import atomic_write_text

        path = self.work / f"plan-{stage}.json"
        if path.is_file():
            return json.loads(path.read_text())
        sec = probe()
        fit = int(minutes * 60 * PLANNED_SHARE / max(sec, 1e-9))
        plan = {"steps": max(2, min(max_steps, fit)), "max_steps": max_steps, "seconds_per_step": round(sec, 3),
                "minutes": minutes}
        if plan["steps"] < max_steps:
            self.log(f"{stage}: {sec:.2f} s/step measured now; {plan['steps']} of {max_steps} steps fit "
                     f"the {minutes:g}-minute budget")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))
        return plan

    # ---- stages ----
    def stage_data(self):
        from data_builders.build import build
        from tokenizer.common.config import save_config

        dc = self.data_config()
        Path(dc.out).mkdir(parents=True, exist_ok=True)
        save_config(dc, dc.out, "data_config.yaml")
        res = build(dc, workers=self.cfg.workers, rank=0, world=1, progress=self.progress, log=self.log)
        return {k: res[k] for k in ("sequences", "images", "shards_built", "shards_skipped")}

    def stage_tokenizer(self):
        from tokenizer.common.config import save_config
        from tokenizer.train import Trainer

        tc = self.tokenizer_config()
        if tc.model.resolution != self.cfg.image_size:
            from tokenizer.common.errors import InputError

            raise InputError(f"tokenizer resolution {tc.model.resolution} != demo image_size {self.cfg.image_size}")
        plan = self.planned_steps("tokenizer", tc.max_steps, self.cfg.tokenizer_minutes, lambda: _probe_tokenizer(tc))
        tc.max_steps = plan["steps"]
        res = Trainer(tc, log=self.log, progress=self.progress).train(resume=True)
        run = Path(tc.out_dir)
        self.tok_dir.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            _copy_atomic(run / f, self.tok_dir / f)
        return {"steps": res["step"], "final_loss": round(res["last_loss"], 4) if res["last_loss"] else None,
                "stop": res["stop"], "plan": plan}

    def stage_tokenize(self):
        from data_builders.encode import tokenize

        c = self.cfg
        res = tokenize(str(self.work / "images"), self.tok_dir, self.work / "tokens", batch_size=64,
                       device=c.device, precision=c.precision, rank=0, world=1, progress=self.progress,
                       log=self.log)
        return {k: res[k] for k in ("sequences", "images", "images_per_s")}

    def stage_train(self):
        from lvm.train.loop import list_checkpoints, train

        tc = self.train_config()
        plan = self.planned_steps("train", tc.max_steps, self.train_minutes(),
                                  lambda: _probe_transformer(tc, self.work / "probe-train"))
        tc.max_steps = plan["steps"]
        summary = train(tc, resume=True, progress=self.progress)
        last = list_checkpoints(tc.out_dir)[-1]
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(last.iterdir()):
            if f.is_file() and f.name.endswith((".json", ".safetensors")) and not f.name.startswith("trainer_state"):
                _copy_atomic(f, self.model_dir / f.name)
        losses = summary["losses"]
        return {"steps": summary["step"], "final_loss": round(losses[max(losses)], 4) if losses else None,
                "checkpoint": str(last), "plan": plan}

    def train_minutes(self) -> float:
        """The transformer stage's minutes: its share, or less where the stages before it took longer than
        planned here and the stages after it would then pass the demo's budget (a slower machine)."""
        c = self.cfg
        spent = sum(json.loads(self.marker(st).read_text())["seconds"] for st in STAGES[:STAGES.index("train")]
                    if self.marker(st).is_file())
        after = sum(self.estimate(st, probe=False) for st in STAGES[STAGES.index("train") + 1:])
        left = (c.budget_minutes * 60 * BUDGET_SHARE - spent - after) / 60
        if left < c.train_minutes:
            self.log(f"train: {_fmt_s(spent)} spent and ~{_fmt_s(after)} to come leave {max(left, 1.0):.1f} of "
                     f"its {c.train_minutes:g} minutes within the {c.budget_minutes:g}-minute budget")
        return max(1.0, min(c.train_minutes, left))

    def stage_prompts(self):
        """Held-out prompts: rotation and video continuation (3 new images), two analogies (greedy + sampled)."""
        import torch

        from lvm.eval import tasks as te
        from lvm.generate.engine import Engine, Sampling
        from tokenizer.image_io import make_grid, save_png

        c = self.cfg
        model, tok, _ = load_pair(self.model_dir, self.tok_dir, c.device, c.precision)
        engine = Engine(model, precision=c.precision, device=c.device, max_batch=4)
        n_new, ctx, shots = 3, c.context, c.shots[-1]
        suite = te.SuiteConfig(tasks=["next_view", "next_frame", "segmentation", "colorization"], episodes=1,
                               shots=[shots], context=ctx + n_new - 1, seed=c.seed + 777, device=c.device,
                               precision=c.precision)
        eps = te.make_episodes(suite, tok.resolution)
        out = self.out / "prompts"
        files = {}
        threads = te.cpu_threads(1)
        for task, (ep,) in eps.items():
            if task in te.SEQUENTIAL:
                prompt, truth = ep.images[:ctx], ep.images[ctx:ctx + n_new]
                with threads:
                    gen = engine.generate(tok.encode_images(prompt), n_new=n_new, sampling=Sampling(temperature=0))
                preds = tok.decode_to_pil(gen.images[0])
                rows = [prompt, preds, truth]
                labels = ["prompt", "greedy", "truth"]
                cols = [f"in {i + 1}" for i in range(ctx)]
            else:
                prompt, truth = ep.prompt(shots), ep.target
                codes = tok.encode_images(prompt)
                with threads:
                    greedy = engine.generate(codes, sampling=Sampling(temperature=0))
                    sampled = engine.generate(codes, candidates=c.prompt_candidates,
                                              sampling=Sampling(temperature=1.0, top_k=50, seed=c.seed))
                preds = tok.decode_to_pil(torch.cat([greedy.images[:, 0], sampled.images[:, 0]]))
                rows = [prompt, preds, [truth]]
                labels = ["prompt", "greedy|sampled", "truth"]
                cols = [f"in {i + 1}" for i in range(len(prompt))]
            path = save_png(make_grid(rows, labels=labels, col_labels=cols), out / f"{task}.png")
            files[task] = str(path.relative_to(self.out))
        return {"files": files}

    def suite_config(self):
        from lvm.eval import tasks as te

        c = self.cfg
        return te.SuiteConfig(episodes=c.eval_episodes, shots=c.shots, context=c.context, device=c.device,
                              precision=c.precision)

    def stage_eval(self):
        from lvm.commands.eval_tasks import run_suite
        from tokenizer.common.config import save_config

        suite = self.suite_config()
        out = self.out / "eval"
        out.mkdir(parents=True, exist_ok=True)
        save_config(suite, out, "suite_config.yaml")
        rep = run_suite([(self.model_dir, self.tok_dir)], ["demo"], suite, out, progress=self.progress,
                        log=self.log)
        self.log(rep["table"])
        return {"checks": rep["checks"]["demo"]}

    def stage_report(self):
        from tokenizer.common.files import atomic_write_text

        figs = self.out / "figures"
        figs.mkdir(parents=True, exist_ok=True)
        tok_log = self.work / "tokenizer-run" / "train_log.jsonl"
        lm_log = self.work / "lvm-run" / "metrics.jsonl"
        plots = []
        if tok_log.is_file():
            plots.append(("tokenizer training loss", _plot_log(tok_log, ["loss", "rec", "q"], figs / "tokenizer_loss.png",
                                                              "VQGAN tokenizer")))
        if lm_log.is_file():
            plots.append(("transformer training loss", _plot_log(lm_log, ["loss", "eval/loss"],
                                                                figs / "transformer_loss.png", "tiny LLaMA")))
        stages = {}
        for st in STAGES[:-1]:
            m = self.marker(st)
            if m.is_file():
                stages[st] = json.loads(m.read_text())
        total = sum(r["seconds"] for r in stages.values())
        c = self.cfg
        md = ["# lvm demo report\n",
              f"Everything below was produced by `lvm demo` on this machine: built-in renderer data "
              f"({c.sequences} sequences at {c.image_size} px, training objects only), the tokenizer config "
              f"`{c.tokenizer}`, the transformer config `{c.train}`, then prompts and the task suite on "
              f"held-out objects, computed on {c.device} in {c.precision}. Resolved config: "
              f"`demo_config.yaml`.\n",
              f"Checkpoints: `{self.model_dir.relative_to(self.out)}/` (HF Llama) and "
              f"`{self.tok_dir.relative_to(self.out)}/` (tokenizer); `lvm prompt` and `lvm eval tasks` use "
              f"them by default.\n",
              "## Stages\n", "| stage | wall time | estimate | notes |", "|---|---|---|---|"]
        for st, r in stages.items():
            info = r.get("info", {})
            note = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("sequences", "images", "steps", "final_loss"))
            if "plan" in info:
                pl = info["plan"]
                note += (f" (planned {pl['steps']} of max {pl['max_steps']}: {pl['seconds_per_step']} s/step "
                         f"measured for a {pl['minutes']:g}-min budget)")
            md.append(f"| {st} | {_fmt_s(r['seconds'])} | ~{_fmt_s(r.get('estimate_seconds', 0))} | {note} |")
        md.append(f"| **total** | **{_fmt_s(total)}** | | budget {c.budget_minutes:g} min: "
                  f"{'within' if total <= c.budget_minutes * 60 else 'OVER'} |\n")
        if plots:
            md.append("## Training\n")
            md += [f"![{t}]({p.relative_to(self.out)})\n" for t, p in plots]
        prompts = self.out / "prompts"
        if prompts.is_dir():
            md.append("## Prompts on held-out objects\n")
            md.append("Rows: the prompt, the model's answer (greedy; for analogies also sampled candidates at "
                      "temperature 1, top-k 50), the truth.\n")
            for p in sorted(prompts.glob("*.png")):
                md.append(f"### {p.stem}\n\n![{p.stem}]({p.relative_to(self.out)})\n")
        ev = self.out / "eval" / "tasks.md"
        if ev.is_file():
            text = ev.read_text().replace("](tasks.png)", "](eval/tasks.png)").replace("](ppl.png)", "](eval/ppl.png)")
            md.append("## Task evaluation (held-out objects)\n")
            md.append(text.split("\n", 1)[1])
            grids = sorted((self.out / "eval" / "grids").glob("*.png"))
            if grids:
                md.append("Prompt | prediction | truth for the first episodes of each task:\n")
                md += [f"![{g.stem}]({g.relative_to(self.out)})\n" for g in grids]
        atomic_write_text(self.out / "report.md", "\n".join(md) + "\n")
        return {"total_seconds": round(total, 1)}


def _seconds_per_call(fn, reps: int = 1, warmup: int = 1) -> float:
    """Median seconds of `reps` calls after `warmup` untimed ones (allocations, kernels, lazy init)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _probe_tokenizer(tc) -> float:
    """Seconds of one tokenizer training step (forward + L1 + backward on a random batch) on this machine,
    on the device and in the precision its training run resolves to."""
    import torch

    from tokenizer.common.hardware import synchronize
    from tokenizer.train import training_model, training_plan

    plan = training_plan(tc)
    torch.manual_seed(0)
    model = training_model(tc, plan).to(plan.device)  # the trainer's own layout for this precision
    r = tc.data.crop or tc.model.resolution
    x = (torch.rand(tc.batch_size * tc.grad_accum, 3, r, r) * 2 - 1).to(plan.device)

    def step():
        with plan.autocast():
            xrec, q, _ = model(x)
        ((x - xrec.float()).abs().mean() + q).backward()
        synchronize(plan.device)

    # oneDNN builds its backward primitives over the first calls: one warm-up read 0.46 s/step under the
    # AVX2 simulation for steps that then ran at 0.36 s, and the stage planned a fifth fewer steps than fit.
    return _seconds_per_call(step, reps=3, warmup=2)


def _probe_encode(tok_dir: Path, cfg: DemoConfig, n: int = 16) -> float:
    """Seconds per image of `tokenize`'s encoding (random images of the demo's size, its device/precision)."""
    import numpy as np
    from PIL import Image

    from tokenizer import load_tokenizer
    from tokenizer.common.hardware import synchronize

    tok = load_tokenizer(tok_dir, device=cfg.device, precision=cfg.precision)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (cfg.image_size, cfg.image_size, 3), dtype=np.uint8))
              for _ in range(n)]

    def encode():
        tok.encode_images(images, batch_size=n)
        synchronize(cfg.device)

    return _seconds_per_call(encode) / n


def _probe_eval_episode(model_dir: Path, tok_dir: Path, suite) -> float:
    """Seconds of one episode of the task suite (a mean-decoded task: most of the six are), run for real."""
    import dataclasses

    from lvm.eval import tasks as te

    one = dataclasses.replace(suite, tasks=["colorization"], episodes=1, grid_rows=0)
    model, tok, _ = load_pair(model_dir, tok_dir, suite.device, suite.precision)
    episodes = te.make_episodes(one, tok.resolution)
    t0 = time.perf_counter()
    te.evaluate_model(model, tok, episodes, one, progress=False, log=lambda *a: None)
    return time.perf_counter() - t0


def _probe_transformer(tc, scratch: Path) -> float:
    """Seconds per optimizer step of `lvm train` itself (packing, varlen attention, optimizer) on this
    machine now: five real steps into a scratch run, timed from its metrics; the median step after the
    first (warm-up). With only two timed steps a fresh venv's probe read 1.83 s/step for steps that then
    ran at ~1.45 s, and the stage planned a fifth fewer steps than fit.

    A bare forward/backward of one row underestimated the real step ~3x on this machine.
    """
    import copy

    from lvm.train.loop import train

    shutil.rmtree(scratch, ignore_errors=True)
    pc = copy.deepcopy(tc)
    pc.out_dir, pc.max_steps, pc.log_every, pc.save_every, pc.keep_last = str(scratch), 5, 1, 10**9, 1
    pc.data.eval_shards = None
    pc.peak_tflops = pc.peak_tflops or 1.0  # skip the matmul-peak measurement: MFU is not needed here
    try:
        train(pc, resume=False, progress=False)
        recs = [json.loads(ln) for ln in (scratch / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        recs = [r for r in recs if "tokens_per_s" in r and r["tokens_per_s"] > 0]
        secs = [(b["tokens_seen"] - a["tokens_seen"]) / b["tokens_per_s"] for a, b in zip(recs, recs[1:])]
        return statistics.median(secs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _copy_atomic(src: Path, dst: Path):
    from tokenizer.common.files import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _plot_log(path: Path, keys: list[str], out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {k: ([], []) for k in keys}
    for ln in path.read_text().splitlines():
        if not ln.strip():
            continue
        rec = json.loads(ln)
        for k in keys:
            if isinstance(rec.get(k), (int, float)):
                series[k][0].append(rec["step"])
                series[k][1].append(rec[k])
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k, (x, y) in series.items():
        if x:
            ax.plot(x, y, "o-" if len(x) < 20 else "-", label=k, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
