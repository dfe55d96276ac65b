"""The demo's last stage: OUT/report.md with the stage times, the loss curves (OUT/figures/*.png), the prompt
grids and the task evaluation of the stages before it."""

from __future__ import annotations

import json

from lvm.demo.config import STAGES, fmt_s, shipped_model
from lvm.generate.sampling import DEFAULTS
from lvm.train.plots import plot_log, plot_runs


def write_report(demo) -> dict:
    """Write `demo.out`/report.md from what the other stages of the `Demo` left in its folders."""
    from lvm_base.files import atomic_write_text

    out = demo.out
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    tok_log = demo.work / "tokenizer-run" / "train_log.jsonl"
    lm_log = demo.work / "lvm-run" / "metrics.jsonl"
    plots = []
    if tok_log.is_file():
        plots.append(("tokenizer training loss", plot_log(tok_log, ["loss", "rec", "q"], figs / "tokenizer_loss.png",
                                                         "VQGAN tokenizer")))
    if lm_log.is_file():
        plots.append(("transformer training loss", plot_log(lm_log, ["loss", "eval/loss"],
                                                           figs / "transformer_loss.png", "tiny LLaMA")))
    shipped = shipped_model(demo.cfg)
    if lm_log.is_file() and shipped and (shipped / "train_log.jsonl").is_file():
        plots.append((f"held-out next-image perplexity against training tokens: this demo's run and {shipped.name}",
                      plot_runs({"this demo": lm_log, shipped.name: shipped / "train_log.jsonl"},
                                "eval/next_image_ppl", figs / "scaling.png", "one recipe, minutes vs hours",
                                "held-out next-image perplexity")))
    stages = {}
    for st in STAGES[:-1]:
        m = demo.marker(st)
        if m.is_file():
            stages[st] = json.loads(m.read_text())
    total = sum(r["seconds"] for r in stages.values())
    c = demo.cfg
    md = ["# lvm demo report\n",
          f"Everything below was produced by `lvm demo` on this machine: built-in renderer data "
          f"({c.sequences} sequences at {c.image_size} px, training objects only), "
          + (f"the shipped tokenizer `{c.tokenizer_checkpoint}` (its README says how it was trained), "
             if c.tokenizer_checkpoint else f"a tokenizer trained from `{c.tokenizer}`, ")
          + f"the transformer config `{c.train}`, then prompts and the task suite on "
          f"held-out objects, computed on {c.device} in {c.precision}. Resolved config: "
          f"`demo_config.yaml`.\n",
          f"Checkpoints: `{demo.model_dir.relative_to(out)}/` (HF Llama, its config.json records the tokenizer) "
          f"and `{demo.tok_dir.relative_to(out)}/` (tokenizer); `lvm prompt --model "
          f"{demo.model_dir}` prompts it.\n",
          _which_model_did_what(shipped),
          "## Stages\n", "| stage | wall time | estimate | notes |", "|---|---|---|---|"]
    for st, r in stages.items():
        info = r.get("info", {})
        note = ", ".join(f"{k} {v}" for k, v in info.items() if k in ("sequences", "images", "steps", "final_loss"))
        if "plan" in info:
            pl = info["plan"]
            pace = f"{pl['seconds_per_step']} s/step" if pl.get("seconds_per_step") else "pace not measured"
            note += f" (planned {pl['steps']} of max {pl['max_steps']}: {pace} for a {pl['minutes']:.1f}-min budget)"
        md.append(f"| {st} | {fmt_s(r['seconds'])} | ~{fmt_s(r.get('estimate_seconds', 0))} | {note} |")
    md.append(f"| **total** | **{fmt_s(total)}** | | budget {c.budget_minutes:g} min: "
              f"{'within' if total <= c.budget_minutes * 60 else 'OVER'} |\n")
    if plots:
        md.append("## Training\n")
        md += [f"![{t}]({p.relative_to(out)})\n" for t, p in plots]
    prompts = out / "prompts"
    if prompts.is_dir():
        md.append("## Prompts on held-out objects\n")
        md.append("Rows: the prompt (with the truth under the new-image columns), then the model's answers: "
                  f"greedy, then sampled candidates at temperature {DEFAULTS.temperature:g}, top-k {DEFAULTS.top_k}.\n")
        for p in sorted(prompts.glob("*.png")):
            md.append(f"### {p.stem}\n\n![{p.stem}]({p.relative_to(out)})\n")
    ev = out / "eval" / "tasks.md"
    if ev.is_file():
        text = ev.read_text().replace("](tasks.png)", "](eval/tasks.png)").replace("](ppl.png)", "](eval/ppl.png)")
        md.append("## Task evaluation (held-out objects)\n")
        md.append(text.split("\n", 1)[1])
        grids = sorted((out / "eval" / "grids").glob("*.png"))
        if grids:
            md.append("Prompt | prediction | truth for the first episodes of each task:\n")
            md += [f"![{g.stem}]({g.relative_to(out)})\n" for g in grids]
    atomic_write_text(out / "report.md", "\n".join(md) + "\n")
    return {"total_seconds": round(total, 1)}


def _which_model_did_what(shipped) -> str:
    """The paragraph that says which model is which, so nobody takes one's answers for the other's."""
    if not shipped:
        return "One model: the one this demo trained here, in minutes.\n"
    return (f"Two models answer the same held-out prompts: **demo**, trained by this run in minutes on this "
            f"machine, and **{shipped.name}**, the same recipe trained by the project's own commands for hours "
            f"and shipped in `{shipped}` (its README: commands, hardware, log). The task table has a column "
            f"for each; the prompt grids show the demo model's rows first; the scaling plot puts the held-out "
            f"perplexity of both runs against the tokens each trained on.\n")

