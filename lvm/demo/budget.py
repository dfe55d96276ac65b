"""How `lvm demo` fits its stages into its budget: time estimates per stage (the EST table, scaled by a
timing probe of this machine), the tokenizer stage's step plan, and the transformer stage's minutes.
`Demo` (lvm/demo/stages.py) is a `Budget`."""

from __future__ import annotations

import json

from lvm.demo import probes
from lvm.demo.config import BUDGET_SHARE, EST, PLANNED_SHARE, STAGES, after_at_table_speed, fmt_s


class Budget:
    """The planning half of a `Demo`: needs its cfg, work, marker(), the tool configs and resolve_plan()."""

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

    def planned_steps(self, stage: str, max_steps: int, minutes: float, probe) -> dict:
        """Steps for the tokenizer stage: `max_steps`, or fewer if `probe()` (seconds per step, measured on
        this machine now) says they do not fit `minutes`. Decided once per run (kept in work/plan-<stage>.json)
        so a resumed run keeps its learning-rate schedule."""
        from lvm_base.files import atomic_write_text

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
            # The tokenizer probe's factor does not predict decoding on a CPU (it swings with the load and
            # with the CPU's kind, and decoding does not follow it: docs/results.md), so the stages after
            # training are planned at EST's speed, and the demo's eval fits the minutes that are left
            # (stage_eval): a slower CPU evaluates fewer episodes instead.
            after = after_at_table_speed(c)
        else:
            after = sum(self.estimate(st, probe=False) for st in STAGES[STAGES.index("train") + 1:])
        left = (c.budget_minutes * 60 * BUDGET_SHARE - spent - after) / 60
        if left < c.train_minutes:
            self.log(f"train: {fmt_s(spent)} spent and ~{fmt_s(after)} to come leave {max(left, 1.0):.1f} of "
                     f"its {c.train_minutes:g} minutes within the {c.budget_minutes:g}-minute budget")
        return max(1.0, min(c.train_minutes, left))
