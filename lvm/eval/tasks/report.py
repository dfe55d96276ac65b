"""The suite's report: tasks.md (table + quality checks), tasks.json, tasks.png (bars), ppl.png (perplexity
curves) and grids/<model>-<task>.png (prompt | prediction | truth)."""

from __future__ import annotations

import json
from pathlib import Path

from lvm.eval.tasks.checks import best_baseline, quality_checks, verdicts
from lvm.eval.tasks.config import BASELINES, SuiteConfig


def _fmt(v):
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"


def markdown_table(named: list[tuple[str, dict]]) -> str:
    """One row per task; per model: target perplexity and the main metric; then baselines and the ceiling."""
    first = named[0][1]
    head = ["task", "metric", "decoding"]
    for name, _ in named:
        head += [f"{name} ppl", f"{name} ppl pooled", f"{name}"]
    head += ["copy last", "copy last answer", "mean image",
             "tokenizer recon" + (f" ({named[0][0]})" if len(named) > 1 else "")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for task in first:
        metric, higher = first[task]["metric"], first[task]["higher_is_better"]
        row = [task, f"{metric} ({'higher' if higher else 'lower'} better)", first[task].get("decoding", "greedy")]
        for _, res in named:
            r = res.get(task)
            row += [_fmt(r["ppl"]) if r else "-", _fmt(r.get("ppl_pooled")) if r else "-",
                    _fmt(r["model"][metric]) if r else "-"]
        bl = first[task]["baselines"]
        row += [_fmt(bl[b][metric]) if b in bl else "-" for b in BASELINES]
        row.append(_fmt(first[task]["tokenizer_recon"][metric]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def does_summary(name: str, res: dict) -> str:
    """Plain lines: which tasks the model does (beats every trivial baseline on the main metric) and which
    it does not, with the figures, and whether its target perplexity falls with more context."""
    v = verdicts(res)
    lines = [f"**{name} does {sum(v.values())} of {len(v)} tasks** (beats every trivial baseline on the "
             f"task's main metric):\n"]
    for task, ok in v.items():
        r = res[task]
        metric, b = r["metric"], best_baseline(r)
        c = r["ppl_curve"]
        falls = c["ppl"][-1] < c["ppl"][0]
        lines.append(f"- {task}: {'**does it**' if ok else 'does **not** do it'}: {metric} "
                     f"{_fmt(r['model'][metric])} vs {b[0].replace('_', ' ')} {_fmt(b[1])}"
                     + (f" (the tokenizer's own reconstruction: {_fmt(r['tokenizer_recon'][metric])})"
                        if r.get("tokenizer_recon") else "")
                     + f"; target perplexity {_fmt(c['ppl'][0])} -> {_fmt(c['ppl'][-1])} from {c['x'][0]} to "
                       f"{c['x'][-1]} {c['axis']} ({'falls' if falls else 'does not fall'})")
    return "\n".join(lines) + "\n"


def _task_panels(named, path, height: float, draw):
    """One panel per task side by side, each drawn by `draw(ax, task)`, saved as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(named[0][1])
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.0 * len(tasks), height), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        draw(ax, task)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_bars(named, path):
    """Per task: each model's main metric, then the baselines' and the tokenizer reconstruction's."""
    def draw(ax, task):
        r0 = named[0][1][task]
        metric, higher = r0["metric"], r0["higher_is_better"]
        labels, vals, colors = [], [], []
        for i, (name, res) in enumerate(named):
            labels.append(name)
            vals.append(res[task]["model"][metric])
            colors.append(f"C{i}")
        for b, m in r0["baselines"].items():
            labels.append(b.replace("_", " "))
            vals.append(m[metric])
            colors.append("0.6")
        labels.append("tok. recon")
        vals.append(r0["tokenizer_recon"][metric])
        colors.append("0.85")
        ax.bar(range(len(vals)), vals, color=colors)
        ax.set_xticks(range(len(vals)), labels, rotation=60, ha="right", fontsize=7)
        ax.set_title(f"{task}\n{metric} ({'higher' if higher else 'lower'} better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)

    _task_panels(named, path, 3.4, draw)


def _plot_ppl(named, path):
    """Per task: each model's target perplexity against context frames or shots."""
    def draw(ax, task):
        for i, (name, res) in enumerate(named):
            c = res[task]["ppl_curve"]
            ax.plot(c["x"], c["ppl"], "o-", color=f"C{i}", label=name)
        ax.set_xlabel(named[0][1][task]["ppl_curve"]["axis"], fontsize=8)
        ax.set_title(f"{task}: target perplexity", fontsize=8)
        ax.tick_params(labelsize=7)
        if len(named) > 1:
            ax.legend(fontsize=7)

    _task_panels(named, path, 3.0, draw)


def save_grid(grid, path, title: str = ""):
    """Rows of (prompt images, prediction, truth) -> one PNG: prompt | prediction | truth."""
    from lvm_base.image_io import make_grid, save_png

    width = max(len(p) for p, _, _ in grid)
    rows = [list(p) + [None] * (width - len(p)) + [pred, truth] for p, pred, truth in grid]
    cols = [f"prompt {i + 1}" for i in range(width)] + ["prediction", "truth"]
    return save_png(make_grid(rows, labels=[f"{title} {i}".strip() for i in range(len(rows))], col_labels=cols), path)


def write_report(named: list[tuple[str, dict]], out, cfg: SuiteConfig, meta: dict | None = None) -> dict:
    """tasks.md, tasks.json, tasks.png (bars), ppl.png (curves), grids/<model>-<task>.png into `out`."""
    from lvm_base.files import atomic_write_text

    out = Path(out)
    (out / "grids").mkdir(parents=True, exist_ok=True)
    files = {"table": "tasks.md", "json": "tasks.json", "bars": "tasks.png", "ppl": "ppl.png", "grids": []}
    for name, res in named:
        for task, r in res.items():
            if r.get("_grid"):
                p = out / "grids" / f"{name}-{task}.png"
                save_grid(r["_grid"], p, task)
                files["grids"].append(str(p.relative_to(out)))
    clean = [(n, {t: {k: v for k, v in r.items() if k != "_grid"} for t, r in res.items()}) for n, res in named]
    table = markdown_table(clean)
    checks = {n: [{"check": c, "passed": bool(ok), "detail": d} for c, ok, d in quality_checks(res)]
              for n, res in clean}
    ran = {t: r["episodes"] for t, r in clean[0][1].items()}
    eps = (f"{cfg.episodes} held-out episodes per task" if all(n == cfg.episodes for n in ran.values()) else
           f"held-out episodes per task (of {cfg.episodes}; the suite's {cfg.max_minutes:.1f} minutes cut the rest): "
           + ", ".join(f"{t} {n}" for t, n in ran.items()))
    md = [f"# In-context task suite\n",
          f"{eps}; analogies at {cfg.shots[-1]} shots, sequential tasks with "
          f"{cfg.context} context frames; predictions decoded as the `decoding` column says (mean = the pixel "
          f"mean of {cfg.samples} samples, temperature {_temperatures(cfg)}, top-k {cfg.top_k or 'off'}, "
          f"top-p {cfg.top_p:g}; sample = one such sample).\n", table,
          "\n![task metrics](tasks.png)\n\n![target perplexity](ppl.png)\n"]
    if "colorization" in named[0][1] and "lpips" not in (named[0][1]["colorization"]["model"] or {}):
        md.append("Colorization LPIPS: n/a (needs local weights: --lpips-vgg, --lpips-lin).\n")
    for n, res in clean:
        md.append(f"\n## What {n} does\n")
        md.append(does_summary(n, res))
    for n, cs in checks.items():
        md.append(f"\n## Quality checks: {n}\n")
        md += [f"- [{'x' if c['passed'] else ' '}] {c['check']}: {c['detail']}" for c in cs]
    atomic_write_text(out / "tasks.md", "\n".join(md) + "\n")
    data = {"suite": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "meta": meta or {},
            "models": [{"name": n, "tasks": r, "checks": checks[n]} for n, r in clean]}
    atomic_write_text(out / "tasks.json", json.dumps(data, indent=1))
    _plot_bars(clean, out / "tasks.png")
    _plot_ppl(clean, out / "ppl.png")
    return {"table": table, "checks": checks, "files": files, "results": clean}


def _temperatures(cfg) -> str:
    """"1" or "1 (inpainting 0.7)": the sampling temperature and the tasks that differ from it."""
    own = {t: cfg.temperature_of(t) for t in cfg.tasks if cfg.temperature_of(t) != cfg.temperature}
    return f"{cfg.temperature:g}" + (f" ({', '.join(f'{t} {v:g}' for t, v in own.items())})" if own else "")
