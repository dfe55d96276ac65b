"""The suite's quality bars for one model's results: does it beat the trivial baselines, can its tokenizer
reach the bar at all, and does its perplexity fall as it is shown more?"""

from __future__ import annotations

from lvm.eval.tasks.config import ANALOGY, SEQUENTIAL

# A curve that only drifts in its third digit (4.499 -> 4.497) is no sign of using the context; a model
# that uses it cuts the target perplexity by far more than this.
PPL_FALL = 0.02
MIOU_BAR = 0.75


def best_baseline(res: dict):
    """(name, value) of the best trivial baseline on the task's main metric."""
    metric, higher = res["metric"], res["higher_is_better"]
    vals = [(b, m[metric]) for b, m in res["baselines"].items() if m]
    if not vals:
        return None
    return (max if higher else min)(vals, key=lambda kv: kv[1])


def _beats(a, b, higher: bool) -> bool:
    return a > b if higher else a < b


def _bars(task: str, res: dict, miou_bar: float) -> list:
    """The bars `task` must clear: [(check, what it needs, passes(value), detail(value))]."""
    metric, higher = res["metric"], res["higher_is_better"]
    if task == "segmentation":
        b = best_baseline(res)
        return [(f"segmentation mIoU >= {miou_bar}", f">= {miou_bar}", lambda x: x >= miou_bar,
                 lambda x: f"{x:.3f}"),
                ("segmentation beats every baseline", "the best baseline", lambda x: _beats(x, b[1], higher),
                 lambda x: f"{x:.3f} vs best baseline {b[0]} {b[1]:.3f}")]
    if task in ANALOGY:
        b = best_baseline(res)
        return [(f"{task} beats the best baseline", "the best baseline", lambda x: _beats(x, b[1], higher),
                 lambda x: f"{metric} {x:.3f} vs {b[0]} {b[1]:.3f}")]
    m = res["baselines"]["mean_image"][metric]
    return [(f"{task} beats the mean image", "the mean image", lambda x: _beats(x, m, higher),
             lambda x: f"{metric} {x:.2f} vs {m:.2f}")]


def quality_checks(result: dict, miou_bar: float = MIOU_BAR) -> list[tuple[str, bool, str]]:
    """The suite's quality bars for one model's results ({task: result}): [(check, passed, detail)]."""
    out = []
    for task, res in result.items():
        metric, higher = res["metric"], res["higher_is_better"]
        v = res["model"][metric]
        bars = _bars(task, res, miou_bar)
        out += [(check, passes(v), detail(v)) for check, _, passes, detail in bars]
        if task in SEQUENTIAL:
            c = res["baselines"]["copy_last"][metric]
            out.append((f"{task} beats copy-last (stretch)", _beats(v, c, higher), f"{metric} {v:.2f} vs {c:.2f}"))
        rec = (res.get("tokenizer_recon") or {}).get(metric)
        if rec is not None:
            # Whatever the model predicts is decoded by the tokenizer, so a bar its own reconstruction of
            # the truth misses is out of reach for every model paired with it: say so next to the bars.
            need = " and ".join(n for _, n, _, _ in bars)
            out.append((f"{task}: the tokenizer's reconstruction of the truth can reach the bar ({need})",
                        all(passes(rec) for _, _, passes, _ in bars), f"{metric} {rec:.3f}"))
        curve = res["ppl_curve"]["ppl"]
        if len(curve) >= 2:
            out.append((f"{task} perplexity falls as {res['ppl_curve']['axis']} grow (by >= {PPL_FALL:.0%})",
                        curve[-1] <= curve[0] * (1 - PPL_FALL), " -> ".join(f"{p:.2f}" for p in curve)))
    return out
