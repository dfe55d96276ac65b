"""The suite's quality bars for one model's results: does it beat every trivial baseline (the verdict of
"does the model do this task"), can its tokenizer reach that bar at all, and does its perplexity fall as it
is shown more?"""

from __future__ import annotations

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


def does_task(res: dict, value: float | None = None) -> bool:
    """Whether `value` (default: the model's main metric) beats every trivial baseline of the task."""
    v = res["model"][res["metric"]] if value is None else value
    b = best_baseline(res)
    return b is None or _beats(v, b[1], res["higher_is_better"])


def verdicts(result: dict) -> dict[str, bool]:
    """{task: does the model do it}, the model beating every trivial baseline on the task's main metric."""
    return {task: does_task(res) for task, res in result.items()}


def quality_checks(result: dict, miou_bar: float = MIOU_BAR) -> list[tuple[str, bool, str]]:
    """The suite's quality bars for one model's results ({task: result}): [(check, passed, detail)]."""
    out = []
    for task, res in result.items():
        metric = res["metric"]
        v = res["model"][metric]
        b = best_baseline(res)
        if b is not None:
            out.append((f"{task} beats every baseline", does_task(res),
                        f"{metric} {v:.3f} vs best baseline {b[0]} {b[1]:.3f}"))
        if task == "segmentation" and "miou" in res["model"]:
            m = res["model"]["miou"]
            out.append((f"segmentation mIoU >= {miou_bar}", m >= miou_bar, f"{m:.3f}"))
        rec = (res.get("tokenizer_recon") or {}).get(metric)
        if rec is not None and b is not None:
            # Whatever the model predicts is decoded by the tokenizer, so a bar its own reconstruction of
            # the truth misses is out of reach for every model paired with it: say so next to the bars.
            out.append((f"{task}: the tokenizer's reconstruction of the truth beats every baseline (the bar "
                        f"is reachable)", does_task(res, rec), f"{metric} {rec:.3f}"))
        curve = res["ppl_curve"]["ppl"]
        if len(curve) >= 2:
            out.append((f"{task} perplexity falls as {res['ppl_curve']['axis']} grow (by >= {PPL_FALL:.0%})",
                        curve[-1] <= curve[0] * (1 - PPL_FALL), " -> ".join(f"{p:.2f}" for p in curve)))
    return out
