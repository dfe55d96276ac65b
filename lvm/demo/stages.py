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

from lvm.checkpoints import demo_checkpoints, write_tokenizer_record
from lvm.demo import probes
from lvm.demo.budget import Budget
from lvm.demo.config import (BUDGET_SHARE, EST, SHIPPED_COST, STAGES, TRAIN_RESERVE_S, DemoConfig, demo_config,
                             fmt_s, shipped_model, shipped_tokenizer)


class Demo(Budget):
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
        from lvm_base.hardware import resolve

        plan = resolve(self.cfg.device, self.cfg.precision, "training")
        self.cfg.device, self.cfg.precision = plan.device, plan.precision
        return plan

    def run(self, fresh: bool = False, stages=STAGES) -> dict:
        from lvm_base.config import config_to_dict, save_config

        self.out.mkdir(parents=True, exist_ok=True)
        if fresh:
            for st in stages:
                self.marker(st).unlink(missing_ok=True)
                for p in self.outputs(st):
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.exists():
                        p.unlink()
        from lvm_base.hardware import detect

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
            from lvm_base.files import atomic_write_text

            m.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(m, json.dumps(rec, indent=1))
            self.log(f"[{i + 1}/{len(STAGES)}] {st}: {fmt_s(dt)}")
        return times

    # ---- configs of the underlying tools ----
    def data_config(self):
        from data_builders.config import DataConfig
        from lvm_base.config import load_config

        c = self.cfg
        dc = load_config(DataConfig, c.data, [f"out={self.work / 'images'}", f"seed={c.seed}",
                                              f"image_size={c.image_size}"])
        if not dc.sources or dc.sources[0].type != "builtin":
            from lvm_base.errors import InputError

            raise InputError(f"{c.data}: the demo needs a data config whose first source is the built-in renderer")
        dc.sources[0].count = c.sequences
        dc.sources[0].tasks = list(c.tasks)
        # the data config weighs its tasks; a demo run that leaves some out keeps the others' weights
        dc.sources[0].task_weights = {t: w for t, w in dc.sources[0].task_weights.items() if t in c.tasks}
        dc.sources[0].split = "train"  # training objects only: held-out ones are for prompts and evaluation
        return dc

    def tokenizer_config(self):
        from lvm_base.config import load_config
        from tokenizer.train_config import TokenizerTrainConfig

        c = self.cfg
        # the demo's device/precision first: an explicit one in the stage's overrides wins
        return load_config(TokenizerTrainConfig, c.tokenizer, [f"device={c.device}", f"precision={c.precision}"]
                           + list(c.tokenizer_overrides) + [
            f"data.path={self.work / 'images'}/*.tar", f"out_dir={self.work / 'tokenizer-run'}",
            f"max_steps={c.tokenizer_steps}", f"max_minutes={c.tokenizer_minutes}", f"seed={c.seed}"])

    def train_config(self):
        from lvm_base.config import load_config
        from lvm.train.config import TrainConfig

        c = self.cfg
        # the shipped model's held-out tokens, scored as its own run scored them: the report's scaling plot
        held = shipped_model(c) / "heldout_tokens" if shipped_model(c) else None
        heldout = [f"data.eval_shards={held}", f"eval_every={c.heldout_every}", "eval_batches=16"] \
            if held and held.is_dir() else []
        return load_config(TrainConfig, c.train, [f"device={c.device}", f"precision={c.precision}"]
                           + list(c.train_overrides) + heldout + [
            f"data.shards={self.work / 'tokens'}", f"out_dir={self.work / 'lvm-run'}",
            f"max_steps={c.train_steps}", f"seed={c.seed}", f"model.codebook_size={self.codebook_size()}"])

    def codebook_size(self) -> int:
        """K of the demo's tokenizer: the shipped one's, else the tokenizer training config's."""
        if self.cfg.tokenizer_checkpoint:
            return int(json.loads((shipped_tokenizer(self.cfg.tokenizer_checkpoint) / "config.json")
                                  .read_text())["codebook_size"])
        return self.tokenizer_config().model.codebook_size

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
            from lvm_base.errors import InputError

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
        from lvm_base.errors import InputError

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
        write_tokenizer_record(self.model_dir, self.tok_dir)  # its record was relative to the checkpoint
        losses = summary["losses"]
        pace = summary["seconds_per_step"]
        return {"steps": summary["step"], "final_loss": round(losses[max(losses)], 4) if losses else None,
                "checkpoint": str(last), "plan": {"steps": summary["max_steps"], "max_steps": self.cfg.train_steps,
                                                  "seconds_per_step": round(pace, 3) if pace else None,
                                                  "minutes": round(minutes, 2)}}

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
        pairs, names = [(self.model_dir, self.tok_dir)], ["demo"]
        shipped = shipped_model(self.cfg)
        if shipped:  # it runs the episodes the fresh model ran: the budget's share is the fresh model's
            pairs.append((shipped, None))
            names.append(shipped.name)
            suite.max_minutes /= 1 + SHIPPED_COST
        rep = run_suite(pairs, names, suite, out, progress=self.progress, log=self.log)
        self.log(rep["table"])
        return {"checks": rep["checks"]["demo"], "models": names}

    def stage_report(self):
        from lvm.demo.report import write_report

        return write_report(self)


def _copy_atomic(src: Path, dst: Path):
    from lvm_base.files import atomic_path

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
        from lvm_base.config import config_to_yaml

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
