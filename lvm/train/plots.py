"""PNG curves of `lvm train` logs (metrics.jsonl): a run's losses, and one metric of several runs against
the tokens they trained on (the scaling picture of the demo report and the model card)."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path) -> list[dict]:
    """The records of a JSONL log; unreadable lines are skipped (a killed run may leave half a line)."""
    recs = []
    for ln in Path(path).read_text().splitlines():
        try:
            rec = json.loads(ln)
        except ValueError:
            continue
        if isinstance(rec, dict):
            recs.append(rec)
    return recs


def series(recs: list[dict], key: str, x: str = "step") -> tuple[list, list]:
    """(xs, ys) of the records that carry both `x` and a number under `key`; a resumed run's repeated
    steps keep their last value."""
    pts = {}
    for r in recs:
        if isinstance(r.get(key), (int, float)) and isinstance(r.get(x), (int, float)):
            pts[r[x]] = r[key]
    xs = sorted(pts)
    return xs, [pts[v] for v in xs]


def _save(fig, plt, ax, out: Path, xlabel: str, ylabel: str, title: str) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return Path(out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_log(path: Path, keys: list[str], out: Path, title: str, x: str = "step") -> Path:
    """A PNG of the `keys` of a JSONL training log against `x` (step or tokens_seen)."""
    plt = _pyplot()
    recs = read_log(path)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for k in keys:
        xs, ys = series(recs, k, x)
        if xs:
            ax.plot(xs, ys, "o-" if len(xs) < 20 else "-", label=k, markersize=3)
    return _save(fig, plt, ax, out, x.replace("_", " "), "loss", title)


def plot_runs(logs: dict, key: str, out: Path, title: str, ylabel: str, x: str = "tokens_seen") -> Path:
    """A PNG of metric `key` of several runs ({label: metrics.jsonl}) against `x`, log-scaled axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, path in logs.items():
        xs, ys = series(read_log(path), key, x)
        if xs:
            ax.plot(xs, ys, "o-", label=label, markersize=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    return _save(fig, plt, ax, out, x.replace("_", " "), ylabel, title)
