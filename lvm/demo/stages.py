"""The `Demo`: the stages of `lvm demo` in order, each skipped when its record says it finished, with the
time estimates and step plans that fit them into the demo's budget.

    Demo(demo_config(quick=True)).run()      # -> runs/demo-quick/report.md, stage records in stages/

The stage methods configure and call the project's own tools (data build, tokenizer training, tokenizing,
transformer training, the task suite); the prompts and report stages are lvm/demo/prompts.py and
lvm/demo/report.py, the timing probes lvm/demo/probes.py.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from lvm.checkpoints import demo_checkpoints
from lvm.demo import probes
from lvm.demo.config import (BUDGET_SHARE, EST, PLANNED_SHARE, STAGES, TRAIN_RESERVE_S, DemoConfig,
                             after_at_table_speed, demo_config, fmt_s, shipped_tokenizer)


class Demo:
    """One demo run in `cfg.out`: `run()` calls each `stage_<name>` in STAGES order and keeps what it returns
    in the stage's record."""

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
                "tokenize": [w / "tokens"], "train": [w / "lvm-run", self.model_dir],
                "prompts": [w / "prompts", o / "prompts"], "eval": [o / "eval"],
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
        plan, made now if not made yet; a bare probe when the tokenizer is shipped) over EST's
        tokenizer_per_step."""
        if "factor" not in self._probed:
            sec = self._plan_seconds("tokenizer")
            if sec is None:
                tc = self.tokenizer_config()
                if self.cfg.tokenizer_checkpoint:
                    sec = probes.probe_tokenizer(tc)
                else:
                    sec = self.planned_steps("tokenizer", tc.max_steps, self.cfg.tokenizer_minutes,
                                             lambda: probes.probe_tokenizer(tc))["seconds_per_step"]
            self._probed["factor"] = max(sec, 1e-6) / EST["tokenizer_per_step"]
        return self._probed["factor"]

    def estimate(self, stage: str, probe: bool = True) -> float:
        """Seconds `stage` should take here; `probe=False` skips the timings of a stage's own work."""
        c = self.cfg
        if stage == "data":  # rendering (numpy) does not depend on the compute precision
            return c.sequences * EST["data_per_seq"] / max(1, c.workers)
        if stage == "tokenizer":
            if c.tokenizer_checkpoint:
                return 1.0  # a copy of the shipped one
            per_step = self._plan_seconds("tokenizer") or EST["tokenizer_per_step"] * self.speed_factor()
            return min(c.tokenizer_steps * per_step, c.tokenizer_minutes * 60 * PLANNED_SHARE)
        if stage == "train":
            tc = self.train_config()
            rows = max(1, tc.tokens_per_step // (tc.seq_len or tc.model.max_position_embeddings))
            per_step = rows * EST["train_per_row"] * self.speed_factor()
            return min(c.train_steps * per_step, c.train_minutes * 60)
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
            self._probed["tokenize"] = probes.probe_encode(self.tok_dir, self.cfg)
        return self._probed.get("tokenize")

    def _probe_eval(self) -> float | None:
        """Seconds of one evaluation episode: the suite itself on one episode of one task."""
        if "eval" not in self._probed and (self.model_dir / "config.json").is_file() \
                and (self.tok_dir / "model.safetensors").is_file():
            self._probed["eval"] = probes.probe_eval_episode(self.model_dir, self.tok_dir, self.suite_config())
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
        self.log(f"lvm demo -> {self.out}  (rough estimate {fmt_s(total_est)} on this machine; "
                 f"budget {self.cfg.budget_minutes:g} min)")
        times = {}
        for i, st in enumerate(STAGES):
            m = self.marker(st)
            if st not in stages:
                continue
            if m.is_file() and st != "report":
                rec = json.loads(m.read_text())
                times[st] = rec
                self.log(f"[{i + 1}/{len(STAGES)}] {st}: done before ({fmt_s(rec['seconds'])}), skipped "
                         f"(--fresh to redo)")
                changed = sorted(k for k, v in config_to_dict(self.cfg).items() if rec.get("config", {}).get(k, v) != v)
                if changed:
                    self.log(f"    note: {', '.join(changed)} changed since that run; --fresh applies them")
                continue
            est = self.estimate(st)
            self.log(f"[{i + 1}/{len(STAGES)}] {st}: estimated ~{fmt_s(est)}")
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
            self.log(f"[{i + 1}/{len(STAGES)}] {st}: {fmt_s(dt)}")
        return times

    # ---- configs of the underlying tools ----
    def data_config(self):
        from data_builders.config import DataConfig
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
            f"max_steps={c.train_steps}", f"seed={c.seed}", f"model.codebook_size={self.codebook_size()}"])

    def codebook_size(self) -> int:
        """K of the demo's tokenizer: the shipped one's, else the tokenizer training config's."""
        if self.cfg.tokenizer_checkpoint:
            return int(json.loads((shipped_tokenizer(self.cfg.tokenizer_checkpoint) / "config.json")
                                  .read_text())["codebook_size"])
        return self.tokenizer_config().model.codebook_size

    # ---- fitting steps into a stage's time budget ----
    def planned_steps(self, stage: str, max_steps: int, minutes: float, probe) -> dict:
        """Steps for the tokenizer stage: `max_steps`, or fewer if `probe()` (seconds per step, measured on
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
                     f"the {minutes:.1f}-minute budget")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(plan, indent=1))
        return plan

    # ---- stages ----
    def stage_data(self):
        from data_builders.engines import run_build

        dc = self.data_config()
        res = run_build(dc, workers=self.cfg.workers, rank=0, world=1, progress=self.progress, log=self.log)
        return {k: res[k] for k in ("sequences", "images", "shards_built", "shards_skipped")}

    def stage_tokenizer(self):
        if self.cfg.tokenizer_checkpoint:
            return self.copy_shipped_tokenizer()
        from tokenizer.train import Trainer

        tc = self.tokenizer_config()
        if tc.model.resolution != self.cfg.image_size:
            from tokenizer.common.errors import InputError

            raise InputError(f"tokenizer resolution {tc.model.resolution} != demo image_size {self.cfg.image_size}")
        plan = self.planned_steps("tokenizer", tc.max_steps, self.cfg.tokenizer_minutes,
                                  lambda: probes.probe_tokenizer(tc))
        tc.max_steps = plan["steps"]
        res = Trainer(tc, log=self.log, progress=self.progress).train(resume=True)
        run = Path(tc.out_dir)
        self.tok_dir.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors"):
            _copy_atomic(run / f, self.tok_dir / f)
        return {"steps": res["step"], "final_loss": round(res["last_loss"], 4) if res["last_loss"] else None,
                "stop": res["stop"], "plan": plan}

    def copy_shipped_tokenizer(self) -> dict:
        """The tokenizer stage with a shipped tokenizer: check it fits the demo's images, copy it to OUT."""
        from tokenizer.common.errors import InputError

        src = shipped_tokenizer(self.cfg.tokenizer_checkpoint)
        cfg = json.loads((src / "config.json").read_text())
        if cfg.get("resolution") != self.cfg.image_size:
            raise InputError(f"{src / 'config.json'}: tokenizer resolution {cfg.get('resolution')} != demo "
                             f"image_size {self.cfg.image_size} (or train one: --train-tokenizer)")
        self.tok_dir.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "model.safetensors", "README.md"):
            if (src / f).is_file():
                _copy_atomic(src / f, self.tok_dir / f)
        self.log(f"tokenizer: the shipped one, {src} (K = {cfg['codebook_size']}); --train-tokenizer trains one")
        return {"shipped": str(src), "codebook_size": cfg["codebook_size"]}

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
        # The run fits its lr schedule to the minutes by its own measured pace (TrainConfig.max_minutes);
        # the reserve is for setting up the run and saving and copying the last checkpoint.
        minutes = self.train_minutes()
        tc.max_minutes = max(0.5, minutes - TRAIN_RESERVE_S / 60)
        summary = train(tc, resume=True, progress=self.progress)
        last = list_checkpoints(tc.out_dir)[-1]
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for f in sorted(last.iterdir()):
            if f.is_file() and f.name.endswith((".json", ".safetensors", ".md")) and not f.name.startswith("trainer_state"):
                _copy_atomic(f, self.model_dir / f.name)
        losses = summary["losses"]
        pace = summary["seconds_per_step"]
        return {"steps": summary["step"], "final_loss": round(losses[max(losses)], 4) if losses else None,
                "checkpoint": str(last), "plan": {"steps": summary["max_steps"], "max_steps": self.cfg.train_steps,
                                                  "seconds_per_step": round(pace, 3) if pace else None,
                                                  "minutes": round(minutes, 2)}}

    def spent_before(self, stage: str) -> float:
        """Seconds the stages before `stage` took (their markers, kept across resumed runs)."""
        return sum(json.loads(self.marker(st).read_text())["seconds"] for st in STAGES[:STAGES.index(stage)]
                   if self.marker(st).is_file())

    def train_minutes(self) -> float:
        """The transformer stage's minutes: its share, or less where the stages before it took longer than
        planned here and the stages after it would then pass the demo's budget (a slower machine)."""
        c = self.cfg
        spent = self.spent_before("train")
        if self.resolve_plan().device == "cpu":
            # The tokenizer probe's factor does not predict decoding (0.56-1.04 of the table within an hour on
            # one 2-core Zen4; 2.07 on a 2-core Xeon whose prompts and eval then ran 1.3x the table): the
            # stages after training are planned at the table's idle 2-core speed, and the demo's eval fits
            # the minutes that are left (stage_eval), so a slower CPU evaluates fewer episodes instead.
            after = after_at_table_speed(c)
        else:
            after = sum(self.estimate(st, probe=False) for st in STAGES[STAGES.index("train") + 1:])
        left = (c.budget_minutes * 60 * BUDGET_SHARE - spent - after) / 60
        if left < c.train_minutes:
            self.log(f"train: {fmt_s(spent)} spent and ~{fmt_s(after)} to come leave {max(left, 1.0):.1f} of "
                     f"its {c.train_minutes:g} minutes within the {c.budget_minutes:g}-minute budget")
        return max(1.0, min(c.train_minutes, left))

    def stage_prompts(self):
        """Held-out prompts: rotation and video continuation, two analogies (greedy + sampled each)."""
        from lvm.demo.prompts import run_prompts

        return run_prompts(self)

    def suite_config(self):
        from lvm.eval import tasks as te

        c = self.cfg
        return te.SuiteConfig(episodes=c.eval_episodes, shots=c.shots, context=c.context, samples=c.eval_samples,
                              device=c.device, precision=c.precision)

    def stage_eval(self):
        from lvm.eval.tasks import run_suite

        suite = self.suite_config()
        # the minutes the budget leaves after the report's second: a slower machine than the plan's
        # evaluates fewer episodes rather than passing the budget; at least one per task always runs
        left = self.cfg.budget_minutes * 60 * BUDGET_SHARE - self.spent_before("eval") - EST["report"]
        suite.max_minutes = max(left, 1.0) / 60
        self.log(f"eval: {suite.max_minutes:.1f} minutes of the {self.cfg.budget_minutes:g}-minute budget left "
                 f"for up to {suite.episodes} episodes per task")
        out = self.out / "eval"
        rep = run_suite([(self.model_dir, self.tok_dir)], ["demo"], suite, out, progress=self.progress,
                        log=self.log)
        self.log(rep["table"])
        return {"checks": rep["checks"]["demo"]}

    def stage_report(self):
        from lvm.demo.report import write_report

        return write_report(self)


def _copy_atomic(src: Path, dst: Path):
    from tokenizer.common.files import atomic_path

    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def run_demo(path=None, overrides=(), quick: bool = False, fresh: bool = False, progress: bool = True,
             device: str = "auto", precision: str = "auto", print_config: bool = False,
             train_tokenizer: bool = False) -> int:
    """`lvm demo`: resolve the config (`demo_config`; `train_tokenizer`: train one instead of the shipped
    tokenizer), then print it (`print_config`) or run every stage and print how long each took."""
    overrides = (["tokenizer_checkpoint=null"] if train_tokenizer else []) + list(overrides)
    cfg = demo_config(path, overrides, quick, device, precision)
    if print_config:
        from tokenizer.common.config import config_to_yaml

        print(config_to_yaml(cfg), end="")
        return 0
    t0 = time.perf_counter()
    times = Demo(cfg, progress=progress).run(fresh=fresh)
    total = time.perf_counter() - t0
    print("\nstage        seconds")
    for st, r in times.items():
        print(f"{st:<12} {r['seconds']:8.1f}")
    print(f"this run     {total:8.1f}  (budget {cfg.budget_minutes:g} min)")
    print(f"report: {cfg.out}/report.md")
    return 0
